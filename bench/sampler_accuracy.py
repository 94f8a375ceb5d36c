"""Sampler accuracy benchmark: endpoint error and wall time against NFE, ours and peers.

Usage (from the repository root; docs/benchmarks.md has the results and the details)::

    python bench/sampler_accuracy.py            # full run: VP and EDM, 2-D and 64-D (~6-12 min)
    python bench/sampler_accuracy.py --quick    # 2-D only, NFE 5/10/20, 1 repeat (< 1 min)
    python bench/sampler_accuracy.py --check    # reference tolerance, every peer at ~500 NFE
    python bench/sampler_accuracy.py --check --check-slow  # + VP reference solved in t (~10 min)
    python bench/sampler_accuracy.py --rerender bench/results/sampler_accuracy.json

For every deterministic fixed-step (ODE) method of ``sd.solvers_available()`` and every peer
sampler (diffusers schedulers and k-diffusion samplers, wrapped in ``bench/peer_samplers.py``),
on Gaussian-mixture oracles in 2 and 64 dimensions under a VP SDE and the EDM SDE, from the
same initial noise ``x_T``, at budgets NFE in {5, 8, 10, 15, 20, 50}: the endpoint error
against a reference (scipy DOP853 at rtol = atol = 1e-10 on our exact PF-ODE from the same
``x_T``) and the median wall time of a solve.

* VP: the SDE is the discrete DDPM chain diffusers uses (linear betas 1e-4..0.02, N = 1000) as
  a continuous-time SDE, ``sd.VPSDE.from_discrete`` (t in [1/N, 1]), for ours and for the
  peers; ``x_T ~ N(0, I)`` at t = 1.
* EDM: ``sd.EDMSDE()`` (sigma = t in [0.002, 80]); ``x_T ~ N(0, 80^2 I)``.

Errors: per sample ``e_i = |x_i - x_ref,i| / sqrt(D)``; reported as the RMS over samples
(``rmse``) and the median over samples (``median_err``, the typical sample: in 64-D the RMS is
dominated by the 1-3 of 250 samples that end in another mixture component than the reference).

Our methods run with ``sd.sample(oracle, method, nfe, x_init=x_T)`` on their default grids
(the library as a user gets it). Two kinds of extra rows separate the algorithm from its
configuration: ``<method>@<peer>`` is our method configured as the peer, on the grid the peer
visited, with the peer's final-step rule (``PeerSpec.options``) and in its variables (the
``g`` ratios; its ``diff_peer`` is the largest difference to the peer's samples);
``<method>[edm-vars]`` (VP
only) is our method on the same VP PF-ODE written in EDM variables (``x / alpha`` against
``sigma / alpha``: ``solvers.EDMVariables(method)`` on the method's default grid), the
variables diffusers' Euler/Heun and k-diffusion integrate in; on a peer's grid the same ODE is
solved as ``sd.EDMSDE(sigma_min=s(t_min), sigma_max=s(T))`` with the same mixture.

Outputs (``--out``, default ``bench/results``): ``sampler_accuracy.csv`` and ``.json`` (every
number, the comparisons and the target evaluation), ``sampler_accuracy.md`` (tables) and one
log-log plot per setting (``--img``, default ``docs/img``):
``sampler_accuracy_<vp|edm>_<2d|64d>.png``. ``--quick`` writes ``sampler_accuracy_quick.*``
and its plots into ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

# run from a checkout: the repository root (scoresde, solvers) and bench/ (peer_samplers)
_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE.parent), str(_HERE)]

import peer_samplers as peers  # noqa: E402
from bench_env import cpu_name  # noqa: E402

import scoresde as sd  # noqa: E402
import solvers  # noqa: E402

_F64 = torch.float64
FULL_NFES = (5, 8, 10, 15, 20, 50)
QUICK_NFES = (5, 10, 20)
REF_TOL = 1e-10


# =========================================================================== problems


def make_gmm(dim: int, seed: int) -> sd.GaussianMixture:
    """A mixture with sharp, anisotropic modes.

    2-D: 8 components on a circle of radius 1.5, eigenvalues of the covariances log-uniform
    in [0.003, 0.05], random rotations, random weights. 64-D: 16 components with means
    N(0, 0.8^2 I), eigenvalues log-uniform in [0.01, 0.3], random rotations, random weights.
    Coordinates are O(1), the usual data scale of a VP model. The same mixtures are the
    library's built-in oracles ``gmm2d`` / ``gmm64d`` (``sd.builtin_oracle``), built by one
    function.
    """
    from scoresde.selection import _anisotropic_gmm

    return _anisotropic_gmm(dim, seed)


@dataclass
class Setting:
    """One benchmark problem: a mixture, an SDE, the shared initial noise and the reference."""

    name: str  # e.g. "vp_2d"
    kind: str  # "vp" | "edm"
    dim: int
    gmm: sd.GaussianMixture
    sde: Any
    oracle: Any
    x_t: Tensor
    ref: Tensor = field(default_factory=lambda: torch.empty(0))
    ref_info: dict[str, Any] = field(default_factory=dict)

    @property
    def alpha_t(self) -> float:
        return float(self.sde.alpha(torch.tensor(self.sde.T, dtype=_F64)))

    @property
    def alpha_min(self) -> float:
        return float(self.sde.alpha(torch.tensor(self.sde.t_min, dtype=_F64)))

    def edm_vars_oracle(self) -> Any:
        """The same mixture under EDM with sigma in [s(t_min), s(T)], s = sigma / alpha."""
        s_min, s_max = peers.edm_variables(self.sde)
        return self.gmm.score_model(sd.EDMSDE(sigma_min=s_min, sigma_max=s_max))


def make_setting(kind: str, dim: int, n_samples: int, seed: int) -> Setting:
    gmm = make_gmm(dim, seed)
    sde = peers.diffusers_chain_sde() if kind == "vp" else sd.EDMSDE()
    g = torch.Generator().manual_seed(seed + 1)
    x_t = sde.prior_sample((n_samples, dim), g, dtype=_F64)
    return Setting(f"{kind}_{dim}d", kind, dim, gmm, sde, gmm.score_model(sde), x_t)


def reference(setting: Setting, tol: float = REF_TOL) -> tuple[Tensor, int, float]:
    """DOP853 at rtol = atol = tol on our exact PF-ODE from x_T: (x, nfe, seconds).

    EDM: solved in t = sigma. VP: solved in EDM variables (``x / alpha`` against ``sigma /
    alpha``, :meth:`Setting.edm_vars_oracle`), the same ODE written in a smooth time
    variable: in t, ``log alpha(t)`` of the discrete chain is piecewise linear with 1000 kinks
    and DOP853 needs ~178k NFE and is still off by up to 3e-5 at rtol 1e-10 (``--check
    --check-slow``; docs/benchmarks.md).
    """
    t0 = time.perf_counter()
    solver = solvers.get_solver("dop853", rtol=tol, atol=tol)
    if setting.kind == "vp":
        res = sd.sample(setting.edm_vars_oracle(), solver, x_init=setting.x_t / setting.alpha_t)
        x = res.x * setting.alpha_min
    else:
        res = sd.sample(setting.oracle, solver, x_init=setting.x_t)
        x = res.x
    return x, res.nfe, time.perf_counter() - t0


def reference_in_t(setting: Setting, tol: float) -> tuple[Tensor, int]:
    """The VP reference solved directly in t (slow: the chain's kinks); for checks only."""
    solver = solvers.get_solver("dop853", rtol=tol, atol=tol)
    res = sd.sample(setting.oracle, solver, x_init=setting.x_t)
    return res.x, res.nfe


# =========================================================================== runs


@dataclass(frozen=True)
class Row:
    """One (setting, method, budget) measurement."""

    setting: str
    method: str
    family: str  # "ours", "ours@grid", "ours[edm-vars]", "diffusers", "k-diffusion"
    shared: str  # our registry name of the same algorithm ("" if none)
    budget: int
    nfe: int
    rmse: float  # sqrt(mean_i e_i^2), e_i = |x_i - ref_i| / sqrt(D) per sample
    median_err: float  # median_i e_i: the typical sample
    max_err: float  # max_i e_i
    seconds: float  # median wall time of one solve
    note: str = ""
    diff_peer: float = math.nan  # ours@grid rows: max |ours - peer| (same x_T, configured as it)


def our_methods() -> list[str]:
    """Every deterministic fixed-step method in the registry (adaptive ones excluded)."""
    return [
        info.name
        for info in sd.solvers_available()
        if info.kind == "ode" and not solvers.SOLVERS[info.name].adaptive
    ]


def _timed(fn: Callable[[], tuple[Tensor, int]], repeats: int) -> tuple[Tensor, int, float]:
    """Run ``fn`` ``repeats`` times; (result of the first run, its nfe, median seconds)."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = fn()
        times.append(time.perf_counter() - t0)
        out = out or res
    assert out is not None
    return out[0], out[1], statistics.median(times)


def _errors(x: Tensor, ref: Tensor) -> tuple[float, float, float]:
    """(RMS, median, max) over samples of the per-sample RMS error e_i = |x_i - ref_i| /
    sqrt(D)."""
    d = (x.to(_F64) - ref).reshape(x.shape[0], -1)
    if not bool(torch.isfinite(d).all()):
        return math.inf, math.inf, math.inf
    e = d.pow(2).mean(1).sqrt()
    return float(e.pow(2).mean().sqrt()), float(e.median()), float(e.max())


def _row(
    setting: Setting,
    method: str,
    family: str,
    shared: str,
    budget: int,
    fn: Callable[[], tuple[Tensor, int]],
    repeats: int,
    note: str = "",
    peer_x: Tensor | None = None,
) -> Row:
    try:
        x, nfe, secs = _timed(fn, repeats)
    except Exception as err:  # noqa: BLE001 - a failing method is a result, not a crash
        return Row(
            setting.name,
            method,
            family,
            shared,
            budget,
            0,
            math.nan,
            math.nan,
            math.nan,
            math.nan,
            f"failed: {type(err).__name__}: {err}"[:200],
        )
    assert nfe <= budget, f"{method} used {nfe} > {budget} evaluations"
    rmse, med, mx = _errors(x, setting.ref)
    diff = math.nan if peer_x is None else float((x - peer_x).abs().max())
    return Row(setting.name, method, family, shared, budget, nfe, rmse, med, mx, secs, note, diff)


def peer_specs(setting: Setting, kd: peers.KDiffusion) -> list[peers.PeerSpec]:
    specs: list[peers.PeerSpec] = []
    if setting.kind == "vp":
        specs += peers.diffusers_vp_peers()
    else:
        specs += peers.diffusers_edm_peers(setting.sde.t_min, setting.sde.T)
    if kd.sampling is not None:
        specs += peers.k_diffusion_peers(kd.sampling, vp=setting.kind == "vp")
    return specs


# peers whose state is x / alpha at sigma / alpha under VP: ours on their grid runs there too
def _peer_in_edm_vars(spec: peers.PeerSpec, setting: Setting) -> bool:
    return setting.kind == "vp" and (
        spec.library == "k-diffusion"
        or spec.name.startswith("diffusers:EulerDiscrete")
        or spec.name.startswith("diffusers:HeunDiscrete")
    )


EDM_VARS_METHODS = ("euler", "heun", "ipndm_v")


def _sigma_over_alpha(sde: Any, ts: Tensor) -> Tensor:
    """``sigma / alpha = exp(-log_snr / 2)`` at the times ``ts`` (float64)."""
    return torch.exp(-0.5 * sde.log_snr(ts.to(_F64)).to(_F64))


def as_peer(spec: peers.PeerSpec, nfe: int, n_steps: int) -> solvers.Solver[Any, Any]:
    """Our ``spec.shared`` method configured as the peer: ``spec.options`` (its final-step
    rule), and the per-step set-up the method makes for a budget (``for_budget``: e.g. the
    DPM-Solver-fast orders of ``dpm_solver_3``) where that budget buys the peer's step
    count."""
    assert spec.shared is not None
    solver = solvers.get_solver(spec.shared, **spec.options)
    configured, steps = solver.for_budget(nfe)
    return configured if steps == n_steps else solver


def run_setting(
    setting: Setting, nfes: tuple[int, ...], repeats: int, kd: peers.KDiffusion, log: Callable
) -> list[Row]:
    """Every method and peer at every budget on one setting."""
    rows: list[Row] = []
    oracle, x_t = setting.oracle, setting.x_t
    edm_oracle = setting.edm_vars_oracle() if setting.kind == "vp" else None

    def ours(method: Any, nfe: int, grid: Tensor | None = None) -> tuple[Tensor, int]:
        res = sd.sample(oracle, method, nfe, x_init=x_t, grid=grid)
        return res.x, res.nfe

    def ours_edm_vars(method: Any, nfe: int, grid: Tensor | None = None) -> tuple[Tensor, int]:
        if grid is None:  # the library option, on the method's default grid
            solver = solvers.EDMVariables(solvers.get_solver(method))
            res = sd.sample(oracle, solver, nfe, x_init=x_t)
            return res.x, res.nfe
        # on a peer's grid of sigma / alpha values: the same ODE as an EDM SDE in those
        # variables (a peer's float32 grid may overshoot [s(t_min), s(T)] by ~1e-7, which an
        # EDM SDE over the wider range accepts and the chain's t range would not)
        s_min, s_max = peers.edm_variables(setting.sde)
        lo, hi = min(s_min, float(grid.min())), max(s_max, float(grid.max()))
        model = setting.gmm.score_model(sd.EDMSDE(sigma_min=lo, sigma_max=hi))
        res = sd.sample(model, method, nfe, x_init=x_t / setting.alpha_t, grid=grid)
        return res.x * setting.alpha_min, res.nfe

    methods = our_methods()
    for nfe in nfes:
        t0 = time.perf_counter()
        for m in methods:
            rows.append(_row(setting, m, "ours", m, nfe, partial(ours, m, nfe), repeats))
        if edm_oracle is not None:
            for m in (m for m in EDM_VARS_METHODS if m in methods):
                fn = partial(ours_edm_vars, m, nfe)
                rows.append(_row(setting, f"{m}[edm-vars]", "ours[edm-vars]", m, nfe, fn, repeats))
        for spec in peer_specs(setting, kd):
            n_steps = spec.steps_for_budget(nfe)
            if n_steps < 1:
                continue
            first = spec.run(oracle, x_t, n_steps)  # kept for the same-grid comparison

            def run_peer(spec: peers.PeerSpec, n_steps: int) -> tuple[Tensor, int]:
                res = spec.run(oracle, x_t, n_steps)
                return res.x, res.nfe

            fn = partial(run_peer, spec, n_steps)
            rows.append(
                _row(
                    setting, spec.name, spec.library, spec.shared or "", nfe, fn, repeats, spec.note
                )
            )
            # our shared method configured as the peer: on the grid it visited, with its
            # final-step rule (spec.options), in its variables
            if spec.shared in methods and first.ts.numel() > 1:
                solver = as_peer(spec, nfe, first.ts.numel() - 1)
                if _peer_in_edm_vars(spec, setting):
                    label = f"{spec.shared}@{spec.name}[edm-vars]"
                    grid = first.sigmas
                    if grid is None:
                        grid = _sigma_over_alpha(setting.sde, first.ts)
                    fn = partial(ours_edm_vars, solver, nfe, grid)
                else:
                    label = f"{spec.shared}@{spec.name}"
                    fn = partial(ours, solver, nfe, first.ts)
                rows.append(
                    _row(setting, label, "ours@grid", spec.shared, nfe, fn, repeats, peer_x=first.x)
                )
        log(f"  {setting.name} NFE {nfe:>2}: {time.perf_counter() - t0:6.1f} s")
    return rows


# =========================================================================== checks


def wrapping_checks(
    settings: list[Setting], kd: peers.KDiffusion, log: Callable, slow: bool = False
) -> None:
    """Checks that the reference is tight and the peers are wrapped right: every peer at
    about 500 NFE against the reference (reported in docs/benchmarks.md). ``slow``: also the
    VP reference solved directly in t at rtol 1e-12 (first 100 samples; ~10 minutes)."""
    for setting in settings:
        tight, nfe, _ = reference(setting, 1e-12)
        log(
            f"{setting.name}: reference rtol 1e-10 vs 1e-12 ({nfe} NFE): max |diff| = "
            f"{float((tight - setting.ref).abs().max()):.2e}"
        )
        if slow and setting.kind == "vp":
            sub = replace(setting, x_t=setting.x_t[:100])
            for tol in (1e-10, 1e-12):
                x_t_solve, nfe_t = reference_in_t(sub, tol)
                log(
                    f"{setting.name}: reference solved in t at rtol {tol:.0e} ({nfe_t} NFE) vs "
                    f"in EDM variables: max |diff| = "
                    f"{float((x_t_solve - setting.ref[:100]).abs().max()):.2e}"
                )
        for spec in peer_specs(setting, kd):
            res = spec.run(setting.oracle, setting.x_t, spec.steps_for_budget(500))
            rmse, med, mx = _errors(res.x, setting.ref)
            log(
                f"{setting.name}: {spec.name} at {res.nfe} NFE: rmse {rmse:.2e}, median "
                f"{med:.2e}, max {mx:.2e}"
            )


# =========================================================================== output


def _fmt(v: float) -> str:
    return "fail" if not math.isfinite(v) else f"{v:.2e}"


def error_table(rows: list[Row], setting: str, nfes: tuple[int, ...], value: str) -> str:
    """Methods x budgets; ``value``: ``"rmse"``, ``"median_err"`` or ``"seconds"`` (ms)."""
    sel = [r for r in rows if r.setting == setting and r.family != "ours@grid"]
    order: list[str] = []
    for r in sel:
        if r.method not in order:
            order.append(r.method)
    cell = {(r.method, r.budget): r for r in sel}
    head = "| method | " + " | ".join(f"NFE {n}" for n in nfes) + " |"
    out = [head, "|---|" + "---:|" * len(nfes)]
    for m in order:
        vals = []
        for n in nfes:
            r = cell.get((m, n))
            if r is None:
                vals.append("–")
            elif value == "seconds":
                vals.append("fail" if not math.isfinite(r.seconds) else f"{1e3 * r.seconds:.1f}")
            else:
                v = getattr(r, value)
                txt = _fmt(v)
                vals.append(txt if r.nfe == n or not math.isfinite(v) else f"{txt} ({r.nfe})")
        fam = next(r.family for r in sel if r.method == m)
        name = f"**{m}**" if fam.startswith("ours") else m
        out.append(f"| {name} | " + " | ".join(vals) + " |")
    return "\n".join(out)


def _ratio(a: float, b: float) -> float:
    return a / b if math.isfinite(a) and math.isfinite(b) and b > 0 else math.nan


def shared_comparisons(rows: list[Row]) -> list[dict[str, Any]]:
    """Ours (default grid) vs each peer with the same (nominal) algorithm at equal budget,
    plus our method configured as the peer (its grid, final-step rule and variables).

    ``pairing``: ``"name"`` pairs the peer with our method of the same registry name in its
    default configuration; ``"variables"`` (VP only) pairs a peer that integrates in EDM
    variables (diffusers' Euler/Heun, k-diffusion's euler/heun/lms) with our method in the same
    variables (``solvers.EDMVariables``, the ``[edm-vars]`` rows): the same algorithm."""
    idx = {(r.setting, r.method, r.budget): r for r in rows}
    out = []
    for r in rows:
        if r.family not in ("diffusers", "k-diffusion") or not r.shared:
            continue
        candidates = [("name", idx.get((r.setting, r.shared, r.budget)))]
        variant = idx.get((r.setting, f"{r.shared}[edm-vars]", r.budget))
        if variant is not None and _peer_row_in_edm_vars(r):
            candidates.append(("variables", variant))
        for pairing, o in candidates:
            if o is not None:
                out.append(_comparison(rows, r, o, pairing))
    return out


def _peer_row_in_edm_vars(r: Row) -> bool:
    """A VP peer row whose sampler integrates in EDM variables (see :func:`_peer_in_edm_vars`)."""
    return r.setting.startswith("vp") and (
        r.family == "k-diffusion"
        or r.method.startswith(("diffusers:EulerDiscrete", "diffusers:HeunDiscrete"))
    )


def _comparison(rows: list[Row], r: Row, o: Row, pairing: str) -> dict[str, Any]:
    """One comparison record: peer row ``r`` against our row ``o``; ``g``: our method on the
    peer's configuration (``ours@grid`` row), where it exists."""
    same = [
        x
        for x in rows
        if x.setting == r.setting
        and x.budget == r.budget
        and x.family == "ours@grid"
        and x.method.startswith(f"{r.shared}@{r.method}")
    ]
    g = same[0] if same else None
    return {
        "setting": r.setting,
        "peer": r.method,
        "ours": o.method,
        "pairing": pairing,
        "budget": r.budget,
        "peer_nfe": r.nfe,
        "ours_nfe": o.nfe,
        "peer_rmse": r.rmse,
        "ours_rmse": o.rmse,
        "peer_median": r.median_err,
        "ours_median": o.median_err,
        "rmse_ratio": _ratio(o.rmse, r.rmse),
        "median_ratio": _ratio(o.median_err, r.median_err),
        "as_peer_rmse_ratio": _ratio(g.rmse, r.rmse) if g else math.nan,
        "as_peer_median_ratio": _ratio(g.median_err, r.median_err) if g else math.nan,
        "as_peer_max_diff": g.diff_peer if g else math.nan,
        "time_ratio": _ratio(o.seconds, r.seconds),
    }


def comparison_table(comps: list[dict[str, Any]], setting: str, nfes: tuple[int, ...]) -> str:
    """Cells ``R / M [g G] t T``: R = RMS-error ratio ours/peer, M = median-error ratio
    (bold above 1.05), G = RMS-error ratio of our method configured as the peer (its grid,
    final-step rule and variables), T = time ratio."""
    sel = [c for c in comps if c["setting"] == setting]
    pairs: list[tuple[str, str]] = []
    for c in sel:
        if (c["ours"], c["peer"]) not in pairs:
            pairs.append((c["ours"], c["peer"]))
    cell = {(c["ours"], c["peer"], c["budget"]): c for c in sel}
    head = "| ours | peer | " + " | ".join(f"NFE {n}" for n in nfes) + " |"
    out = [head, "|---|---|" + "---:|" * len(nfes)]

    def ratio(v: float) -> str:
        if not math.isfinite(v):
            return "–"
        return f"**{v:.2f}**" if v > 1.05 else f"{v:.2f}"

    def fmt(c: dict[str, Any] | None) -> str:
        if c is None:
            return "–"
        txt = f"{ratio(c['rmse_ratio'])} / {ratio(c['median_ratio'])}"
        if math.isfinite(c["as_peer_rmse_ratio"]):
            txt += f" [g {c['as_peer_rmse_ratio']:.2f}]"
        if math.isfinite(c["time_ratio"]):
            txt += f" t {c['time_ratio']:.2f}"
        return txt

    for ours, peer in pairs:
        out.append(
            f"| {ours} | {peer} | "
            + " | ".join(fmt(cell.get((ours, peer, n))) for n in nfes)
            + " |"
        )
    return "\n".join(out)


def best_at(
    rows: list[Row], setting: str, budget: int, families: tuple[str, ...], metric: str
) -> Row | None:
    sel = [
        r
        for r in rows
        if r.setting == setting
        and r.budget == budget
        and r.family in families
        and math.isfinite(getattr(r, metric))
    ]
    return min(sel, key=lambda r: getattr(r, metric)) if sel else None


def targets(rows: list[Row], comps: list[dict[str, Any]], settings: list[str]) -> dict[str, Any]:
    """The two targets, on both error metrics.

    1. Every algorithm shared with a peer is within 5% of the peer's error at equal NFE, or
       better: the (setting, ours, peer, NFE) cells with a ratio above 1.05, for our method on
       its default grid and configured as the peer. ``shared``: each peer against our method of
       the same name (default configuration); ``shared_matched``: the VP peers that integrate
       in EDM variables against our method in those variables instead (``pairing``
       ``"variables"``, see :func:`shared_comparisons`), the others as in ``shared``.
    2. Our best method at NFE 10 (default grids) beats the best peer at NFE 10.

    ``peers``: the same test applied between the peers (:func:`peer_against_peer`).
    """
    out: dict[str, Any] = {
        "shared": {},
        "shared_matched": {},
        "best_at_10": {},
        "peers": peer_against_peer(rows),
    }
    by_name = [c for c in comps if c["pairing"] == "name"]
    swapped = {(c["setting"], c["peer"], c["budget"]) for c in comps if c["pairing"] != "name"}
    matched = [
        c
        for c in comps
        if c["pairing"] != "name" or (c["setting"], c["peer"], c["budget"]) not in swapped
    ]
    for metric, key, gkey in (
        ("rmse", "rmse_ratio", "as_peer_rmse_ratio"),
        ("median_err", "median_ratio", "as_peer_median_ratio"),
    ):
        for label, sel in (("shared", by_name), ("shared_matched", matched)):
            misses = [
                [c["setting"], c["ours"], c["peer"], c["budget"], round(c[key], 3)]
                for c in sel
                if math.isfinite(c[key]) and c[key] > 1.05
            ]
            grid_misses = [
                [c["setting"], c["ours"], c["peer"], c["budget"], round(c[gkey], 3)]
                for c in sel
                if math.isfinite(c[gkey]) and c[gkey] > 1.05
            ]
            out[label][metric] = {
                "cells": len(sel),
                "misses_default_grid": misses,
                "misses_as_peer": grid_misses,
            }
        for s in settings:
            ours = best_at(rows, s, 10, ("ours",), metric)
            peer = best_at(rows, s, 10, ("diffusers", "k-diffusion"), metric)
            if ours is None or peer is None:
                continue
            out["best_at_10"].setdefault(s, {})[metric] = {
                "ours": [ours.method, getattr(ours, metric)],
                "peer": [peer.method, getattr(peer, metric)],
                "met": getattr(ours, metric) < getattr(peer, metric),
            }
    return out


def peer_against_peer(rows: list[Row]) -> dict[str, Any]:
    """Target 1 between the peers: for every algorithm that both diffusers and k-diffusion
    implement (the same ``shared`` name), each library's sampler against the other's at equal
    budget, on its own default configuration. Per direction (``"diffusers vs k-diffusion"``:
    diffusers' error over k-diffusion's) and metric: the cells and those above 1.05."""
    by: dict[tuple[str, str, int], dict[str, list[Row]]] = {}
    for r in rows:
        if r.family in ("diffusers", "k-diffusion") and r.shared:
            by.setdefault((r.setting, r.shared, r.budget), {}).setdefault(r.family, []).append(r)
    out: dict[str, Any] = {}
    for a, b in (("diffusers", "k-diffusion"), ("k-diffusion", "diffusers")):
        for metric in ("rmse", "median_err"):
            cells, misses = 0, []
            for (setting, _shared, budget), libs in sorted(by.items()):
                for ra in libs.get(a, []):
                    for rb in libs.get(b, []):
                        ratio = _ratio(getattr(ra, metric), getattr(rb, metric))
                        if not math.isfinite(ratio):
                            continue
                        cells += 1
                        if ratio > 1.05:
                            misses.append([setting, ra.method, rb.method, budget, round(ratio, 3)])
            out.setdefault(f"{a} vs {b}", {})[metric] = {"cells": cells, "misses": misses}
    return out


_STYLE = {"ours": "-", "ours[edm-vars]": ":", "diffusers": "--", "k-diffusion": "-."}


def plot(rows: list[Row], setting: str, path: Path, title: str) -> None:
    """Log-log error vs NFE, one line per method, RMS error (left) and median error (right).
    Colour = algorithm (a peer takes the colour of our method with the same algorithm), line
    style = implementation: ours solid, ours in EDM variables dotted, diffusers dashed,
    k-diffusion dash-dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = [r for r in rows if r.setting == setting and r.family != "ours@grid"]
    methods: list[str] = []
    for r in sel:
        if r.method not in methods:
            methods.append(r.method)
    ours = [m for m in methods if any(r.method == m and r.family == "ours" for r in sel)]
    colours = {m: plt.get_cmap("tab20")(i % 20) for i, m in enumerate(ours)}
    markers = "os^vD<>pPhX*"
    fig, axes = plt.subplots(1, 2, figsize=(17, 7.5), sharex=True)
    nfes = sorted({r.budget for r in sel})
    for ax, metric, label in (
        (axes[0], "rmse", "RMS over samples"),
        (axes[1], "median_err", "median over samples"),
    ):
        vals = [getattr(r, metric) for r in sel if math.isfinite(getattr(r, metric))]
        for i, m in enumerate(methods):
            pts = sorted(
                (r.nfe, getattr(r, metric))
                for r in sel
                if r.method == m and math.isfinite(getattr(r, metric)) and getattr(r, metric) > 0
            )
            row = next(r for r in sel if r.method == m)
            ax.plot(
                [q[0] for q in pts],
                [q[1] for q in pts],
                linestyle=_STYLE[row.family],
                marker=markers[i % len(markers)],
                markersize=4,
                linewidth=1.4,
                color=colours.get(row.shared, "black"),
                label=m,
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(nfes, [str(n) for n in nfes])
        ax.minorticks_off()
        ax.set_ylim(min(vals) / 2, min(10.0, max(vals) * 2))
        ax.set_xlabel("NFE (model evaluations actually used)")
        ax.set_ylabel(f"endpoint error vs DOP853 reference, {label}")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), ncol=1)
    fig.suptitle(
        title + "\nsolid: ours, dotted: ours in EDM variables, dashed: diffusers, dash-dot: "
        "k-diffusion; colour = algorithm",
        fontsize=11,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def environment() -> dict[str, Any]:
    cpu = cpu_name()
    import importlib.metadata as md

    def ver(p: str) -> str | None:
        try:
            return md.version(p)
        except md.PackageNotFoundError:
            return None

    return {
        "cpu": cpu,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": ver("diffusers"),
        "k-diffusion": ver("k-diffusion"),
        "scipy": ver("scipy"),
        "date": time.strftime("%Y-%m-%d"),
    }


# =========================================================================== main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2-D only, NFE 5/10/20, 1 repeat")
    p.add_argument("--check", action="store_true", help="only the wrapping checks")
    p.add_argument(
        "--check-slow",
        action="store_true",
        help="with --check: also the VP reference solved in t at rtol 1e-12 (~10 min)",
    )
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument(
        "--img",
        type=Path,
        default=None,
        help="plot folder (default docs/img; --quick: the --out folder)",
    )
    p.add_argument(
        "--repeats", type=int, default=None, help="timing repeats (default 5 in 2-D, 3 in 64-D)"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--rerender",
        type=Path,
        default=None,
        help="re-write tables and plots from a previous run's JSON, without solving",
    )
    args = p.parse_args(argv)
    if args.rerender is not None:
        rerender(args.rerender, args.img or Path("docs/img"))
        return 0
    torch.set_num_threads(args.threads)
    quick = args.quick
    nfes = QUICK_NFES if quick else FULL_NFES

    # timing repeats (median): the oracle is cheap in 2-D, so more repeats there
    def repeats_for(dim: int) -> int:
        return args.repeats or (1 if quick else (5 if dim == 2 else 3))

    img = args.img or (args.out if quick else Path("docs/img"))
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f} s] {msg}", flush=True)

    kd = peers.load_k_diffusion()
    log(f"k-diffusion: {kd.version} ({kd.reason})")
    plan = [("vp", 2, 1000), ("edm", 2, 1000)]
    if not quick and not args.check:
        plan += [("vp", 64, 250), ("edm", 64, 250)]
    settings = []
    for kind, dim, n in plan:
        s = make_setting(kind, dim, n, args.seed + dim)
        s.ref, nfe, secs = reference(s)
        s.ref_info = {"nfe": nfe, "seconds": secs, "n_samples": n}
        log(f"{s.name}: reference DOP853 rtol=atol={REF_TOL}: {nfe} NFE, {secs:.1f} s")
        settings.append(s)

    if args.check:
        wrapping_checks(settings, kd, log, slow=args.check_slow)
        return 0

    rows: list[Row] = []
    for s in settings:
        rows += run_setting(s, nfes, repeats_for(s.dim), kd, log)
    infos = [
        {"name": s.name, "kind": s.kind, "dim": s.dim, "repeats": repeats_for(s.dim), **s.ref_info}
        for s in settings
    ]
    meta = {
        "command": "python bench/sampler_accuracy.py " + " ".join(argv or sys.argv[1:]),
        "environment": environment(),
        "k_diffusion": kd.reason,
        "reference_tol": REF_TOL,
    }
    stem = "sampler_accuracy" + ("_quick" if quick else "")
    tgt = write_outputs(rows, infos, nfes, meta, args.out, stem, img)
    log(f"targets: {json.dumps(tgt.get('best_at_10'))}")
    for pair, by_metric in tgt.get("peers", {}).items():
        for metric, v in by_metric.items():
            log(f"peers, {pair}, {metric}: {len(v['misses'])} of {v['cells']} cells above 1.05")
    for label in ("shared", "shared_matched"):
        for metric, v in tgt.get(label, {}).items():
            log(
                f"{label}, {metric}: {len(v['misses_default_grid'])} of {v['cells']} cells "
                f"above 1.05 (default grids), {len(v['misses_as_peer'])} configured as the peer"
            )
    log(f"wrote {args.out / stem}.{{csv,json,md}} and plots in {img}")
    return 0


def write_outputs(
    rows: list[Row],
    infos: list[dict[str, Any]],
    nfes: tuple[int, ...],
    meta: dict[str, Any],
    out: Path,
    stem: str,
    img: Path,
) -> dict[str, Any]:
    """CSV, JSON, the markdown tables and the plots; returns the target evaluation."""
    comps = shared_comparisons(rows)
    tgt = targets(rows, comps, [i["name"] for i in infos]) if 10 in nfes else {}
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        w.writeheader()
        for r in rows:
            w.writerow(asdict(r))
    reps = ", ".join(f"{i['repeats']} ({i['name']})" for i in infos)
    md = [
        f"# Sampler accuracy ({'quick' if 'quick' in stem else 'full'} run)",
        "",
        f"Command: `{meta['command'].strip()}`",
        "",
        f"Environment: {json.dumps(meta['environment'])}; timing: median of {reps} repeats; "
        f"k-diffusion: {meta['k_diffusion']}.",
        "",
        "Error of a sample: e_i = |x_i - x_ref,i| / sqrt(D) (RMS over coordinates). RMS: "
        "sqrt(mean_i e_i^2) over the samples; median: median_i e_i. Actual NFE in brackets "
        "when below the budget.",
        "",
    ]
    for info in infos:
        name = info["name"]
        md += [
            f"## {name}",
            "",
            f"{info['n_samples']} samples; reference: DOP853 rtol=atol={meta['reference_tol']}, "
            f"{info['nfe']} NFE.",
            "",
            f"### {name}: RMS endpoint error",
            "",
            error_table(rows, name, nfes, "rmse"),
            "",
            f"### {name}: median endpoint error",
            "",
            error_table(rows, name, nfes, "median_err"),
            "",
            f"### {name}: median wall time per solve (ms)",
            "",
            error_table(rows, name, nfes, "seconds"),
            "",
            f"### {name}: shared algorithms, ours / peer",
            "",
            "Cells: RMS-error ratio / median-error ratio of our method (default grid) to the "
            "peer at the same budget (bold: above 1.05); [g: RMS-error ratio of our method "
            "configured as the peer: its grid, final-step rule and variables]; t: wall-time "
            "ratio.",
            "",
            comparison_table(comps, name, nfes),
            "",
        ]
        title = (
            f"{'VP (diffusers DDPM chain, N=1000)' if info['kind'] == 'vp' else 'EDM'}, "
            f"{info['dim']}-D Gaussian mixture, {info['n_samples']} samples"
        )
        plot(rows, name, img / f"sampler_accuracy_{name}.png", title)
    summary = {
        **meta,
        "nfes": list(nfes),
        "settings": infos,
        "targets": tgt,
        "comparisons": comps,
        "rows": [asdict(r) for r in rows],
    }
    (out / f"{stem}.json").write_text(json.dumps(summary, default=str) + "\n")
    (out / f"{stem}.md").write_text("\n".join(md))
    return tgt


def rerender(path: Path, img: Path) -> None:
    """Re-write the tables and plots from a previous run's JSON (no solves)."""
    data = json.loads(path.read_text())
    rows = [Row(**r) for r in data["rows"]]
    meta = {k: data[k] for k in ("command", "environment", "k_diffusion", "reference_tol")}
    write_outputs(rows, data["settings"], tuple(data["nfes"]), meta, path.parent, path.stem, img)


if __name__ == "__main__":
    raise SystemExit(main())
