"""``scoresde demo`` and the rate-distortion curve.

* ``rate_distortion`` against closed forms: for Gaussian data N(mu, s^2 I) and the exact score,
  the distortion is the posterior standard deviation ``s sigma / sqrt(alpha^2 s^2 + sigma^2)``
  and the expected rate ``KL_prior + D/2 log((1 + s^2 SNR(t)) / (1 + s^2 SNR(T)))``; at
  ``t_min`` the rate equals the prior and denoising terms of ``sd.elbo`` (same noise).
* the demo: a smoke run end to end through the CLI (report with the run's numbers, a checkpoint
  that loads, the figures; marked slow, run by CI's end-to-end phase); Ctrl-C during training
  and during a later stage leaves a loadable checkpoint and a partial report; a failing stage
  leaves a report saying so.
"""

from __future__ import annotations

import math
import re
import signal
from pathlib import Path

import pytest
import torch

import scoresde as sd
from scoresde import cli
from scoresde.demo import (
    DEFAULT_STAGES,
    DemoContext,
    DemoOptions,
    Section,
    Stage,
    rate_distortion,
    run_demo,
)
from scoresde.training import Trainer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- rate-distortion
def _gaussian_oracle(mu: list[float], s: float, sde: sd.SDE):
    gmm = sd.GaussianMixture(torch.tensor([1.0]), torch.tensor([mu]), torch.tensor([s * s]))
    return gmm, gmm.score_model(sde)


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.VESDE(sigma_min=0.01, sigma_max=20.0)])
def test_rate_distortion_matches_gaussian_closed_form(sde):
    mu, s, n = [0.5, -1.0], 0.7, 4000
    gmm, oracle = _gaussian_oracle(mu, s, sde)
    x = gmm.sample(n, generator=torch.Generator().manual_seed(1))
    rd = rate_distortion(oracle, x, n_points=65, generator=torch.Generator().manual_seed(2))
    d = 2
    assert rd.dim == d and rd.n == n and rd.t.shape == (65,)
    assert float(rd.t[0]) == sde.T and float(rd.t[-1]) == sde.t_min
    assert bool((rd.log_snr[1:] > rd.log_snr[:-1]).all())
    alpha, sigma = sde.alpha(rd.t).double(), sde.sigma(rd.t).double()
    # distortion^2 = E||x - E[x | z_t]||^2 / D = s^2 sigma^2 / (alpha^2 s^2 + sigma^2); the mean of
    # n D squared Gaussians has relative standard deviation sqrt(2 / (n D))
    want = s * s * sigma**2 / (alpha**2 * s * s + sigma**2)
    rel = (rd.distortion**2 / want - 1).abs()
    assert float(rel.max()) < 5 * math.sqrt(2 / (n * d)), rel
    # expected rate: prior KL + D/2 log((1 + s^2 SNR(t)) / (1 + s^2 SNR(T)))
    snr = torch.exp(rd.log_snr)
    a_t, s_t, s_p = float(alpha[0]), float(sigma[0]), sde.prior_std
    second_moment = sum(m * m for m in mu) + d * s * s
    prior = 0.5 * (
        (a_t**2 * second_moment + d * s_t**2) / s_p**2 - d - d * math.log(s_t**2 / s_p**2)
    )
    rate = prior + 0.5 * d * torch.log((1 + s * s * snr) / (1 + s * s * snr[0]))
    rate_bpd = rate / (d * math.log(2))
    tol = 5 * rd.rate_stderr + 2e-3 * rate_bpd + 1e-6  # Monte Carlo + trapezoidal rule
    assert bool(((rd.rate - rate_bpd).abs() <= tol).all()), (rd.rate - rate_bpd).abs().max()
    assert rd.prior == pytest.approx(float(rate_bpd[0]), rel=0.05, abs=1e-6)
    # the rate accumulates: non-decreasing in t_min's direction
    assert bool((rd.rate[1:] >= rd.rate[:-1]).all())


