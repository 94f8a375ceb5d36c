"""Time-grid sweep: which default grid (and options) each fixed-step ODE sampler should use.

Usage (from the repository root; docs/solvers.md, "Default time grids", has the conclusions)::

    python bench/grid_sweep.py                 # full sweep (~30 min on 2 busy CPU cores)
    python bench/grid_sweep.py --quick         # 2-D problems, NFE 5/10/20 (~1.5 min)
    python bench/grid_sweep.py --large-nfe     # the final-step rule at NFE 100, 200 (~6 min)
    python bench/grid_sweep.py --resume        # continue an interrupted run (same --out)
    python bench/grid_sweep.py --rerender      # tables from bench/results/grid_sweep.csv

For every deterministic fixed-step method of the registry (and the options whose default is
decided here: the integration variables of the Runge-Kutta / Adams methods, ``t`` or EDM's
``(x / alpha, sigma / alpha)``; DPM-Solver++(3M)'s third-order coefficient; the final-step
order rule ``lower_order_final`` of the multistep methods), every time grid of
``solvers.time_grids`` (``uniform``, ``quadratic``, ``logsnr`` and ``karras`` with rho in
{3, 5, 7, 10}; ``karras`` with rho -> infinity is ``logsnr``) and every budget NFE in
{5, 8, 10, 15, 20, 50}, on 36 problems: six Gaussian mixtures (2-D: a ring of sharp modes and
a 5 x 5 grid of modes; 16-D: broad and sharp components; 64-D: anisotropic components and
nearly low-rank ones; none is one of ``bench/sampler_accuracy.py``'s) under six SDEs (the
continuous VP SDE at t_min 1e-5 and 1e-3, the discrete DDPM chain ``VPSDE.from_discrete``
with diffusers' linear betas, the cosine VP SDE, VE and EDM).

Error: per sample ``e_i = |x_i - x_ref,i| / sqrt(D)`` against scipy DOP853 at rtol = atol =
1e-10 on the exact PF-ODE from the same ``x_T``, solved in EDM variables (smooth for every
schedule); RMS and median over samples.

Aggregate: for each configuration, problem and budget, the ratio of a grid's error to the
smallest error any grid reached (capped at 1e3, so a divergent solve counts as a large but
finite loss); the score of a grid is the geometric mean of these ratios over problems and
budgets, averaged in log space over the RMS and the median error. Scores are computed per
family of SDEs (VP-type: alpha decays; VE-type: alpha = 1, VE and EDM), because the best
grid depends on it; the default of a method under a family is the named grid (``uniform``,
``quadratic``, ``logsnr``, ``karras``) with the lowest score for its default configuration,
and the options are chosen by comparing configurations on their best grids
(``DEFAULT_CONFIGS``; the report checks that ``solver.grid_for`` agrees).

Outputs (``--out``, default ``bench/results``): ``grid_sweep.csv`` (every solve),
``grid_sweep.md`` (scores, choices, option comparisons) and ``grid_sweep.png`` (heat map of
the scores); ``--large-nfe``: ``grid_sweep_large_nfe.{csv,md}``.
"""

from __future__ import annotations

import argparse
import csv
import math
import platform
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE.parent), str(_HERE)]

from bench_env import cpu_name  # noqa: E402

import scoresde as sd  # noqa: E402
import solvers  # noqa: E402

_F64 = torch.float64
FULL_NFES = (5, 8, 10, 15, 20, 50)
QUICK_NFES = (5, 10, 20)
REF_TOL = 1e-10
RATIO_CAP = 1e3
GRIDS: tuple[tuple[str, str, dict[str, float]], ...] = (
    # (label, GRIDS name, kwargs)
    ("uniform", "uniform", {}),
    ("quadratic", "quadratic", {}),
    ("logsnr", "logsnr", {}),
    ("karras3", "karras", {"rho": 3.0}),
    ("karras5", "karras", {"rho": 5.0}),
    ("karras7", "karras", {"rho": 7.0}),
    ("karras10", "karras", {"rho": 10.0}),
)
FAMILIES = {
    "vp": "VP-type",
    "vp3": "VP-type",
    "ddpm": "VP-type",
    "cosine": "VP-type",
    "ve": "VE-type",
    "edm": "VE-type",
}


# =========================================================================== problems


def _rotated_covs(lam: Tensor, g: torch.Generator) -> Tensor:
    k, d = lam.shape
    q, _ = torch.linalg.qr(torch.randn(k, d, d, generator=g, dtype=_F64))
    covs = q @ torch.diag_embed(lam) @ q.transpose(-1, -2)
    return 0.5 * (covs + covs.transpose(-1, -2))


def _log_uniform(lo: float, hi: float, shape: tuple[int, ...], g: torch.Generator) -> Tensor:
    u = torch.rand(*shape, generator=g, dtype=_F64)
    return torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * u)


