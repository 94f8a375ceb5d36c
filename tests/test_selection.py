"""Choosing a solver (``scoresde.selection``): the Pareto front and the recommendation as math,
the comparison on an exact oracle, time-grid tuning and its guarantees, the report files, and
bad input."""

from __future__ import annotations

import csv
import io
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import scoresde as sd
import solvers
from scoresde.selection import (
    GRID_NAMES,
    _DistanceTarget,
    _EDMVariables,
    _GridParam,
    _reference_solve,
    pareto_front,
    recommend,
    selectable_methods,
)

F64 = torch.float64
METHODS = ("dpmpp_2m", "heun", "euler", "euler_maruyama")


def _run(
    method: str, nfe: int, rmse: float | None, grid: str = "logsnr", **kw: object
) -> sd.SolverRun:
    fields = {
        "kind": "ode",
        "default_grid": False,
        "budget": nfe,
        "median_err": rmse,
        "max_err": rmse,
        "sliced_w2": 0.1,
        "mmd": 0.01,
        "seconds": 0.001,
    }
    fields.update(kw)
    return sd.SolverRun(method=method, grid=grid, nfe=nfe, rmse=rmse, **fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small oracle problems: one intra-op thread avoids oversubscribing a shared CI box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def smooth_model() -> sd.GaussianMixtureOracle:
    """A 2-D mixture with broad modes under a continuous VP SDE: a smooth, cheap ODE."""
    gmm = sd.GaussianMixture(
        torch.tensor([0.4, 0.6], dtype=F64),
        torch.tensor([[-1.0, 0.3], [0.8, -0.5]], dtype=F64),
        torch.tensor([0.15, 0.3], dtype=F64),
    )
    return gmm.score_model(sd.VPSDE(t_min=1e-3))


@pytest.fixture(scope="module")
def report(smooth_model: sd.GaussianMixtureOracle) -> sd.SolverReport:
    data = smooth_model.gmm.sample(128, torch.Generator().manual_seed(3), dtype=F64)
    return sd.compare_solvers(
        smooth_model,
        methods=list(METHODS),
        nfe=(4, 8, 16, 32),
        grids=["default", "logsnr", "karras"],
        n=64,
        data=data,
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )


# =========================================================================== Pareto front


def test_pareto_front_of_a_constructed_report() -> None:
    runs = [
        _run("a", 5, 0.30),
        _run("b", 5, 0.20),  # best at 5
        _run("c", 8, 0.25),  # dominated by b (fewer evaluations, less error)
        _run("d", 9, 0.10),
        _run("e", 10, 0.10),  # ties d's error with more evaluations: dominated
        _run("f", 20, 0.01),
        _run("g", 20, None),  # not measured: never on the front
        _run("h", 3, math.inf),  # non-finite samples: never on the front
    ]
    front = pareto_front(runs)
    assert [r.method for r in front] == ["b", "d", "f"]
    assert recommend(runs, 4) is None  # nothing finite fits 4 evaluations
    assert recommend(runs, 5).method == "b"  # type: ignore[union-attr]
    assert recommend(runs, 9).method == "d"  # type: ignore[union-attr]
    assert recommend(runs, 19).method == "d"  # the 20-NFE run does not fit
    rec = recommend(runs, 50)
    assert rec is not None and (rec.method, rec.nfe, rec.value) == ("f", 20, 0.01)
    assert "f on the logsnr grid uses 20" in rec.reason and "next method, d" in rec.reason


def test_pareto_front_ties_keep_the_faster_run() -> None:
    runs = [_run("slow", 5, 0.1, seconds=2.0), _run("fast", 5, 0.1, seconds=1.0)]
    assert [r.method for r in pareto_front(runs)] == ["fast"]


_runs = st.lists(
    st.tuples(
        st.integers(1, 30),
        st.one_of(st.none(), st.floats(1e-6, 10.0), st.just(math.inf)),
        st.floats(1e-4, 1.0),
    ),
    min_size=1,
    max_size=25,
)


@given(_runs, st.integers(1, 40))
def test_front_and_recommendation_properties(spec: list, budget: int) -> None:
    runs = [_run(f"m{i}", nfe, v, seconds=s) for i, (nfe, v, s) in enumerate(spec)]
    front = pareto_front(runs)
    finite = [r for r in runs if r.rmse is not None and math.isfinite(r.rmse)]
    # the front: increasing NFE, strictly decreasing error
    assert all(a.nfe <= b.nfe and a.rmse > b.rmse for a, b in zip(front, front[1:]))  # type: ignore[operator]
    for r in finite:
        dominated_or_on = any(f.nfe <= r.nfe and f.rmse <= r.rmse for f in front)  # type: ignore[operator]
        assert dominated_or_on
    for f in front:  # nothing strictly better on both axes
        assert not any(r.nfe <= f.nfe and r.rmse < f.rmse for r in finite)  # type: ignore[operator]
    rec = recommend(runs, budget)
    fit = [r for r in finite if r.nfe <= budget]
    if not fit:
        assert rec is None
        return
    assert rec is not None
    assert rec.value == min(r.rmse for r in fit)  # type: ignore[type-var]
    assert any((f.method, f.nfe) == (rec.method, rec.nfe) for f in front)  # Pareto-optimal


# =========================================================================== the comparison


def test_report_covers_every_run_and_recommends_the_front(
    report: sd.SolverReport, smooth_model: sd.GaussianMixtureOracle
) -> None:
    keys = {(r.method, r.grid, r.budget) for r in report.runs}
    sde = smooth_model.sde
    grids = {m: solvers.get_solver(m).grid_for(sde, sde.T, sde.t_min) for m in METHODS}
    for m, default in grids.items():
        for b in (4, 8, 16, 32):
            assert {(m, default, b), (m, "logsnr", b), (m, "karras", b)} <= keys
    assert len(report.runs) == len(keys)  # "default" is one of the named grids, run once
    for r in report.runs:
        assert 0 < r.nfe <= r.budget
        assert r.default_grid == (r.grid == grids[r.method])
        assert r.sliced_w2 is not None and r.mmd is not None and r.seconds is not None
        if r.method == "euler_maruyama":
            assert r.kind == "sde" and r.rmse is None  # no endpoint error for a stochastic run
        else:
            assert r.kind == "ode" and r.rmse is not None and r.median_err is not None
            assert r.median_err <= r.max_err  # type: ignore[operator]
    front = report.pareto_front()
    assert [c.budget for c in report.recommendations] == [4, 8, 16, 32]
    for c in report.recommendations:
        chosen = [r for r in front if (r.method, r.grid, r.nfe) == (c.method, c.grid, c.nfe)]
        assert len(chosen) == 1 and chosen[0].rmse == c.value
        fit = [r.rmse for r in report.runs if r.rmse is not None and r.nfe <= c.budget]
        assert c.value == min(fit)
    assert report.distance_to == "data" and report.n_data == 128
    assert report.reference.sliced_w2 is not None


def test_errors_fall_with_nfe_for_a_second_order_method(report: sd.SolverReport) -> None:
    for method, grid in (("dpmpp_2m", "logsnr"), ("heun", "karras")):
        errs = [report.run(method, grid, b).rmse for b in (4, 8, 16, 32)]
        assert all(a > b for a, b in zip(errs, errs[1:])), (method, errs)
    # second order: doubling the steps from 16 to 32 cuts the error about 4-fold (first
    # order: 2-fold)
    e16, e32 = (report.run("dpmpp_2m", "logsnr", b).rmse for b in (16, 32))
    assert e16 / e32 > 3.0  # type: ignore[operator]


def test_reference_matches_the_exact_flow_map() -> None:
    """For one Gaussian the PF-ODE flow map is closed-form: the EDM-variable reference solve
    reproduces it under the DDPM chain (whose log alpha(t) has 1000 kinks)."""
    gmm = sd.GaussianMixture.gaussian(
        torch.tensor([0.5, -1.0], dtype=F64), torch.tensor([0.2, 0.05])
    )
    for sde in (sd.VPSDE.from_discrete(torch.linspace(1e-4, 0.02, 1000, dtype=F64)),):
        oracle = gmm.score_model(sde)
        x_t = sde.prior_sample((16, 2), torch.Generator().manual_seed(1), dtype=F64)
        solver = solvers.get_solver("dop853", rtol=1e-10, atol=1e-10)
        x, nfe, _ = _reference_solve(oracle, x_t, solver)
        exact = gmm.flow_map(sde, x_t, sde.T, sde.t_min)
        assert torch.allclose(x, exact, atol=1e-8, rtol=0), float((x - exact).abs().max())
        assert nfe < 3000


def test_edm_variables_wrapper_is_the_same_denoiser() -> None:
    model = sd.builtin_oracle("gmm2d").model
    wrapped = _EDMVariables(model)
    sde = model.sde
    t = torch.tensor(0.3, dtype=F64)
    s = torch.exp(-0.5 * sde.log_snr(t))
    y = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    alpha = sde.alpha(t)
    assert torch.allclose(wrapped.x0(y, s), model.x0(alpha * y, t), atol=1e-12)


def test_distances_equal_the_metrics_module() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.randn(150, 3, generator=g, dtype=F64)
    target = _DistanceTarget(y, seed=11)
    for n in (150, 90):  # equal and unequal sample sizes
        x = torch.randn(n, 3, generator=g, dtype=F64) + 0.2
        sw = sd.sliced_wasserstein(
            x, y, n_projections=target.n_projections, generator=torch.Generator().manual_seed(11)
        )
        assert target.sliced_w2(x) == pytest.approx(sw, rel=1e-12)
        assert target.mmd(x) == pytest.approx(sd.mmd(x, y, scale=target.scale), rel=1e-9)


# =========================================================================== report files


def test_report_round_trips_through_json_and_csv(report: sd.SolverReport, tmp_path) -> None:
    text = report.to_json(tmp_path / "r.json")
    assert sd.SolverReport.from_json(text) == report
    assert sd.SolverReport.from_json(tmp_path / "r.json") == report
    assert sd.SolverReport.from_json(str(tmp_path / "r.json")) == report
    rows = list(csv.DictReader(io.StringIO(report.to_csv(tmp_path / "r.csv"))))
    assert (tmp_path / "r.csv").read_text() == report.to_csv()
    assert len(rows) == len(report.runs)
    for row, run in zip(rows, report.runs):
        assert row["method"] == run.method and int(row["nfe"]) == run.nfe
        assert (row["rmse"] == "") == (run.rmse is None)
        if run.rmse is not None:
            assert float(row["rmse"]) == run.rmse
    on_front = {(r["method"], r["grid"], r["budget"]) for r in rows if r["pareto"] == "True"}
    assert on_front == {(r.method, r.grid, str(r.budget)) for r in report.pareto_front()}
    picked = [int(b) for r in rows for b in r["recommended_for"].split(";") if b]
    assert sorted(picked) == [4, 8, 16, 32]


def test_markdown_and_plot(report: sd.SolverReport, tmp_path) -> None:
    md = report.to_markdown()
    for c in report.recommendations:
        assert f"| {c.budget} | `{c.method}` | {c.grid} | {c.nfe} |" in md
    assert "## Pareto front" in md and "## sliced W2" in md
    fig = report.plot(tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax_err, ax_sw = fig.axes[:2]
    labels = {ln.get_label() for ln in ax_err.get_lines()}
    assert {"dpmpp_2m", "heun", "euler", "Pareto front", "recommended"} <= labels
    assert "euler_maruyama" not in labels  # no endpoint error for a stochastic method
    assert "euler_maruyama" in {ln.get_label() for ln in ax_sw.get_lines()}
    front = next(ln for ln in ax_err.get_lines() if ln.get_label() == "Pareto front")
    assert list(front.get_xdata()) == [r.nfe for r in report.pareto_front()]


def test_distances_against_reference_without_data(smooth_model) -> None:
    rep = sd.compare_solvers(
        smooth_model, ["dpmpp_2m"], 50, ["logsnr"], n=32, reference_tol=1e-8, progress=False
    )
    assert rep.distance_to == "reference" and rep.reference.sliced_w2 is None
    run = rep.runs[0]
    assert run.rmse is not None and run.sliced_w2 is not None and run.rmse < 5e-3
    # the coupling x_i <-> x_ref,i bounds the sliced W2: SW2^2 <= E_u mean_i <u, x_i -
    # x_ref,i>^2 = mean_i |x_i - x_ref,i|^2 / D = RMS^2 (up to the finite set of directions)
    assert 0 < run.sliced_w2 <= 1.2 * run.rmse


# =========================================================================== tuning


@given(st.lists(st.floats(-60.0, 60.0), min_size=1, max_size=12), st.sampled_from(["logsnr", "t"]))
def test_grid_parametrisation_is_monotone_for_any_theta(theta: list[float], space: str) -> None:
    sde = sd.VPSDE.from_discrete(torch.linspace(1e-4, 0.02, 1000, dtype=F64))
    start = solvers.make_grid("logsnr", sde, sde.T, sde.t_min, len(theta))
    param = _GridParam(sde, start, space)
    ts = param.grid(torch.tensor(theta, dtype=F64))
    assert float(ts[0]) == sde.T and float(ts[-1]) == sde.t_min
    assert bool((torch.diff(ts) < 0).all())
    assert bool((ts >= sde.t_min).all() and (ts <= sde.T).all())
    assert torch.allclose(param.grid(param.theta0), start, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("method", "nfe", "optimizer", "sde_name"),
    [
        ("dpmpp_2m", 4, "auto", "vp"),
        ("heun", 5, "nelder-mead", "edm"),
        ("dpm_solver_3", 5, "lbfgs", "vp"),
    ],
)
def test_tuned_grid_guarantees(
    smooth_model: sd.GaussianMixtureOracle, method: str, nfe: int, optimizer: str, sde_name: str
) -> None:
    sde = smooth_model.sde if sde_name == "vp" else sd.EDMSDE()
    model = smooth_model.gmm.score_model(sde)
    tg = sd.tune_grid(
        model,
        method,
        nfe,
        n=32,
        n_held_out=32,
        iterations=10,
        optimizer=optimizer,
        reference_tol=1e-5,
        generator=torch.Generator().manual_seed(4),
        progress=False,
    )
    ts = tg.ts
    assert ts.dtype == F64 and float(ts[0]) == sde.T and float(ts[-1]) == sde.t_min
    assert bool((torch.diff(ts) < 0).all()) and bool((ts >= sde.t_min).all())
    _, n_steps = solvers.get_solver(method).for_budget(nfe)
    assert tg.steps == n_steps and tg.start == solvers.get_solver(method).grid_for(
        sde, sde.T, sde.t_min
    )
    start = solvers.make_grid(tg.start, sde, sde.T, sde.t_min, n_steps)
    assert tg.start_grid == tuple(start.tolist())
    # never worse than the start on the calibration batch: recompute both independently
    x_cal = sde.prior_sample((32, 2), torch.Generator().manual_seed(4), dtype=F64)
    ref = _reference_solve(model, x_cal, solvers.get_solver("dop853", rtol=1e-5, atol=1e-5))[0]

    def rms(grid: torch.Tensor) -> float:
        x = sd.sample(model, method, nfe, x_init=x_cal, grid=grid).x
        return float((x - ref).pow(2).mean(1).mean().sqrt())

    start_err, tuned_err = rms(start), rms(ts)
    assert start_err == pytest.approx(tg.calibration_start, rel=1e-9)
    assert tuned_err == pytest.approx(tg.calibration_tuned, rel=1e-9)
    assert tuned_err <= start_err
    assert (
        tg.optimizer in ("lbfgs", "nelder-mead") and 1 <= tg.evaluations <= 10 + 7
    )  # + start, gradient check (5), final check
    if optimizer != "auto":
        assert tg.optimizer == optimizer


def test_tuning_gains_over_its_start_grid(smooth_model: sd.GaussianMixtureOracle) -> None:
    """DPM-Solver++(2M) on the log-SNR grid at 4 evaluations is far from its best grid:
    tuning cuts the calibration error, and the held-out error too."""
    tg = sd.tune_grid(
        smooth_model,
        "dpmpp_2m",
        4,
        start="logsnr",
        n=32,
        n_held_out=64,
        iterations=10,
        reference_tol=1e-7,
        generator=torch.Generator().manual_seed(4),
        progress=False,
    )
    assert tg.start == "logsnr"
    assert tg.optimizer == "lbfgs"  # its gradients through the solver are right
    assert tg.calibration_tuned < 0.5 * tg.calibration_start
    assert tg.held_out_tuned.rmse < 0.5 * tg.held_out_start.rmse
    assert tg.held_out_gain > 2.0


def test_saved_grids_are_reused_by_sample(smooth_model: sd.GaussianMixtureOracle, tmp_path) -> None:
    tg = sd.tune_grid(
        smooth_model,
        "dpm_solver_3",
        5,
        n=16,
        iterations=3,
        reference_tol=1e-5,
        generator=torch.Generator().manual_seed(2),
        progress=False,
    )
    for name in ("g.json", "g.safetensors"):
        path = tg.save(tmp_path / name)
        assert sd.TunedGrid.load(path) == tg
        assert torch.equal(sd.load_grid(path), tg.ts) and sd.load_grid(path).dtype == F64
    x = smooth_model.sde.prior_sample((8, 2), torch.Generator().manual_seed(0), dtype=F64)
    a = sd.sample(smooth_model, "dpm_solver_3", 5, x_init=x, grid=tg.ts)
    b = sd.sample(smooth_model, "dpm_solver_3", 5, x_init=x, grid=str(tmp_path / "g.json"))
    c = sd.sample(smooth_model, "dpm_solver_3", 5, x_init=x, grid=tmp_path / "g.safetensors")
    # the tuned grid (2 steps) runs in the budget's configuration: orders (3, 2), 5 evaluations
    assert a.nfe == b.nfe == c.nfe == 5
    assert torch.equal(a.x, b.x) and torch.equal(a.x, c.x) and torch.equal(a.ts, tg.ts)
    with pytest.raises(ValueError, match="json or .safetensors"):
        tg.save(tmp_path / "g.txt")
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a scoresde.TunedGrid"):
        sd.load_grid(tmp_path / "bad.json")


def test_compare_solvers_with_tuning(smooth_model) -> None:
    rep = sd.compare_solvers(
        smooth_model,
        ["dpmpp_2m", "heun"],
        (4, 6),
        ["logsnr"],
        n=32,
        tune=1,
        tune_n=32,
        tune_iterations=6,
        reference_tol=1e-5,
        progress=False,
    )
    tuned = [r for r in rep.runs if r.grid == "tuned"]
    assert len(rep.tuned) == len(tuned) == 2
    for t, r in zip(rep.tuned, tuned):
        assert (t.method, t.nfe) == (r.method, r.budget)
        assert t.held_out_tuned.rmse == pytest.approx(r.rmse, rel=1e-12)  # the report's noise
        assert t.calibration_tuned <= t.calibration_start
    assert sd.SolverReport.from_json(rep.to_json()) == rep


# =========================================================================== oracles, input


def test_builtin_oracles() -> None:
    for name, dim, k in (("gmm2d", 2, 8), ("gmm64d", 64, 16), ("rings2d", 2, 24)):
        p = sd.builtin_oracle(name)
        assert p.name == f"{name}:vp" and p.gmm.dim == dim and p.gmm.n_components == k
        assert isinstance(p.sde, sd.DiscreteVPSDE)
        x = p.data(5, torch.Generator().manual_seed(0))
        assert x.shape == (5, dim) and x.dtype == F64
    edm = sd.builtin_oracle("gmm2d:edm")
    assert isinstance(edm.sde, sd.EDMSDE) and edm.model.sde is edm.sde
    # the DDPM chain: alphas_cumprod of linear betas 1e-4..0.02 at t = (n + 1) / 1000
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=F64)
    n = torch.arange(1000, dtype=F64)
    alpha2 = sd.builtin_oracle("gmm2d").sde.alpha((n + 1) / 1000).to(F64) ** 2
    assert torch.allclose(alpha2, torch.cumprod(1 - betas, 0), rtol=1e-12)
    with pytest.raises(ValueError, match="gmm2d, gmm64d, rings2d"):
        sd.builtin_oracle("moons")
    with pytest.raises(ValueError, match="vp, edm"):
        sd.builtin_oracle("gmm2d:ve")


def test_bad_input_names_the_valid_choices(smooth_model) -> None:
    kw = {"n": 8, "progress": False}
    with pytest.raises(ValueError, match=r"unknown or unsupported method 'dpm'.*dpmpp_2m"):
        sd.compare_solvers(smooth_model, ["dpm"], **kw)
    with pytest.raises(ValueError, match="adaptive methods choose their own steps"):
        sd.compare_solvers(smooth_model, ["dopri5"], **kw)
    with pytest.raises(ValueError, match=r"unknown grid 'cosine'.*karras"):
        sd.compare_solvers(smooth_model, ["euler"], grids=["cosine"], **kw)
    with pytest.raises(ValueError, match="nfe must contain ints >= 1"):
        sd.compare_solvers(smooth_model, ["euler"], nfe=(0, 5), **kw)
    with pytest.raises(ValueError, match="with stochastic methods alone use metric='sliced_w2'"):
        sd.compare_solvers(smooth_model, "sde", **kw)
    with pytest.raises(ValueError, match="metric must be one of"):
        sd.compare_solvers(smooth_model, ["euler"], metric="fid", **kw)
    with pytest.raises(ValueError, match="reference must be an adaptive ODE method.*dop853"):
        sd.compare_solvers(smooth_model, ["euler"], reference="heun", **kw)
    with pytest.raises(ValueError, match=r"data must have shape \(m, \*shape\)"):
        sd.compare_solvers(smooth_model, ["euler"], data=torch.zeros(10, 3), **kw)
    with pytest.raises(TypeError, match="ScoreModel interface"):
        sd.compare_solvers(object(), ["euler"], **kw)  # type: ignore[arg-type]
    net = sd.MLP(2)
    with pytest.raises(ValueError, match="shape .* is required"):
        sd.compare_solvers(sd.ScoreModel(net, sd.VPSDE()), ["euler"], **kw)
    with pytest.raises(ValueError, match="deterministic fixed-step method.*dpmpp_2m"):
        sd.tune_grid(smooth_model, "euler_maruyama", 5, progress=False)
    with pytest.raises(ValueError, match="objective must be one of"):
        sd.tune_grid(smooth_model, "euler", 5, objective="max", progress=False)
    with pytest.raises(ValueError, match="start must have 6 points"):
        sd.tune_grid(smooth_model, "euler", 5, start=torch.tensor([1.0, 0.5, 1e-5]), progress=False)
    with pytest.raises(ValueError, match="start: unknown grid"):
        sd.tune_grid(smooth_model, "euler", 5, start="cosine", n=4, progress=False)
    assert set(selectable_methods("ode")) | set(selectable_methods("sde")) == set(
        selectable_methods()
    )
    assert "logsnr" in GRID_NAMES and "log_snr_uniform" not in GRID_NAMES
