"""``scoresde bench``: the report files for an oracle and for a checkpoint, tuned grids, and
errors (exit status 2, a one-line message naming the valid choices)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

import scoresde as sd
from scoresde.cli import main

REPO = Path(__file__).resolve().parents[1]
TWO_MOONS = REPO / "configs" / "two_moons.toml"


@pytest.fixture(autouse=True)
def _keep_global_state():
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def oracle_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("bench") / "gmm"
    import contextlib
    import io

    buf = io.StringIO()
    threads = torch.get_num_threads()
    with contextlib.redirect_stdout(buf):
        status = main(
            [
                "bench",
                "oracle:rings2d",
                "--nfe",
                "4,8",
                "--methods",
                "dpmpp_2m,heun,euler_maruyama",
                "--grids",
                "default,karras",
                "--n",
                "48",
                "--tune",
                "1",
                "--tune-n",
                "24",
                "--tune-iterations",
                "4",
                "--reference-tol",
                "1e-7",
                "--out",
                str(out),
            ]
        )
    torch.set_num_threads(threads)
    assert status == 0
    return out, buf.getvalue()


def test_oracle_bench_writes_readable_files(oracle_run: tuple[Path, str]) -> None:
    out, stdout = oracle_run
    for name in ("report.md", "report.csv", "report.json", "error_vs_nfe.png"):
        assert (out / name).is_file(), name
    report = sd.SolverReport.from_json(out / "report.json")
    assert report == sd.SolverReport.from_json((out / "report.json").read_text())
    assert report.sde.startswith("DiscreteVPSDE") and report.distance_to == "data"
    assert report.budgets == (4, 8) and report.n == 48
    methods = {r.method for r in report.runs}
    assert methods == {"dpmpp_2m", "heun", "euler_maruyama"}
    sde = sd.builtin_oracle("rings2d").sde
    defaults = {sd.selection._default_grid(m, sde) for m in methods}
    assert {r.grid for r in report.runs} == defaults | {"karras", "tuned"}
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert [r["method"] for r in rows] == [r.method for r in report.runs]
    assert (out / "report.md").read_text() == report.to_markdown()
    assert (out / "error_vs_nfe.png").read_bytes()[:4] == b"\x89PNG"
    # the printed table is the report's summary, with every recommendation
    assert report.summary() in stdout
    for c in report.recommendations:
        assert f"| {c.budget} | `{c.method}` |" in stdout


def test_oracle_bench_saves_tuned_grids(oracle_run: tuple[Path, str]) -> None:
    out, stdout = oracle_run
    report = sd.SolverReport.from_json(out / "report.json")
    assert len(report.tuned) == 2  # the best method at each of the two budgets
    for tg in report.tuned:
        path = out / "grids" / f"{tg.method}_nfe{tg.nfe}.json"
        assert str(path) in stdout
        assert sd.TunedGrid.load(path) == tg
        ts = sd.load_grid(path)
        problem = sd.builtin_oracle("rings2d")
        assert float(ts[0]) == problem.sde.T and float(ts[-1]) == problem.sde.t_min
        assert bool((torch.diff(ts) < 0).all())
        assert tg.calibration_tuned <= tg.calibration_start
        assert json.loads(path.read_text())["method"] == tg.method


def test_checkpoint_bench(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    train = [
        "train",
        str(TWO_MOONS),
        f"train.out_dir={run}",
        "train.steps=20",
        "model.width=32",
        "model.depth=2",
        "data.n_train=500",
        "data.n_test=64",
        "train.log_every=10",
        "train.ckpt_every=20",
        "eval.at_end=false",
        "train.progress=false",
        "train.tensorboard=false",
    ]
    assert main(train) == 0
    capsys.readouterr()
    out = tmp_path / "bench"
    args = ["bench", str(run), "--nfe", "4", "--methods", "dpmpp_2m", "--grids", "logsnr"]
    assert main([*args, "--n", "16", "--out", str(out), "--device", "cpu"]) == 0
    report = sd.SolverReport.from_json(out / "report.json")
    assert report.dtype == "float32" and report.reference.rtol == 1e-5  # float32 network
    assert report.distance_to == "data" and report.n_data == 64  # the test split
    (r,) = report.runs
    assert (r.method, r.grid, r.nfe) == ("dpmpp_2m", "logsnr", 4) and r.rmse is not None
    assert "dpmpp_2m" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["oracle:gmm2d", "--methods", "dpm"], "unknown or unsupported method 'dpm'"),
        (["oracle:gmm2d", "--methods", "dopri5"], "adaptive methods choose their own steps"),
        (["oracle:gmm2d", "--grids", "cosine"], "unknown grid 'cosine'"),
        (["oracle:gmm2d", "--nfe", "5,x"], "--nfe must be comma-separated integers"),
        (["oracle:gmm2d", "--nfe", "0"], "--nfe must be comma-separated integers >= 1"),
        (["oracle:moons"], "unknown oracle 'moons'; valid: gmm2d, gmm64d, rings2d"),
        (["oracle:gmm2d:ve"], "unknown oracle SDE 've'; valid: vp, edm"),
        (["oracle:gmm2d", "--n", "0"], "--n must be > 0"),
        (["/no/such/run"], "/no/such/run"),
    ],
)
def test_bench_errors(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scoresde bench: error:") and message in err
    assert len(err.strip().splitlines()) == 1
    if "method" in message:
        assert "dpmpp_2m" in err  # the valid names are listed
    if "grid" in message:
        assert "karras" in err
    assert not (tmp_path / "o").exists()  # nothing written on an error