def make_gmm(name: str) -> sd.GaussianMixture:
    """The six data sets of the sweep (seeds fixed; different from the benchmark's).

    * ``ring2``: 2-D, 6 components on a circle of radius 1.2, anisotropic covariances with
      eigenvalues in [0.002, 0.03], unequal weights.
    * ``grid2``: 2-D, the 25-Gaussian 5 x 5 grid on [-1.6, 1.6]^2, isotropic variance 0.004.
    * ``broad16``: 16-D, 6 components, means N(0, 1), eigenvalues in [0.05, 0.8].
    * ``sharp16``: 16-D, 12 components, means N(0, 0.7^2), eigenvalues in [0.003, 0.1].
    * ``aniso64``: 64-D, 10 components, means N(0, 0.6^2), eigenvalues in [0.005, 0.5].
    * ``lowrank64``: 64-D, 8 components, means N(0, 0.8^2), 6 eigenvalues in [0.1, 0.6] and
      the rest in [1e-4, 1e-3] (data near 6-dimensional affine subspaces).
    """
    g = torch.Generator().manual_seed(sum(map(ord, name)) + 1000)
    if name == "ring2":
        k = 6
        ang = 2 * math.pi * (torch.arange(k, dtype=_F64) + 0.3) / k
        means = 1.2 * torch.stack([torch.cos(ang), torch.sin(ang)], 1)
        covs = _rotated_covs(_log_uniform(0.002, 0.03, (k, 2), g), g)
    elif name == "grid2":
        ax = torch.linspace(-1.6, 1.6, 5, dtype=_F64)
        means = torch.cartesian_prod(ax, ax)
        k = means.shape[0]
        covs = torch.full((k,), 0.004, dtype=_F64)
    elif name == "broad16":
        k = 6
        means = torch.randn(k, 16, generator=g, dtype=_F64)
        covs = _rotated_covs(_log_uniform(0.05, 0.8, (k, 16), g), g)
    elif name == "sharp16":
        k = 12
        means = 0.7 * torch.randn(k, 16, generator=g, dtype=_F64)
        covs = _rotated_covs(_log_uniform(0.003, 0.1, (k, 16), g), g)
    elif name == "aniso64":
        k = 10
        means = 0.6 * torch.randn(k, 64, generator=g, dtype=_F64)
        covs = _rotated_covs(_log_uniform(0.005, 0.5, (k, 64), g), g)
    elif name == "lowrank64":
        k = 8
        means = 0.8 * torch.randn(k, 64, generator=g, dtype=_F64)
        lam = torch.cat(
            [_log_uniform(0.1, 0.6, (k, 6), g), _log_uniform(1e-4, 1e-3, (k, 58), g)], 1
        )
        covs = _rotated_covs(lam, g)
    else:
        raise ValueError(f"unknown data set {name!r}")
    weights = 0.5 + torch.rand(k, generator=g, dtype=_F64)
    return sd.GaussianMixture(weights / weights.sum(), means, covs)


def make_sde(name: str) -> Any:
    if name == "vp":
        return sd.VPSDE()  # t_min = 1e-5
    if name == "vp3":
        return sd.VPSDE(t_min=1e-3)
    if name == "ddpm":
        return sd.VPSDE.from_discrete(torch.linspace(1e-4, 0.02, 1000, dtype=_F64))
    if name == "cosine":
        return sd.CosineVPSDE()
    if name == "ve":
        return sd.VESDE()
    if name == "edm":
        return sd.EDMSDE()
    raise ValueError(f"unknown SDE {name!r}")


DATASETS = {"ring2": 300, "grid2": 300, "broad16": 150, "sharp16": 150, "aniso64": 100}
DATASETS["lowrank64"] = 100
SDES = ("vp", "vp3", "ddpm", "cosine", "ve", "edm")


@dataclass
class Problem:
    data: str
    sde_name: str
    gmm: sd.GaussianMixture
    sde: Any
    oracle: Any
    x_t: Tensor
    ref: Tensor

    @property
    def name(self) -> str:
        return f"{self.sde_name}/{self.data}"


def _sigma_over_alpha(sde: Any, t: float) -> float:
    return math.exp(-0.5 * float(sde.log_snr(torch.tensor(t, dtype=_F64))))


def reference(gmm: sd.GaussianMixture, sde: Any, x_t: Tensor) -> Tensor:
    """DOP853 at rtol = atol = 1e-10 on the PF-ODE in EDM variables (``x / alpha`` against
    ``sigma / alpha``: the same mixture under ``EDMSDE`` over the same noise-to-signal range),
    mapped back to ``x`` at ``t_min``."""
    s_max, s_min = _sigma_over_alpha(sde, sde.T), _sigma_over_alpha(sde, sde.t_min)
    model = gmm.score_model(sd.EDMSDE(sigma_min=s_min, sigma_max=s_max))
    alpha_t = float(sde.alpha(torch.tensor(sde.T, dtype=_F64)))
    alpha_min = float(sde.alpha(torch.tensor(sde.t_min, dtype=_F64)))
    solver = solvers.get_solver("dop853", rtol=REF_TOL, atol=REF_TOL)
    return sd.sample(model, solver, x_init=x_t / alpha_t).x * alpha_min


