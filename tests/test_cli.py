"""The ``scoresde`` command line end to end on two moons (train, sample, likelihood), and its
errors: exit status 2 with a one-line message, no traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scoresde.cli import main
from scoresde.config import tomllib

REPO = Path(__file__).resolve().parents[1]
TWO_MOONS = REPO / "configs" / "two_moons.toml"

FAST = [
    "train.steps=300",
    "model.width=64",
    "model.depth=2",
    "data.n_train=4000",
    "data.n_test=200",
    "train.log_every=100",
    "train.ckpt_every=150",
    "optim.warmup_steps=20",
    "optim.ema_decay=0.98",
    "eval.n_samples=300",
    "eval.nfe=10",
    "eval.n_test=20",
    "eval.rtol=1e-3",
    "eval.atol=1e-3",
    "eval.elbo_samples=4",
    "train.progress=false",
    "train.tensorboard=false",
]


pytestmark = pytest.mark.usefixtures("keep_global_rng")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("cli") / "run"
    with torch.random.fork_rng(devices=[]):
        assert main(["train", str(TWO_MOONS), f"train.out_dir={run}", *FAST]) == 0
    return run


def test_train_writes_a_run_folder(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("config.toml", "metrics.csv", "eval.csv", "loss.png"):
        assert (trained / name).is_file(), name
    assert sorted(p.name for p in (trained / "checkpoints").iterdir()) == [
        "step_000000150",
        "step_000000300",
    ]
    assert list((trained / "samples").glob("step_000000300.png"))
    evals = (trained / "eval.csv").read_text().splitlines()
    header, row = evals[0].split(","), evals[1].split(",")
    bpd = float(row[header.index("bpd")])
    assert 0.5 < bpd < 6.0  # two moons in data units: about 1.4 bits/dim when well trained
    assert float(row[header.index("elbo_bpd")]) == pytest.approx(bpd, abs=3.0)


def test_sample_writes_npz_and_png(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "s.npz"
    args = ["sample", str(trained), "--method", "euler", "--nfe", "20", "--n", "200"]
    assert main([*args, "--seed", "5", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "200 samples" in text and str(out) in text
    with np.load(out) as f:
        x = f["x"]
        assert x.shape == (200, 2) and np.isfinite(x).all()
        assert int(f["nfe"]) == 20 and str(f["method"]) == "euler"
    assert out.with_suffix(".png").is_file()
    # the same seed gives the same samples
    assert main([*args, "--seed", "5", "--out", str(tmp_path / "t.npz")]) == 0
    with np.load(tmp_path / "t.npz") as f:
        np.testing.assert_array_equal(f["x"], x)
    # most samples land in the box of two moons, about [-3, 3] x [-1.5, 2]
    inside = (np.abs(x[:, 0]) < 4) & (np.abs(x[:, 1]) < 3)
    assert inside.mean() > 0.8


def test_likelihood_prints_bits_per_dim_with_interval(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["likelihood", str(trained), "--n", "12", "--rtol", "1e-3", "--atol", "1e-3"]
    assert main([*argv, "--elbo"]) == 0
    text = capsys.readouterr().out
    m = re.search(r"bits/dim \(PF-ODE\): ([\d.]+) ± ([\d.]+) \(95% interval\)\s+NFE (\d+)", text)
    assert m, text
    assert 0.5 < float(m.group(1)) < 6.0 and float(m.group(2)) > 0 and int(m.group(3)) > 0
    assert "time" in text and "bits/dim (ELBO, upper bound)" in text


def test_config_errors_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", str(TWO_MOONS), "optim.lrr=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "optim.lrr" in err and "valid keys" in err
    assert main(["train", str(tmp_path / "missing.toml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_checkpoint_errors_exit_2(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sample", str(tmp_path / "nothing")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    broken = tmp_path / "broken" / "checkpoints" / "step_000000001"
    broken.mkdir(parents=True)
    (broken / "weights.safetensors").write_bytes(b"xx")
    assert main(["likelihood", str(broken)]) == 2
    assert "incomplete checkpoint" in capsys.readouterr().err
    assert main(["sample", str(trained), "--method", "no_such_solver", "--n", "2"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no_such_solver" in err
    assert main(["sample", str(trained), "--nfe", "0"]) == 2
    assert "--nfe must be > 0" in capsys.readouterr().err


def test_usage_error_is_status_2() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["sample"])  # missing CKPT: argparse
    assert exc.value.code == 2


@pytest.mark.parametrize("module", ["scoresde.cli", "scoresde"])
def test_entry_point_process_exits_2_without_traceback(tmp_path: Path, module: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("SCORESDE_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", module, "likelihood", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"scoresde likelihood: error: no such checkpoint: {tmp_path / 'none'}"
    ]


def test_console_script_is_declared() -> None:
    with open(REPO / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    assert project["scripts"]["scoresde"] == "scoresde.cli:main"
    deps = " ".join(project["dependencies"])
    assert "safetensors" in deps and "matplotlib" in deps and "tomli" in deps


def test_sample_grid_by_name_file_and_config(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--grid takes a grid name or a saved grid file (sd.tune_grid's format); a saved 5-step
    grid fixes the steps, and the same grid given as a name reproduces the samples."""
    import scoresde as sd
    import solvers

    sde = sd.load_model(trained).model.sde
    ts = solvers.make_grid("karras", sde, sde.T, sde.t_min, 5)
    values = tuple(float(v) for v in ts)
    tuned = sd.selection.TunedGrid(
        method="euler", nfe=5, grid=values, start_grid=values, start="karras", sde=repr(sde),
        t_min=sde.t_min, T=sde.T, space="logsnr", objective="rms", calibration_start=1.0,
        calibration_tuned=1.0, held_out_start=sd.selection.GridScore(1.0, 1.0),
        held_out_tuned=sd.selection.GridScore(1.0, 1.0), n_calibration=1, n_held_out=1,
        optimizer="nelder-mead", evaluations=1, seconds=0.0,
    )  # fmt: skip
    path = tuned.save(tmp_path / "grid.json")
    base = ["sample", str(trained), "--method", "euler", "--nfe", "5", "--n", "50"]
    assert main([*base, "--grid", str(path), "--out", str(tmp_path / "a.npz")]) == 0
    assert main([*base, "--grid", "karras", "--out", str(tmp_path / "b.npz")]) == 0
    assert main([*base, "--grid", "uniform", "--out", str(tmp_path / "c.npz")]) == 0
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        np.testing.assert_allclose(a["x"], b["x"], rtol=0, atol=1e-6)
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "c.npz") as c:
        assert np.abs(a["x"] - c["x"]).max() > 1e-3
    capsys.readouterr()
    assert main([*base, "--grid", "no-such-grid"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--grid" in err and "karras" in err and "\n" not in err