def test_rate_at_t_min_is_the_elbo_prior_plus_denoising_terms():
    """Same seed, same eps: the curve's end equals sd.elbo's quadrature estimate per point."""
    sde = sd.VPSDE()
    gmm = sd.GaussianMixture(
        torch.tensor([0.3, 0.7]),
        torch.tensor([[-1.0, 0.5, 0.0], [1.0, 0.0, -0.5]]),
        torch.tensor([0.05, 0.2]),
    )
    oracle = gmm.score_model(sde)
    x = gmm.sample(64, generator=torch.Generator().manual_seed(0))
    rd = rate_distortion(oracle, x[:1], n_points=400, generator=torch.Generator().manual_seed(5))
    bound = sd.elbo(
        oracle,
        x[:1],
        n_samples=64,
        t_sampling="quadrature",
        generator=torch.Generator().manual_seed(5),
    )
    nats = float(bound.prior[0] + bound.denoising[0])
    assert float(rd.rate[-1]) * 3 * math.log(2) == pytest.approx(nats, rel=2e-3)


def test_rate_distortion_rejects_bad_input():
    sde = sd.VPSDE()
    _, oracle = _gaussian_oracle([0.0], 1.0, sde)
    x = torch.zeros(4, 1)
    with pytest.raises(ValueError, match="n_points"):
        rate_distortion(oracle, x, n_points=1)
    with pytest.raises(ValueError, match="batch_size"):
        rate_distortion(oracle, x, batch_size=0)
    with pytest.raises(TypeError, match="x0"):

        class NoX0:
            def __init__(self) -> None:
                self.sde = sde

            def score(self, x, t):
                return -x

        rate_distortion(NoX0(), x)


# --------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dataset": "mnist"}, "dataset"),
        ({"minutes": 0.0}, "minutes"),
        ({"minutes": math.inf}, "minutes"),
        ({"steps": 0}, "steps"),
        ({"threads": -1}, "threads"),
        ({"device": "tpu"}, "device"),
        ({"seed": -3}, "seed"),
    ],
)
def test_demo_options_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DemoOptions(**kwargs)


def test_cli_demo_rejects_bad_arguments(capsys):
    assert cli.main(["demo", "--minutes", "0"]) == cli.EXIT_ERROR
    assert "--minutes must be > 0" in capsys.readouterr().err


# --------------------------------------------------------------------------- the demo
def _report(run_dir: Path) -> str:
    return (run_dir / "report.md").read_text()