def make_problem(data: str, sde_name: str) -> Problem:
    gmm, sde = make_gmm(data), make_sde(sde_name)
    g = torch.Generator().manual_seed(sum(map(ord, data + sde_name)))
    x_t = sde.prior_sample((DATASETS[data], gmm.means.shape[1]), g, dtype=_F64)
    ref = reference(gmm, sde, x_t)
    return Problem(data, sde_name, gmm, sde, gmm.score_model(sde), x_t, ref)


# =========================================================================== configurations


def configurations() -> dict[str, Callable[[], solvers.Solver[Any, Any]]]:
    """Label -> solver factory: every deterministic fixed-step method of the registry with the
    options swept here set explicitly (so that the results do not depend on the defaults)."""
    from solvers.ode_fixed import EDMVariables

    cfg: dict[str, Callable[[], solvers.Solver[Any, Any]]] = {}
    for name in ("euler", "heun", "midpoint", "rk4", "ipndm", "ipndm_v"):
        cls = solvers.SOLVERS[name]
        cfg[f"{name}[t]"] = cls
        cfg[f"{name}[edm]"] = lambda cls=cls: EDMVariables(cls())
    cfg["ddim"] = solvers.DDIM
    cfg["dpm_solver_2"] = solvers.DPMSolver2
    cfg["dpm_solver_3"] = solvers.DPMSolver3
    cfg["dpmpp_2s"] = solvers.DPMSolverPP2S
    cfg["plms"] = solvers.PLMS
    for lof in (False, True):
        tag = "lof" if lof else "full"
        cfg[f"dpmpp_2m[{tag}]"] = lambda lof=lof: solvers.DPMSolverPP2M(lower_order_final=lof)
        for coefficient in ("exact", "lu"):
            cfg[f"dpmpp_3m[{coefficient},{tag}]"] = lambda lof=lof, c=coefficient: (
                solvers.DPMSolverPP3M(lower_order_final=lof, coefficient=c)
            )
        cfg[f"unipc[{tag}]"] = lambda lof=lof: solvers.UniPC(lower_order_final=lof)
        cfg[f"deis[{tag}]"] = lambda lof=lof: solvers.DEIS(lower_order_final=lof)
    known = {"lof", "full", "t", "edm", "exact,lof", "exact,full", "lu,lof", "lu,full"}
    swept = {label.split("[")[0] for label in cfg}
    odes = {
        info.name
        for info in solvers.solvers_available()
        if info.kind == "ode" and not solvers.SOLVERS[info.name].adaptive
    }
    missing = odes - swept
    assert not missing, f"registry ODE methods not in the sweep: {missing}"
    assert all(label.split("[")[-1].rstrip("]") in known for label in cfg if "[" in label)
    return cfg


# =========================================================================== runs


@dataclass(frozen=True)
class Row:
    problem: str
    sde: str
    data: str
    dim: int
    config: str
    grid: str
    budget: int
    nfe: int
    rmse: float
    median_err: float
    seconds: float


def _errors(x: Tensor, ref: Tensor) -> tuple[float, float]:
    d = (x.to(_F64) - ref).reshape(x.shape[0], -1)
    if not bool(torch.isfinite(d).all()):
        return math.inf, math.inf
    e = d.pow(2).mean(1).sqrt()
    return float(e.pow(2).mean().sqrt()), float(e.median())


def run_one(prob: Problem, factory: Callable[[], Any], grid: tuple[str, str, dict], nfe: int):
    solver, n_steps = factory().for_budget(nfe)
    label, gname, kwargs = grid
    t0 = time.perf_counter()
    try:
        ts = solvers.make_grid(gname, prob.sde, prob.sde.T, prob.sde.t_min, n_steps, **kwargs)
        res = sd.sample(prob.oracle, solver, nfe, x_init=prob.x_t, grid=ts)
        rmse, med = _errors(res.x, prob.ref)
        used = res.nfe
    except (ValueError, RuntimeError, solvers.NonFiniteError):
        rmse = med = math.inf
        used = 0
    return used, rmse, med, time.perf_counter() - t0


