"""``scoresde sample CKPT --class Y --guidance W``: class-conditional sampling with
classifier-free guidance (Ho & Salimans 2022) from the command line, and its errors (exit
status 2, one line, no traceback)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import scoresde as sd
from scoresde.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
TWO_MOONS = REPO / "configs" / "two_moons.toml"

COMMON = [
    "data.n_train=2000",
    "data.n_test=400",
    "model.width=32",
    "model.depth=2",
    "model.emb_dim=16",
    "optim.lr=3e-3",
    "optim.warmup_steps=20",
    "optim.ema_decay=0.95",
    "train.batch_size=256",
    "train.log_every=100",
    "train.threads=1",
    "train.progress=false",
    "train.tensorboard=false",
    "eval.at_end=false",
]


pytestmark = pytest.mark.usefixtures("keep_global_rng")


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two moons, class-conditional (label = the moon), trained just enough to separate them."""
    run = tmp_path_factory.mktemp("cli_cond") / "run"
    args = ["train", str(TWO_MOONS), f"train.out_dir={run}", *COMMON]
    args += ["model.num_classes=2", "train.steps=150", "train.ckpt_every=150"]
    with torch.random.fork_rng(devices=[]):
        assert main(args) == 0
    return run


@pytest.fixture(scope="module")
def uncond_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("cli_uncond") / "run"
    args = ["train", str(TWO_MOONS), f"train.out_dir={run}", *COMMON, "train.steps=2"]
    with torch.random.fork_rng(devices=[]):
        assert main(args) == 0
    return run


def _moon_of(x: np.ndarray, ds: sd.Dataset, k: int = 15) -> np.ndarray:
    """The label of each point by a k-nearest-neighbour vote among the labelled test points."""
    assert ds.test_labels is not None
    ref, labels = ds.test.numpy(), ds.test_labels.numpy()
    d = ((x[:, None, :] - ref[None, :, :]) ** 2).sum(-1)
    nearest = np.argsort(d, axis=1)[:, :k]
    return (labels[nearest].mean(1) > 0.5).astype(int)


@pytest.mark.parametrize("label", [0, 1])
def test_class_samples_land_on_their_moon(
    cond_run: Path, tmp_path: Path, label: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """Samples of class Y lie on moon Y (chance: 1/2), and more so with guidance."""
    ds = sd.load_model(cond_run).dataset()
    on_moon = {}
    for w in ("0", "2"):
        out = tmp_path / f"w{w}.npz"
        args = ["sample", str(cond_run), "--method", "dpmpp_2m", "--nfe", "20", "--n", "200"]
        assert main([*args, "--class", str(label), "--guidance", w, "--out", str(out)]) == 0
        text = capsys.readouterr().out
        assert f"class {label}, guidance w = {w}" in text
        with np.load(out) as f:
            x = f["x"]
            assert int(f["class"]) == label and float(f["guidance"]) == float(w)
        assert x.shape == (200, 2) and np.isfinite(x).all()
        assert out.with_suffix(".png").is_file()
        on_moon[w] = (_moon_of(x, ds) == label).mean()
    assert on_moon["0"] > 0.7
    assert on_moon["2"] > 0.9
    assert on_moon["2"] >= on_moon["0"]


def test_guidance_default_and_cfg_equivalence(cond_run: Path, tmp_path: Path) -> None:
    """Without --guidance the checkpoint's sample.guidance (0 here) is used, and the CLI draws
    exactly what CFGModel bound to the same class and scale draws."""
    out = tmp_path / "s.npz"
    args = ["sample", str(cond_run), "--method", "euler", "--nfe", "8", "--n", "16"]
    assert main([*args, "--class", "1", "--seed", "3", "--out", str(out)]) == 0
    with np.load(out) as f:
        x, w = f["x"], float(f["guidance"])
    assert w == 0.0
    loaded = sd.load_model(cond_run)
    model = sd.CFGModel(loaded.net, loaded.model.sde, y=1, w=0.0, prediction="eps")
    ref = sd.sample(model, "euler", 8, shape=(16, 2), seeds=list(range(3, 19)))
    np.testing.assert_allclose(x, ref.x.numpy(), atol=1e-5)


def test_default_file_name_records_class_and_scale(
    cond_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["sample", str(cond_run), "--method", "euler", "--nfe", "4", "--n", "4"]
    assert main([*args, "--class", "0", "--guidance", "1.5"]) == 0
    assert [p.name for p in tmp_path.glob("*.npz")] == [
        "samples_step150_euler_nfe4_seed0_class0_w1.5.npz"
    ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--class", "2"], r"--class must lie in \[0, 2\) for this checkpoint, got 2"),
        (["--class", "-1"], r"--class must lie in \[0, 2\) for this checkpoint, got -1"),
        (["--guidance", "1"], r"--guidance needs --class Y"),
        (["--class", "0", "--guidance", "nan"], r"--guidance must be a finite number, got nan"),
        (["--class", "0", "--guidance", "inf"], r"--guidance must be a finite number, got inf"),
    ],
)
def test_bad_class_or_guidance_exits_2_with_one_line(
    cond_run: Path,
    tmp_path: Path,
    extra: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["sample", str(cond_run), "--nfe", "2", "--n", "2", "--out", str(tmp_path / "s")]
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("scoresde sample: error: ")

    assert re.search(message, err), err
    assert not list(tmp_path.iterdir())  # nothing written


def test_class_on_an_unconditional_checkpoint_exits_2(
    uncond_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["sample", str(uncond_run), "--nfe", "2", "--n", "2", "--out", str(tmp_path / "s")]
    assert main([*args, "--class", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "--class 0:" in err and "is an unconditional model" in err
    assert "model.num_classes=N" in err
    # the same checkpoint samples unconditionally
    assert main(args) == 0


def test_parser_documents_class_and_guidance() -> None:
    parser = build_parser()
    args = parser.parse_args(["sample", "ckpt", "--class", "3", "--guidance", "0.5"])
    assert args.class_label == 3 and args.guidance == 0.5
    args = parser.parse_args(["sample", "ckpt"])
    assert args.class_label is None and args.guidance is None
    with pytest.raises(SystemExit):
        parser.parse_args(["sample", "ckpt", "--class", "two"])