@pytest.mark.slow  # about 6 s (matplotlib figures); CI runs it in its end-to-end phase
def test_demo_smoke_end_to_end_through_the_cli(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--smoke", "--moons", "--out", str(out), "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"report:     {out / 'report.md'}" in printed
    report = _report(out)
    assert "**Status: complete**" in report
    for title in ("Training", "Samples", "Test bits/dim", "Rate-distortion", "Choosing a solver"):
        assert re.search(rf"^## \d\. {title}", report, re.M), title
    # the report's numbers are the run's: the printed bits/dim appear in its table
    m = re.search(r"test bits/dim: PF-ODE (\S+), ELBO (\S+)", printed)
    assert m is not None
    assert f"**{m.group(1)}" in report and m.group(2) in report
    for method in ("euler", "heun", "dpmpp_2m", "euler_maruyama"):
        assert f"`{method}`" in report
    # every linked figure exists and is a PNG
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert {"loss.png", "samples.png", "rate_distortion.png", "solvers/error_vs_nfe.png"} <= set(
        links
    )
    # the solver comparison: its report re-reads, its recommendation is the Pareto-optimal
    # entry, and the tuned grid file drives `scoresde sample --grid`
    rep = sd.SolverReport.from_json(out / "solvers" / "report.json")
    rec = rep.recommendation(4)
    assert rec.value == min(getattr(r, rep.metric) for r in rep.pareto_front() if r.nfe <= 4)
    assert f"| 4 | `{rec.method}` |" in report
    grid_file = out / "solvers" / f"grid_{rec.method}_nfe4.json"
    assert cli.main(["sample", str(out), "--method", rec.method, "--nfe", "4", "--n", "5",
                     "--grid", str(grid_file), "--out", str(tmp_path / "g.npz")]) == 0  # fmt: skip
    for link in links:
        assert (out / link).read_bytes()[:8] == PNG_MAGIC
    assert len(list((out / "samples").glob("*_nfe*.png"))) == 8
    # the checkpoint is the trained model
    loaded = sd.load_model(out)
    assert loaded.step == 20
    x = sd.sample(loaded.model, "dpmpp_2m", nfe=4, shape=(3, 2)).x
    assert x.shape == (3, 2) and bool(torch.isfinite(x).all())


def test_ctrl_c_during_training_leaves_a_checkpoint_and_a_partial_report(tmp_path, monkeypatch):
    real_step = Trainer.train_step

    def step(self):  # the user presses Ctrl-C during step 8: it finishes, then stops
        if self.step == 7:
            signal.raise_signal(signal.SIGINT)
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", step)
    lines: list[str] = []
    res = run_demo(
        DemoOptions(dataset="two_moons", smoke=True, out=tmp_path / "run", progress=False),
        say=lines.append,
    )
    assert res.interrupted_stage == "train" and not res.completed
    assert res.checkpoint is not None and res.checkpoint.name.endswith("8")
    loaded = sd.load_model(res.run_dir)
    assert loaded.step == 8  # the step in progress was finished, then checkpointed
    report = _report(res.run_dir)
    assert "INTERRUPTED during stage train" in report
    assert "## 1. Interrupted" in report and "scoresde train" in report
    assert res.bpd_ode is None
    assert any("interrupted" in line for line in lines)


def test_ctrl_c_in_a_later_stage_keeps_the_sections_done(tmp_path):
    def callback(stage: str, event: str) -> None:
        if (stage, event) == ("samples", "start"):
            raise KeyboardInterrupt

    res = run_demo(
        DemoOptions(dataset="two_moons", smoke=True, out=tmp_path / "run", progress=False),
        say=lambda line: None,
        callback=callback,
    )
    assert res.interrupted_stage == "samples"
    assert [s.title for s in res.sections] == ["Training", "Interrupted"]
    report = _report(res.run_dir)
    assert "## 1. Training" in report and "## 2. Interrupted" in report
    assert sd.load_model(res.run_dir).step == 20
    assert (res.run_dir / "loss.png").read_bytes()[:8] == PNG_MAGIC


def test_a_failing_stage_leaves_a_report_and_propagates(tmp_path):
    def good(ctx: DemoContext) -> Section:
        return Section("First", "value 1.25")

    def bad(ctx: DemoContext) -> Section:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_demo(
            DemoOptions(out=tmp_path / "run"),
            stages=[Stage("first", good), Stage("second", bad)],
            say=lambda line: None,
        )
    report = _report(tmp_path / "run")
    assert "FAILED in stage second" in report and "## 1. First\n\nvalue 1.25" in report


def test_custom_stages_and_the_default_list(tmp_path):
    assert [s.name for s in DEFAULT_STAGES] == [
        "train",
        "samples",
        "likelihood",
        "rate-distortion",
        "solvers",
    ]
    seen = []

    def stage(ctx: DemoContext) -> Section:
        seen.append(ctx.run_dir)
        return Section("Only", "body")

    res = run_demo(
        DemoOptions(out=tmp_path / "r"), stages=[Stage("only", stage)], say=lambda s: None
    )
    assert res.completed and seen == [tmp_path / "r"] and res.checkpoint is None
    assert "## 1. Only\n\nbody" in _report(tmp_path / "r")
    with pytest.raises(TypeError, match="stages"):
        run_demo(DemoOptions(out=tmp_path / "r2"), stages=[], say=lambda s: None)