def sweep(
    problems: Iterable[tuple[str, str]],
    nfes: tuple[int, ...],
    out_csv: Path,
    resume: bool,
    log: Callable[[str], None],
    only: Callable[[str], bool] = lambda label: True,
    grids: tuple[tuple[str, str, dict[str, float]], ...] = GRIDS,
) -> None:
    """Run every configuration (those ``only`` keeps) x grid x budget on every problem,
    appending rows to ``out_csv`` as it goes (``resume``: skip the (problem, config) pairs
    already there)."""
    from tqdm.auto import tqdm

    cfg = {label: f for label, f in configurations().items() if only(label)}
    done: set[tuple[str, str]] = set()
    if resume and out_csv.exists():
        with open(out_csv) as f:
            counts: dict[tuple[str, str], int] = defaultdict(int)
            for r in csv.DictReader(f):
                counts[(r["problem"], r["config"])] += 1
        done = {k for k, v in counts.items() if v == len(grids) * len(nfes)}
    else:
        with open(out_csv, "w", newline="") as f:
            csv.writer(f).writerow([fl.name for fl in fields(Row)])
    for data, sde_name in problems:
        t0 = time.perf_counter()
        prob = make_problem(data, sde_name)
        dim = prob.x_t.shape[1]
        todo = [c for c in cfg if (prob.name, c) not in done]
        with open(out_csv, "a", newline="") as f:
            w = csv.writer(f)
            for label in tqdm(todo, desc=prob.name, leave=False):
                for grid in grids:
                    for nfe in nfes:
                        used, rmse, med, secs = run_one(prob, cfg[label], grid, nfe)
                        row = Row(
                            prob.name,
                            sde_name,
                            data,
                            dim,
                            label,
                            grid[0],
                            nfe,
                            used,
                            rmse,
                            med,
                            secs,
                        )
                        w.writerow(csv_values(row))
                f.flush()
        log(f"{prob.name}: {len(todo)} configurations in {time.perf_counter() - t0:.0f} s")


def csv_values(row: Row) -> list[Any]:
    """A row for the CSV, errors to 4 significant digits and times to 3 (the file stays small;
    rankings use ratios of errors that differ by far more)."""
    out: list[Any] = []
    for name, value in asdict(row).items():
        if isinstance(value, float):
            value = f"{value:.3g}" if name == "seconds" else f"{value:.4g}"
        out.append(value)
    return out


# =========================================================================== analysis


def read_rows(path: Path) -> list[Row]:
    rows = []
    with open(path) as f:
        for r in csv.DictReader(f):
            rows.append(
                Row(
                    r["problem"],
                    r["sde"],
                    r["data"],
                    int(r["dim"]),
                    r["config"],
                    r["grid"],
                    int(r["budget"]),
                    int(r["nfe"]),
                    float(r["rmse"]),
                    float(r["median_err"]),
                    float(r["seconds"]),
                )
            )
    return rows


LOF_THRESHOLDS = (10, 15, 25)
"""Final-step thresholds turned into virtual configurations: ``lower_order_final=None`` with
``lower_order_final_steps = theta`` applies the rule to solves of fewer than ``theta`` steps
(``[full]`` is never, ``[lof]`` always)."""


def with_threshold_configs(rows: list[Row]) -> list[Row]:
    """Add the rows of ``lower_order_final=None`` with each threshold of
    :data:`LOF_THRESHOLDS`, assembled from the ``[lof]`` and ``[full]`` rows (these methods
    take one step per evaluation, so the step count is the budget)."""
    idx = {(r.problem, r.config, r.grid, r.budget): r for r in rows}
    extra = []
    for r in rows:
        if not r.config.endswith("lof]"):
            continue
        full = r.config[: -len("lof]")] + "full]"
        for theta in LOF_THRESHOLDS:
            src = r if r.budget < theta else idx.get((r.problem, full, r.grid, r.budget))
            if src is None:
                continue
            label = r.config[: -len("lof]")] + f"lof<{theta}]"
            extra.append(replace(src, config=label))
    return rows + extra


Key = tuple[str, int]  # (problem, budget)
Cell = tuple[str, str]  # (config, grid)


def errors_by_cell(rows: list[Row], metric: str) -> dict[Cell, dict[Key, float]]:
    """(config, grid) -> (problem, budget) -> error (inf for a failed or non-finite solve)."""
    out: dict[Cell, dict[Key, float]] = defaultdict(dict)
    for r in rows:
        v = getattr(r, metric)
        out[(r.config, r.grid)][(r.problem, r.budget)] = v if math.isfinite(v) else math.inf
    return out


def _log_ratio(err: float, best: float) -> float:
    if not math.isfinite(best) or best <= 0:
        return 0.0  # nothing succeeded: no information
    if not math.isfinite(err):
        return math.log(RATIO_CAP)
    return min(math.log(err / best), math.log(RATIO_CAP))


def scores(
    tabs: list[dict[Cell, dict[Key, float]]], cells: list[Cell], keep: Callable[[Key], bool]
) -> dict[Cell, float]:
    """Score of every cell over the kept (problem, budget) pairs: the geometric mean of its
    error divided by the smallest error of all ``cells`` there, averaged in log space over
    the metrics of ``tabs`` (RMS and median)."""
    logs: dict[Cell, list[float]] = defaultdict(list)
    for tab in tabs:
        keys = [k for k in tab[cells[0]] if keep(k)]
        for k in keys:
            best = min(tab[c].get(k, math.inf) for c in cells)
            for c in cells:
                logs[c].append(_log_ratio(tab[c].get(k, math.inf), best))
    return {c: math.exp(sum(v) / len(v)) if v else math.nan for c, v in logs.items()}


def family_of(problem: str) -> str:
    return FAMILIES[problem.split("/")[0]]


def method_of(label: str) -> str:
    """Registry name of a configuration label (``"dpmpp_3m[lu,lof]"`` -> ``"dpmpp_3m"``)."""
    return label.split("[")[0]


def report(rows: list[Row], nfes: tuple[int, ...], meta: dict[str, Any]) -> str:
    rows = with_threshold_configs(rows)
    tabs = [errors_by_cell(rows, m) for m in ("rmse", "median_err")]
    grid_labels = [g[0] for g in GRIDS]
    configs = list(dict.fromkeys(r.config for r in rows))
    problems = list(dict.fromkeys(r.problem for r in rows))
    families = list(dict.fromkeys(family_of(p) for p in problems))
    sdes = list(dict.fromkeys(p.split("/")[0] for p in problems))

    def everywhere(k: Key) -> bool:
        return True

    def members(fam: str) -> str:
        return ", ".join(s for s in sdes if FAMILIES[s] == fam)

    def at(fam: str, n: int) -> Callable[[Key], bool]:
        return lambda k: family_of(k[0]) == fam and k[1] == n

    def in_family(fam: str) -> Callable[[Key], bool]:
        return lambda k: family_of(k[0]) == fam

    def in_sde(sde: str) -> Callable[[Key], bool]:
        return lambda k: k[0].split("/")[0] == sde

    md = [
        "# Time-grid sweep",
        "",
        f"Command: `{meta['command']}`; {meta['environment']}.",
        "",
        f"{len(problems)} problems (SDE/data: {', '.join(problems)}), budgets NFE "
        f"{list(nfes)}. Families: VP-type = {members('VP-type')} (alpha decays); VE-type = "
        f"{members('VE-type')} (alpha = 1).",
        "",
        "Score: geometric mean over problems and budgets of the error divided by the smallest "
        f"error reached there by any of the compared cells (ratios capped at {RATIO_CAP:g}), "
        "averaged in log space over the RMS and the median error over samples; 1.00 = always "
        "the best. Configurations: `[t]` / `[edm]` integration variables; `[full]`: "
        "`lower_order_final=False`, `[lof]`: `True`, `[lof<N]`: `None` with the rule for "
        "solves of fewer than N steps; `dpmpp_3m[exact|lu,...]`: the third-order coefficient.",
        "",
    ]

    # 1. grids, per configuration (normalised within the configuration)
    def grid_table(title: str, keep: Callable[[Key], bool]) -> None:
        md.extend(
            [
                f"## Grid scores per configuration, {title}",
                "",
                "| configuration | " + " | ".join(grid_labels) + " | best |",
                "|---|" + "---:|" * len(grid_labels) + "---|",
            ]
        )
        for c in configs:
            cells = [(c, g) for g in grid_labels]
            sc = scores(tabs, cells, keep)
            best = min(cells, key=lambda x: sc[x])
            txt = [f"**{sc[x]:.2f}**" if x == best else f"{sc[x]:.2f}" for x in cells]
            md.append(f"| {c} | " + " | ".join(txt) + f" | {best[1]} |")
        md.append("")

    grid_table("all problems", everywhere)
    for fam in families:
        grid_table(f"{fam} problems", in_family(fam))

    md += [
        "## Best grid per configuration and SDE",
        "",
        "| configuration | " + " | ".join(sdes) + " |",
        "|---|" + "---|" * len(sdes),
    ]
    for c in configs:
        cells = [(c, g) for g in grid_labels]
        best = []
        for s in sdes:
            sc = scores(tabs, cells, in_sde(s))
            b = min(cells, key=lambda x: sc[x])
            best.append(b[1])
        md.append(f"| {c} | " + " | ".join(best) + " |")
    md.append("")

    # 2. per method: the best (configuration, grid) over all its variants
    md += [
        "## Per method: best configuration and grid",
        "",
        "All variants of a method and all grids compared together (normalised by the best "
        "variant-and-grid on each problem and budget). `single`: the best single choice over "
        "all problems; per family: the best choice there, its score, and the score of the "
        "single choice there.",
        "",
        "| method | single choice (score) | "
        + " | ".join(f"{f}: best (score) / single" for f in families)
        + " |",
        "|---|---|" + "---|" * len(families),
    ]
    methods = list(dict.fromkeys(method_of(c) for c in configs))
    decisions: dict[str, dict[str, Cell]] = {}
    for m in methods:
        cells = [(c, g) for c in configs if method_of(c) == m for g in grid_labels]
        sc = scores(tabs, cells, everywhere)
        single = min(cells, key=lambda x: sc[x])
        row = [f"`{single[0]}` {single[1]} ({sc[single]:.2f})"]
        decisions[m] = {"single": single}
        for fam in families:
            sf = scores(tabs, cells, in_family(fam))
            bf = min(cells, key=lambda x: sf[x])
            decisions[m][fam] = bf
            row.append(f"`{bf[0]}` {bf[1]} ({sf[bf]:.2f}) / {sf[single]:.2f}")
        md.append(f"| {m} | " + " | ".join(row) + " |")
    md.append("")

    # 2b. the library's defaults: each method's default configuration on the named grids
    named = [g for g in grid_labels if g in NAMED_GRIDS]
    md += [
        "## Chosen defaults",
        "",
        "Each method in its default configuration (options chosen from the table above and "
        "the comparisons below), the named grids of `solvers.GRIDS` only (`karras7` is "
        '`"karras"`; rho = 3, 5, 10 are not selectable by name and are shown above for the '
        "sensitivity; the scores are those of the tables above): per family the named grid "
        "with the lowest score, its score, and the runner-up. "
        "`library`: what `solver.grid_for` returns for `sd.VPSDE()` / `sd.EDMSDE()` in this "
        "checkout. The Runge-Kutta / Adams methods in t (`[t]`) take, under VE-type SDEs, the "
        "VE-type choice of the same method in EDM variables (`[edm]`, shown): under EDM "
        "(t = sigma) the two are the same solve, and under VE in its own time (log sigma) no "
        "grid makes them usable (scores above 100 on the `ve` problems; use "
        "`solvers.EDMVariables` there), so those rows would only add noise to the choice.",
        "",
        "| method | configuration | VP-type: grid (score; next) | VE-type: grid (score; next) "
        "| library VP / VE | agrees |",
        "|---|---|---|---|---|---|",
    ]
    for m, c in DEFAULT_CONFIGS.items():
        if c not in configs:
            continue
        picks, cells = [], []
        for fam in families:
            chosen_on = c
            if fam == "VE-type" and c.endswith("[t]") and c[:-3] + "[edm]" in configs:
                chosen_on = c[:-3] + "[edm]"  # the same solve under EDM (see the text)
            sc = scores(tabs, [(chosen_on, g) for g in grid_labels], in_family(fam))
            ranked = sorted(named, key=lambda g: sc[(chosen_on, g)])
            picks.append(NAMED_GRIDS[ranked[0]])
            via = f" by `{chosen_on}`" if chosen_on != c else ""
            cells.append(
                f"{NAMED_GRIDS[ranked[0]]}{via} ({sc[(chosen_on, ranked[0])]:.2f}; "
                f"{NAMED_GRIDS[ranked[1]]} {sc[(chosen_on, ranked[1])]:.2f})"
            )
        lib = library_grids(m, c)
        agrees = "yes" if tuple(picks) == lib else "**no**"
        md.append(f"| {m} | `{c}` | " + " | ".join(cells) + f" | {lib[0]} / {lib[1]} | {agrees} |")
    md.append("")

    # 3. options, each configuration on its best grid of the family
    def compare(title: str, pairs: list[tuple[str, str]]) -> None:
        pairs = [(a, b) for a, b in pairs if a in configs and b in configs]
        if not pairs:
            return
        md.extend(
            [
                f"## {title}",
                "",
                "Geometric-mean error ratio A / B (RMS / median) over problems and budgets; "
                "each configuration on its own best grid of the family (in brackets); below "
                "1: A is more accurate.",
                "",
                "| A | B | "
                + " | ".join(families)
                + " | "
                + " | ".join(f"{f} NFE {n}" for f in families for n in nfes)
                + " |",
                "|---|---|" + "---:|" * (len(families) * (1 + len(nfes))),
            ]
        )
        for a, b in pairs:
            head, cells = [], []
            for fam in families:
                ga = _best_grid(tabs, a, grid_labels, in_family(fam))
                gb = _best_grid(tabs, b, grid_labels, in_family(fam))
                head.append(f"{fam}: {ga}/{gb}")
                cells.append(_pair(tabs, (a, ga), (b, gb), in_family(fam)))
            per_nfe = []
            for fam in families:
                ga = _best_grid(tabs, a, grid_labels, in_family(fam))
                gb = _best_grid(tabs, b, grid_labels, in_family(fam))
                for n in nfes:
                    per_nfe.append(_pair(tabs, (a, ga), (b, gb), at(fam, n)))
            md.append(f"| {a} | {b} ({'; '.join(head)}) | " + " | ".join(cells + per_nfe) + " |")
        md.append("")

    compare(
        "Integration variables: EDM variables (A) against t (B)",
        [
            (f"{m}[edm]", f"{m}[t]")
            for m in ("euler", "heun", "midpoint", "rk4", "ipndm", "ipndm_v")
        ],
    )
    compare(
        "DPM-Solver++(3M): exact coefficient (A) against the references' (B)",
        [
            ("dpmpp_3m[exact,full]", "dpmpp_3m[lu,full]"),
            ("dpmpp_3m[exact,lof]", "dpmpp_3m[lu,lof]"),
        ],
    )
    md += [
        "## Final-step rule per budget, on one grid",
        "",
        "Ratio `lower_order_final=True` / `False` (RMS / median) per budget, both on the "
        "grid in brackets; the rule helps where the ratio is below 1.",
        "",
        "| method | grid | family | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
        "|---|---|---|" + "---:|" * len(nfes),
    ]
    for base in ("dpmpp_2m[", "dpmpp_3m[exact,", "dpmpp_3m[lu,", "unipc[", "deis["):
        a, b = base + "lof]", base + "full]"
        if a not in configs:
            continue
        for fam in families:
            for g in dict.fromkeys(
                [
                    _best_grid(tabs, a, grid_labels, in_family(fam)),
                    _best_grid(tabs, b, grid_labels, in_family(fam)),
                ]
            ):
                cells = []
                for n in nfes:
                    cells.append(_pair(tabs, (a, g), (b, g), at(fam, n)))
                md.append(f"| {base.rstrip('[,')} | {g} | {fam} | " + " | ".join(cells) + " |")
    md.append("")

    # 4. orientation: typical errors of each method's per-family choice
    md += [
        "## Typical errors of the chosen configurations",
        "",
        "Median over the family's problems of the RMS endpoint error.",
        "",
        "| method | family | configuration (grid) | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
        "|---|---|---|" + "---:|" * len(nfes),
    ]
    rmse = tabs[0]
    for m in methods:
        for fam in families:
            c = decisions[m][fam]
            vals = []
            for n in nfes:
                v = sorted(e for (p, b), e in rmse[c].items() if b == n and family_of(p) == fam)
                vals.append(f"{v[len(v) // 2]:.2e}" if v else "–")
            md.append(f"| {m} | {fam} | `{c[0]}` ({c[1]}) | " + " | ".join(vals) + " |")
    return "\n".join(md) + "\n"


NAMED_GRIDS = {"uniform": "uniform", "quadratic": "quadratic", "logsnr": "logsnr"}
NAMED_GRIDS["karras7"] = "karras"
"""Sweep label -> name in ``solvers.GRIDS`` of the grids a default can be."""

DEFAULT_CONFIGS = {
    **{m: f"{m}[t]" for m in ("euler", "heun", "midpoint", "rk4", "ipndm", "ipndm_v")},
    **{f"{m} (EDM variables)": f"{m}[edm]" for m in ("euler", "heun", "midpoint", "rk4")},
    "ipndm (EDM variables)": "ipndm[edm]",
    "ipndm_v (EDM variables)": "ipndm_v[edm]",
    **{m: m for m in ("ddim", "dpm_solver_2", "dpm_solver_3", "dpmpp_2s", "plms")},
    "dpmpp_2m": "dpmpp_2m[lof]",
    "dpmpp_3m": "dpmpp_3m[lu,lof]",
    "unipc": "unipc[lof]",
    "deis": "deis[full]",
}
"""Method -> the sweep configuration that is its default in the library (the options:
integration variable ``t``, ``lower_order_final=True`` for DPM-Solver++ and UniPC, ``False``
for DEIS, ``coefficient="lu"`` for DPM-Solver++(3M)); EDM-variable rows for
``solvers.EDMVariables``."""


def plot_scores(rows: list[Row], path: Path) -> None:
    """Heat map of the grid scores of every method's default configuration (rows) on every
    grid (columns), one panel per family; the chosen default (a named grid) is boxed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle

    tabs = [errors_by_cell(rows, m) for m in ("rmse", "median_err")]
    grid_labels = [g[0] for g in GRIDS]
    configs = {m: c for m, c in DEFAULT_CONFIGS.items() if any(r.config == c for r in rows)}
    families = list(dict.fromkeys(family_of(r.problem) for r in rows))
    fig, axes = plt.subplots(1, len(families), figsize=(6.5 * len(families), 9), sharey=True)
    for ax, fam in zip(axes, families):
        data, chosen = [], []
        for c in configs.values():
            sc = scores(tabs, [(c, g) for g in grid_labels], lambda k, f=fam: family_of(k[0]) == f)
            data.append([sc[(c, g)] for g in grid_labels])
            named = [g for g in grid_labels if g in NAMED_GRIDS]
            chosen.append(grid_labels.index(min(named, key=lambda g: sc[(c, g)])))
        img = ax.imshow(data, cmap="viridis_r", norm=LogNorm(vmin=1.0, vmax=20.0), aspect="auto")
        for i, row in enumerate(data):
            for j, v in enumerate(row):
                ax.text(
                    j,
                    i,
                    f"{v:.2f}" if v < 100 else f"{v:.0f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if v > 4 else "black",
                )
            ax.add_patch(Rectangle((chosen[i] - 0.5, i - 0.5), 1, 1, fill=False, lw=2, ec="red"))
        ax.set_xticks(range(len(grid_labels)), grid_labels, rotation=45, ha="right")
        ax.set_yticks(range(len(configs)), list(configs))
        ax.set_title(f"{fam} SDEs")
    fig.colorbar(img, ax=axes, shrink=0.6, label="score (1 = always the best grid)")
    fig.suptitle(
        "Grid score of each method's default configuration (geometric mean of error / best "
        "grid's error);\nred box: the default (named grids only)",
        fontsize=11,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


def library_grids(method: str, config: str) -> tuple[str, str]:
    """``grid_for`` of the library's default instance (VP: ``sd.VPSDE()``, VE: ``sd.EDMSDE()``)."""
    name = method.split(" ")[0]
    solver = solvers.get_solver(name)
    if config.endswith("[edm]"):
        solver = solvers.EDMVariables(solver)
    vp, ve = sd.VPSDE(), sd.EDMSDE()
    return solver.grid_for(vp, vp.T, vp.t_min), solver.grid_for(ve, ve.T, ve.t_min)


def _best_grid(
    tabs: list[dict[Cell, dict[Key, float]]],
    config: str,
    grid_labels: list[str],
    keep: Callable[[Key], bool],
) -> str:
    cells = [(config, g) for g in grid_labels]
    sc = scores(tabs, cells, keep)
    return min(cells, key=lambda x: sc[x])[1]


def _pair(
    tabs: list[dict[Cell, dict[Key, float]]], a: Cell, b: Cell, keep: Callable[[Key], bool]
) -> str:
    """``"R / M"``: geometric-mean error ratio a / b on the RMS (R) and median (M) error."""
    out = []
    for tab in tabs:
        logs = []
        for k, x in tab[a].items():
            if not keep(k) or k not in tab[b]:
                continue
            y = tab[b][k]
            if not (math.isfinite(x) or math.isfinite(y)):
                continue
            cap = math.log(RATIO_CAP)
            lr = cap if not math.isfinite(x) else -cap if not math.isfinite(y) else math.log(x / y)
            logs.append(max(-cap, min(cap, lr)))
        out.append(f"{math.exp(sum(logs) / len(logs)):.2f}" if logs else "–")
    return " / ".join(out)


LARGE_NFES = (100, 200)


def _final_step_config(label: str) -> bool:
    return label.endswith(("lof]", "full]"))


def report_final_step(rows: list[Row], nfes: tuple[int, ...], meta: dict[str, Any]) -> str:
    """The ``--large-nfe`` tables: lower_order_final=True / False per grid, family, budget."""
    tabs = [errors_by_cell(rows, m) for m in ("rmse", "median_err")]
    grids = list(dict.fromkeys(r.grid for r in rows))
    problems = list(dict.fromkeys(r.problem for r in rows))
    families = list(dict.fromkeys(family_of(p) for p in problems))
    configs = list(dict.fromkeys(r.config for r in rows))
    md = [
        "# Final-step rule at large budgets",
        "",
        f"Command: `{meta['command']}`; {meta['environment']}.",
        "",
        f"{len(problems)} problems ({', '.join(problems)}). Cells: geometric-mean error ratio "
        "`lower_order_final=True` / `False` (RMS / median) over the family's problems; below "
        "1: lowering the final orders helps.",
        "",
        "| method | grid | family | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
        "|---|---|---|" + "---:|" * len(nfes),
    ]
    for a in (c for c in configs if c.endswith("lof]")):
        b = a[: -len("lof]")] + "full]"
        for g in grids:
            for fam in families:
                cells = []
                for n in nfes:

                    def keep(k: Key, fam: str = fam, n: int = n) -> bool:
                        return family_of(k[0]) == fam and k[1] == n

                    cells.append(_pair(tabs, (a, g), (b, g), keep))
                md.append(
                    f"| {a[: -len('lof]')].rstrip('[,')} | {g} | {fam} | "
                    + " | ".join(cells)
                    + " |"
                )
    return "\n".join(md) + "\n"


def environment() -> str:
    cpu = cpu_name()
    return (
        f"CPU {cpu}, torch {torch.__version__} ({torch.get_num_threads()} thread), "
        f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2-D problems, NFE 5/10/20")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--rerender", action="store_true", help="only re-write the tables")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--large-nfe",
        action="store_true",
        help="only the final-step rule (lower_order_final) at NFE 100 and 200 (~10 min)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    stem = "grid_sweep_quick" if args.quick else "grid_sweep"
    nfes = QUICK_NFES if args.quick else FULL_NFES
    out_csv = args.out / f"{stem}.csv"
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f} s] {msg}", flush=True)

    datasets = ("ring2", "grid2") if args.quick else tuple(DATASETS)
    if args.large_nfe:  # the final-step rule at 100 and 200 evaluations, 2-D and 16-D data
        stem, nfes = "grid_sweep_large_nfe", LARGE_NFES
        out_csv = args.out / f"{stem}.csv"
        datasets = tuple(d for d in DATASETS if not d.endswith("64"))
    problems = [(d, s) for d in datasets for s in SDES]
    if not args.rerender:
        if args.large_nfe:
            grids = tuple(g for g in GRIDS if g[0] in ("quadratic", "logsnr", "karras7"))
            sweep(problems, nfes, out_csv, args.resume, log, _final_step_config, grids)
        else:
            sweep(problems, nfes, out_csv, args.resume, log)
    rows = read_rows(out_csv)
    flags = " --quick" if args.quick else " --large-nfe" if args.large_nfe else ""
    meta = {"command": "python bench/grid_sweep.py" + flags, "environment": environment()}
    text = report_final_step(rows, nfes, meta) if args.large_nfe else report(rows, nfes, meta)
    (args.out / f"{stem}.md").write_text(text)
    if not args.large_nfe:
        plot_scores(rows, args.out / f"{stem}.png")
    log(f"wrote {out_csv} and {args.out / stem}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
