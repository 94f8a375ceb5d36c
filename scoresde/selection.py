"""Choosing a solver: compare every method on a model, recommend one per budget, tune time grids.

Three tools answer "which sampler, with which steps, for my model and my budget?":

* :func:`compare_solvers` runs every method x time grid x budget from the same initial noise
  and measures, for each run, the endpoint error against a tight adaptive reference solve of
  the probability-flow ODE (deterministic methods only: a stochastic sampler does not follow
  the ODE), a distributional distance (sliced W2 and MMD, :mod:`scoresde.metrics`) against
  held-out data or the reference samples (every method), the wall time and the number of
  network evaluations actually used. The result, a :class:`SolverReport`, holds the Pareto
  front of error against evaluations used and one :class:`Recommendation` per budget: the
  Pareto-optimal run of least error among those that fit the budget, with the reason.
* :func:`tune_grid` optimises the time grid of one deterministic method at one budget for one
  model: it minimises the endpoint error against the reference on a calibration batch and
  reports the error on held-out noise. This is the direct version of the step-schedule
  optimisation of "Align Your Steps" (Sabour, Fidler & Kreis 2024), which minimises a bound
  on the KL divergence between the discretised and the true process, and of optimised time
  steps for fast ODE solvers (Xue et al. 2024, "Accelerating diffusion sampling with
  optimized time steps", which match the solver's steps to the exact solution step by step);
  differentiating through the sampler to choose its steps is the idea of Watson et al. 2022
  ("Learning fast samplers for diffusion models by differentiating through sample quality");
  Watson et al. 2021 ("Learning to efficiently sample from diffusion probabilistic models")
  choose the steps by dynamic programming on the ELBO instead.
* :func:`builtin_oracle` gives named Gaussian-mixture problems with exact scores (``gmm2d``,
  ``gmm64d``, ``rings2d``) under a VP or an EDM SDE, the problems of ``scoresde bench
  oracle:NAME`` and of ``bench/sampler_accuracy.py``.

The reference solve runs in EDM variables (Karras et al. 2022): ``y = x / alpha`` against
``s = sigma / alpha``, where the probability-flow ODE reads ``dy/ds = (y - x0(alpha y, t(s)))
/ s``. It is the same ODE as in the model's time t, in a variable in which it is smooth for
every schedule: the DDPM chain's ``log alpha(t)`` is piecewise linear with 1000 kinks, on
which DOP853 at rtol 1e-10 needs ~135,000 evaluations in t but ~1,000 in s.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

import solvers
from scoresde.metrics import median_distance
from scoresde.oracle import GaussianMixture, GaussianMixtureOracle
from scoresde.reverse import solver_term
from scoresde.sampling import SamplerModel, resolve_solver, sample
from scoresde.schedules import EDMSDE, VPSDE
from scoresde.sde import SDE
from solvers.broadcast import append_dims
from solvers.registry import adaptive_ode_names

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "compare_solvers",
    "SolverReport",
    "SolverRun",
    "Recommendation",
    "ReferenceInfo",
    "pareto_front",
    "recommend",
    "tune_grid",
    "TunedGrid",
    "GridScore",
    "load_grid",
    "builtin_oracle",
    "OracleProblem",
    "ORACLES",
    "ORACLE_SDES",
    "METRICS",
    "GRID_NAMES",
    "selectable_methods",
]

_F64 = torch.float64
METRICS: tuple[str, ...] = ("rmse", "median_err", "sliced_w2", "mmd")
"""Metrics a report ranks by: endpoint RMS / median error (deterministic methods), sliced W2
and MMD (every method)."""
_ERROR_METRICS = ("rmse", "median_err")
_METRIC_LABEL = {
    "rmse": "RMS endpoint error",
    "median_err": "median endpoint error",
    "sliced_w2": "sliced W2",
    "mmd": "MMD",
}
GRID_NAMES: tuple[str, ...] = ("uniform", "quadratic", "logsnr", "karras")
"""The named time grids a report compares (``solvers.GRIDS`` without aliases); ``"default"``
stands for each method's own default grid."""
_OBJECTIVES = ("rms", "mean")
_MAX_TARGET = 5000  # rows of the data the distances use (an m x m kernel matrix is cached)
_SPACES = ("logsnr", "t")
_OPTIMIZERS = ("auto", "lbfgs", "nelder-mead")


# =========================================================================== validation


def _names(value: object, name: str) -> list[str]:
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, Sequence):
        items = list(value)
    else:
        raise TypeError(f"{name} must be a name or a sequence of names, got {type(value).__name__}")
    if not items:
        raise ValueError(f"{name} must name at least one entry, got {value!r}")
    for v in items:
        if not isinstance(v, str):
            raise TypeError(f"{name} must contain names (str), got {v!r}")
    return list(dict.fromkeys(items))


def selectable_methods(kind: str = "all") -> list[str]:
    """Registry names a report can compare: every fixed-step method (adaptive methods choose
    their own steps and take no grid). ``kind``: ``"all"``, ``"ode"`` or ``"sde"``."""
    if kind not in ("all", "ode", "sde"):
        raise ValueError(f"kind must be 'all', 'ode' or 'sde', got {kind!r}")
    return [
        info.name
        for info in solvers.solvers_available()
        if not solvers.SOLVERS[info.name].adaptive and kind in ("all", info.kind)
    ]


def _check_methods(methods: str | Sequence[str]) -> list[str]:
    valid = selectable_methods()
    if isinstance(methods, str) and methods in ("all", "ode", "sde"):
        return selectable_methods(methods)
    out = _names(methods, "methods")
    for m in out:
        if m not in valid:
            extra = ""
            if m in solvers.SOLVERS:
                extra = " (adaptive methods choose their own steps: they take no budget or grid)"
            raise ValueError(
                f"methods: unknown or unsupported method {m!r}{extra}; valid: 'all', 'ode', "
                f"'sde' or names from {', '.join(valid)}"
            )
    return out


def _check_grids(grids: str | Sequence[str]) -> list[str]:
    if isinstance(grids, str) and grids == "all":
        return list(GRID_NAMES)
    out = _names(grids, "grids")
    valid = ("default", *GRID_NAMES)
    for g in out:
        if g not in valid:
            raise ValueError(f"grids: unknown grid {g!r}; valid: 'all' or names from {valid}")
    return out


def _check_budgets(nfe: int | Sequence[int]) -> tuple[int, ...]:
    items = [nfe] if isinstance(nfe, int) else nfe
    if not isinstance(items, Sequence) or isinstance(items, str) or not items:
        raise TypeError(f"nfe must be an int or a non-empty sequence of ints, got {nfe!r}")
    for b in items:
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ValueError(f"nfe must contain ints >= 1 (evaluation budgets), got {b!r}")
    return tuple(sorted(set(items)))


def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return metric


def _check_count(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {name}={value!r}")
    return value


def _placement(model: Any) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of the model's network parameters (float64 on the CPU for oracles)."""
    net = getattr(model, "net", None)
    if isinstance(net, torch.nn.Module):
        p = next(net.parameters(), None)
        if p is not None and p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), _F64


def _sample_shape(model: Any, shape: Sequence[int] | None, data: Tensor | None) -> tuple[int, ...]:
    if shape is not None:
        out = tuple(shape)
        if not out or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in out):
            raise ValueError(f"shape must be the shape of one sample (ints >= 1), got {shape!r}")
        return out
    if isinstance(model, GaussianMixtureOracle):
        return (model.gmm.dim,)
    if data is not None:
        return tuple(data.shape[1:])
    raise ValueError(
        "shape (the shape of one sample, e.g. (2,) or (1, 8, 8)) is required unless the model "
        "is a GaussianMixtureOracle or data is given"
    )


def _default_grid(method: str | solvers.Solver[Any, Any], sde: SDE) -> str:
    """The grid ``sd.sample`` uses for ``method`` on ``sde`` when given none."""
    solver = solvers.get_solver(method) if isinstance(method, str) else method
    return solver.grid_for(sde, sde.T, sde.t_min)


def _check_model(model: object) -> SamplerModel:
    for attr in ("sde", "score", "x0"):
        if not hasattr(model, attr):
            raise TypeError(
                f"model must have the ScoreModel interface (sde, score, x0); "
                f"{type(model).__name__} has no {attr!r}"
            )
    if not isinstance(model.sde, SDE):  # type: ignore[attr-defined]
        raise TypeError(f"model.sde must be a scoresde.SDE, got {type(model.sde).__name__}")  # type: ignore[attr-defined]
    return model  # type: ignore[return-value]


# =========================================================================== reference


class _EDMVariables:
    """A model's probability-flow ODE in EDM variables ``y = x / alpha``, ``s = sigma / alpha``.

    The wrapper is a score model for ``sd.EDMSDE(sigma_min=s(t_min), sigma_max=s(T))``
    (``alpha = 1``, ``sigma = s``): ``x0(y, s) = model.x0(alpha(t) y, t)`` with ``t =
    t_from_log_snr(-2 log s)``, and ``score = (x0 - y) / s^2``; its PF-ODE ``dy/ds = (y - x0)
    / s`` is the model's PF-ODE after the change of variables (Karras et al. 2022, sec. 4).
    """

    def __init__(self, model: SamplerModel) -> None:
        self.inner = model
        base = model.sde
        lam = base.log_snr(torch.tensor([base.t_min, base.T], dtype=_F64)).to(_F64)
        s_min, s_max = (float(v) for v in torch.exp(-0.5 * lam))
        self.sde: SDE = EDMSDE(sigma_min=s_min, sigma_max=s_max)

    def _time(self, s: Any) -> tuple[Tensor, Tensor]:
        s64 = torch.as_tensor(s, dtype=_F64)
        base = self.inner.sde
        t = base.t_from_log_snr(-2.0 * torch.log(s64)).to(_F64)
        return s64, t

    def x0(self, y: Tensor, s: Any) -> Tensor:
        s64, t = self._time(s)
        alpha = append_dims(self.inner.sde.alpha(t).to(_F64), y.ndim).to(y.device)
        return self.inner.x0((y.to(_F64) * alpha).to(y.dtype), t.to(y.device))

    def score(self, y: Tensor, s: Any) -> Tensor:
        s64, _ = self._time(s)
        s_b = append_dims(s64, y.ndim).to(device=y.device, dtype=y.dtype)
        return (self.x0(y, s) - y) / s_b**2


def _reference_solver(
    reference: str | solvers.Solver[Any, Any], tol: float | None, dtype: torch.dtype
) -> tuple[solvers.Solver[Any, Any], str, float, float]:
    """The reference solver, its name, rtol and atol; ``tol`` None: 1e-10 for a float64
    model, 1e-5 otherwise."""
    if tol is None:
        tol = 1e-10 if dtype == _F64 else 1e-5
    if isinstance(reference, str):
        cls = solvers.SOLVERS.get(reference)
        ode_adaptive = adaptive_ode_names()
        if cls is None or not cls.adaptive or cls.stochastic:
            raise ValueError(
                f"reference must be an adaptive ODE method, got {reference!r}; valid: "
                f"{', '.join(ode_adaptive)} (or a configured solvers.Solver instance)"
            )
        solver = solvers.get_solver(reference, rtol=tol, atol=tol)
        return solver, reference, tol, tol
    if isinstance(reference, solvers.Solver):
        if not type(reference).adaptive or type(reference).stochastic:
            raise ValueError(
                f"reference must be an adaptive ODE solver, got {type(reference).__name__}"
            )
        _, name = resolve_solver(reference)
        return reference, name, float(reference.rtol), float(reference.atol)  # type: ignore[attr-defined]
    raise TypeError(f"reference must be a method name or a solvers.Solver, got {reference!r}")


def _reference_solve(
    model: SamplerModel, x_t: Tensor, solver: solvers.Solver[Any, Any]
) -> tuple[Tensor, int, float]:
    """Solve the PF-ODE from ``x_t`` (at T) to t_min in EDM variables: (x, nfe, seconds)."""
    wrapped = _EDMVariables(model)
    sde = model.sde
    a_t = float(sde.alpha(torch.tensor(sde.T, dtype=_F64)))
    a_min = float(sde.alpha(torch.tensor(sde.t_min, dtype=_F64)))
    t0 = time.perf_counter()
    res = sample(wrapped, solver, x_init=x_t / a_t)
    x = res.x * a_min
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    return x, res.nfe, time.perf_counter() - t0


# =========================================================================== errors


def _per_sample_error(x: Tensor, ref: Tensor) -> Tensor:
    """e_i = |x_i - ref_i| / sqrt(D) in float64, shape (n,)."""
    d = (x.to(_F64) - ref.to(_F64)).reshape(x.shape[0], -1)
    return d.pow(2).mean(1).sqrt()


@dataclass(frozen=True)
class GridScore:
    """Endpoint error of one grid on one batch.

    Attributes:
        rmse: ``sqrt(mean_i e_i^2)`` with ``e_i = |x_i - x_ref,i| / sqrt(D)``.
        median_err: ``median_i e_i``, the error of a typical sample.
    """

    rmse: float
    median_err: float


def _score(x: Tensor, ref: Tensor) -> GridScore:
    if not bool(torch.isfinite(x).all()):
        return GridScore(math.inf, math.inf)
    e = _per_sample_error(x, ref)
    return GridScore(float(e.pow(2).mean().sqrt()), float(e.median()))


# =========================================================================== report types


@dataclass(frozen=True)
class SolverRun:
    """One (method, grid, budget) run of :func:`compare_solvers`.

    Attributes:
        method: registry name.
        kind: ``"ode"`` (deterministic) or ``"sde"`` (stochastic).
        grid: the grid's name (``"uniform"``, ``"quadratic"``, ``"logsnr"``, ``"karras"``, or
            ``"tuned"`` for a grid from :func:`tune_grid`).
        default_grid: whether ``grid`` is the method's default.
        budget: the evaluation budget the method was given.
        nfe: network evaluations actually used (<= budget; 0 when the run failed).
        rmse, median_err, max_err: RMS / median / largest per-sample endpoint error against
            the reference, ``e_i = |x_i - x_ref,i| / sqrt(D)`` (None for stochastic methods and
            failed runs; ``inf`` when the samples are not finite).
        sliced_w2, mmd: distances of the samples to the held-out data (or to the reference
            samples when no data was given); None when the run failed.
        seconds: wall time of the solve.
        note: why a run failed, or how it was made.
    """

    method: str
    kind: str
    grid: str
    default_grid: bool
    budget: int
    nfe: int
    rmse: float | None
    median_err: float | None
    max_err: float | None
    sliced_w2: float | None
    mmd: float | None
    seconds: float | None
    note: str = ""

    @property
    def label(self) -> str:
        """``method@grid``."""
        return f"{self.method}@{self.grid}"

    def value(self, metric: str) -> float | None:
        """This run's value of ``metric`` (None when not measured)."""
        v: float | None = getattr(self, _check_metric(metric))
        return v


@dataclass(frozen=True)
class Recommendation:
    """The run to use at one budget, and why.

    Attributes:
        budget: the evaluation budget.
        method, grid: the recommended method and time grid.
        nfe: evaluations it actually uses (<= budget).
        metric: the metric it was chosen by; value: its value.
        reason: one sentence: what it beat, by how much, and on what.
    """

    budget: int
    method: str
    grid: str
    nfe: int
    metric: str
    value: float
    reason: str


@dataclass(frozen=True)
class ReferenceInfo:
    """The reference solve of a report.

    Attributes:
        method, rtol, atol: the adaptive solver and its tolerances.
        nfe: evaluations of the reference solve; seconds: its wall time.
        variables: ``"edm"`` (solved in ``x / alpha`` against ``sigma / alpha``).
        sliced_w2, mmd: distances of the reference samples themselves to the data (None
            without data): the floor a sampler that follows the PF-ODE exactly reaches.
    """

    method: str
    rtol: float
    atol: float
    nfe: int
    seconds: float
    variables: str = "edm"
    sliced_w2: float | None = None
    mmd: float | None = None


def _metric_value(run: SolverRun, metric: str) -> float | None:
    v = run.value(metric)
    if v is None or math.isnan(v) or run.nfe <= 0:
        return None
    return v


def pareto_front(runs: Sequence[SolverRun], metric: str = "rmse") -> tuple[SolverRun, ...]:
    """The runs that no other run beats on both ``metric`` and evaluations actually used.

    Sorted by NFE used (then the metric, wall time, label), a run is on the front when its
    value is strictly below every value before it: no run uses at most as many evaluations
    with at most the same error, except runs listed after it by the tie-breaks (ties in NFE
    and value keep the faster run). Runs without a finite value are left out.

    Returns:
        The front in increasing NFE (and decreasing value).
    """
    _check_metric(metric)
    cands = []
    for r in runs:
        v = _metric_value(r, metric)
        if v is not None and math.isfinite(v):
            cands.append((r.nfe, v, r.seconds if r.seconds is not None else math.inf, r.label, r))
    cands.sort(key=lambda c: c[:4])
    front: list[SolverRun] = []
    best = math.inf
    for _, v, _, _, r in cands:
        if v < best:
            front.append(r)
            best = v
    return tuple(front)


def recommend(
    runs: Sequence[SolverRun], budget: int, metric: str = "rmse"
) -> Recommendation | None:
    """The Pareto-optimal run of least ``metric`` among those using at most ``budget``
    evaluations (a run made for a smaller budget counts too), with the reason; None when no
    run fits."""
    front = [r for r in pareto_front(runs, metric) if r.nfe <= budget]
    if not front:
        return None
    best = front[-1]
    value = _metric_value(best, metric)
    assert value is not None
    fit = [
        r for r in runs if r.nfe > 0 and r.nfe <= budget and _metric_value(r, metric) is not None
    ]
    label = _METRIC_LABEL[metric]
    others: dict[str, tuple[float, SolverRun]] = {}
    for r in fit:
        v = _metric_value(r, metric)
        assert v is not None
        if r.method != best.method and (r.method not in others or v < others[r.method][0]):
            others[r.method] = (v, r)
    text = (
        f"lowest {label} ({value:.3g}) of the {len(fit)} runs that fit {budget} evaluations; "
        f"{best.method} on the {best.grid} grid uses {best.nfe}"
    )
    if others:
        v2, r2 = min(others.values(), key=lambda o: o[0])
        ratio = v2 / value if value > 0 else math.inf
        text += f"; the next method, {r2.method} ({r2.grid}), is {ratio:.2f}x worse ({v2:.3g})"
    default = [
        r
        for r in fit
        if r.method == best.method and r.default_grid and _metric_value(r, metric) is not None
    ]
    if not best.default_grid and default:
        d = min(default, key=lambda r: _metric_value(r, metric) or math.inf)
        dv = _metric_value(d, metric)
        assert dv is not None
        text += f"; its default grid ({d.grid}) gives {dv:.3g}"
    return Recommendation(budget, best.method, best.grid, best.nfe, metric, value, text + ".")


# =========================================================================== tuned grids


@dataclass(frozen=True)
class TunedGrid:
    """A time grid tuned for one model, method and budget by :func:`tune_grid`.

    Attributes:
        method: registry name of the (deterministic) method.
        nfe: the budget; ``steps`` steps whose cost fits it.
        grid: the tuned grid, strictly decreasing from ``T`` to ``t_min`` (float64 values).
        start_grid: the grid the optimisation started from; start: its name (or "user").
        sde: ``repr`` of the model's SDE; t_min, T: its time interval.
        space: ``"logsnr"`` or ``"t"``, where the increments were parametrised.
        objective: ``"rms"`` or ``"mean"`` (of the per-sample endpoint error).
        calibration_start, calibration_tuned: the objective on the calibration batch, for the
            start and the tuned grid (tuned <= start, guaranteed).
        held_out_start, held_out_tuned: :class:`GridScore` of both grids on held-out noise.
        n_calibration, n_held_out: the batch sizes.
        optimizer: ``"lbfgs"`` (gradients through the solver) or ``"nelder-mead"``.
        evaluations: solves of the calibration batch in all: the start, the gradient check
            (optimizer "auto": 5), the optimiser's budget and the final re-evaluation;
            seconds: wall time of the optimisation.
    """

    method: str
    nfe: int
    grid: tuple[float, ...]
    start_grid: tuple[float, ...]
    start: str
    sde: str
    t_min: float
    T: float
    space: str
    objective: str
    calibration_start: float
    calibration_tuned: float
    held_out_start: GridScore
    held_out_tuned: GridScore
    n_calibration: int
    n_held_out: int
    optimizer: str
    evaluations: int
    seconds: float

    @property
    def ts(self) -> Tensor:
        """The grid as a float64 tensor, ready for ``sd.sample(..., grid=tuned.ts)``."""
        return torch.tensor(self.grid, dtype=_F64)

    @property
    def steps(self) -> int:
        return len(self.grid) - 1

    @property
    def held_out_gain(self) -> float:
        """Held-out RMS error of the start grid over that of the tuned grid (> 1: better)."""
        t = self.held_out_tuned.rmse
        return self.held_out_start.rmse / t if t > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        """This result as plain JSON-serialisable data (read back by :meth:`from_dict`)."""
        d = asdict(self)
        d["grid"] = list(self.grid)
        d["start_grid"] = list(self.start_grid)
        return {"format": "scoresde.TunedGrid", "version": 1, **d}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TunedGrid:
        """The result written by :meth:`to_dict`."""
        if d.get("format") != "scoresde.TunedGrid":
            raise ValueError(f"not a scoresde.TunedGrid record (format={d.get('format')!r})")
        kw = {f.name: d[f.name] for f in fields(cls)}
        kw["grid"] = tuple(float(v) for v in kw["grid"])
        kw["start_grid"] = tuple(float(v) for v in kw["start_grid"])
        kw["held_out_start"] = GridScore(**kw["held_out_start"])
        kw["held_out_tuned"] = GridScore(**kw["held_out_tuned"])
        return cls(**kw)

    def save(self, path: str | Path) -> Path:
        """Write the grid to ``path``: ``.json`` (values as exact decimal float64 reprs) or
        ``.safetensors`` (float64 tensors ``grid`` and ``start_grid``, the rest as metadata).
        Read back with :meth:`load` or :func:`load_grid`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".json":
            path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        elif path.suffix == ".safetensors":
            from safetensors.torch import save_file

            meta = self.to_dict()
            tensors = {"grid": self.ts, "start_grid": torch.tensor(self.start_grid, dtype=_F64)}
            del meta["grid"], meta["start_grid"]
            save_file(tensors, str(path), metadata={"tuned_grid": json.dumps(meta)})
        else:
            raise ValueError(f"path must end in .json or .safetensors, got {str(path)!r}")
        return path

    @classmethod
    def load(cls, path: str | Path) -> TunedGrid:
        """Read a grid written by :meth:`save` (``.json`` or ``.safetensors``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no grid file at {str(path)!r}")
        if path.suffix == ".json":
            try:
                d = json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: not a JSON grid file ({err})") from None
            return cls.from_dict(d)
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if "tuned_grid" not in meta:
                    raise ValueError(f"{path}: no 'tuned_grid' metadata (not a tuned grid file)")
                d = json.loads(meta["tuned_grid"])
                d["grid"] = f.get_tensor("grid").tolist()
                d["start_grid"] = f.get_tensor("start_grid").tolist()
            return cls.from_dict(d)
        raise ValueError(f"path must end in .json or .safetensors, got {str(path)!r}")


def load_grid(path: str | Path) -> Tensor:
    """The float64 grid tensor of a saved :class:`TunedGrid` (``.json`` or ``.safetensors``),
    for ``sd.sample(model, method, nfe, grid=sd.load_grid(path))``; ``sd.sample`` also takes
    the path itself as ``grid``."""
    return TunedGrid.load(path).ts


# =========================================================================== the report


def _run_from_dict(d: Mapping[str, Any]) -> SolverRun:
    return SolverRun(**{f.name: d[f.name] for f in fields(SolverRun)})


@dataclass(frozen=True)
class SolverReport:
    """The result of :func:`compare_solvers`.

    Attributes:
        runs: every :class:`SolverRun` (method x grid x budget, then tuned grids).
        budgets: the budgets compared.
        metric: the metric the Pareto front and the recommendations use.
        recommendations: one :class:`Recommendation` per budget (budgets where no run fits
            are left out).
        reference: the reference solve (:class:`ReferenceInfo`).
        model, sde: ``repr`` of the model and of its SDE.
        shape: shape of one sample; n: samples per run.
        distance_to: ``"data"`` (held-out data, n_data samples) or ``"reference"``.
        n_data: size of the sample the distances compare against (at most 5000 rows of
            the data).
        device, dtype: where and in which dtype the samples were drawn.
        seconds: wall time of the whole comparison.
        tuned: the grids tuned for the report (:class:`TunedGrid`), evaluated on the report's
            noise (held out from their calibration batch); their runs have ``grid="tuned"``.
    """

    runs: tuple[SolverRun, ...]
    budgets: tuple[int, ...]
    metric: str
    recommendations: tuple[Recommendation, ...]
    reference: ReferenceInfo
    model: str
    sde: str
    shape: tuple[int, ...]
    n: int
    distance_to: str
    n_data: int
    device: str
    dtype: str
    seconds: float
    tuned: tuple[TunedGrid, ...] = ()

    # ------------------------------------------------------------------ queries
    def pareto_front(self, metric: str | None = None) -> tuple[SolverRun, ...]:
        """:func:`pareto_front` of the runs (default: the report's metric)."""
        return pareto_front(self.runs, metric or self.metric)

    def recommend(self, budget: int, metric: str | None = None) -> Recommendation | None:
        """:func:`recommend` at any budget (default: the report's metric)."""
        return recommend(self.runs, budget, metric or self.metric)

    def recommendation(self, budget: int) -> Recommendation:
        """The stored recommendation at one of the report's budgets."""
        for r in self.recommendations:
            if r.budget == budget:
                return r
        raise ValueError(
            f"budget must be one with a recommendation: {[r.budget for r in self.recommendations]}"
            f", got {budget!r}"
        )

    def run(self, method: str, grid: str, budget: int) -> SolverRun:
        """The run of ``method`` on ``grid`` at ``budget``."""
        for r in self.runs:
            if (r.method, r.grid, r.budget) == (method, grid, budget):
                return r
        raise ValueError(f"no run ({method!r}, {grid!r}, {budget!r}) in this report")

    # ------------------------------------------------------------------ serialisation
    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per run (the fields of :class:`SolverRun`), plus ``pareto`` (on the front
        of the report's metric) and ``recommended_for`` (budgets, ``;``-separated)."""
        front = {id(r) for r in self.pareto_front()}
        rows = []
        for r in self.runs:
            d = asdict(r)
            d["pareto"] = id(r) in front
            # the front holds one run per (method, grid, NFE used): the one recommended
            picked = [
                c.budget
                for c in self.recommendations
                if id(r) in front and (c.method, c.grid, c.nfe) == (r.method, r.grid, r.nfe)
            ]
            d["recommended_for"] = ";".join(str(b) for b in picked)
            rows.append(d)
        return rows

    def to_csv(self, path: str | Path | None = None) -> str:
        """The rows of :meth:`to_rows` as CSV (written to ``path`` when given)."""
        rows = self.to_rows()
        buf = io.StringIO()
        w = csv.DictWriter(
            buf, fieldnames=list(rows[0]) if rows else ["method"], lineterminator="\n"
        )
        w.writeheader()
        for row in rows:
            w.writerow({k: "" if v is None else v for k, v in row.items()})
        text = buf.getvalue()
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
        return text

    def to_dict(self) -> dict[str, Any]:
        """This report as plain JSON-serialisable data (read back by :meth:`from_dict`)."""
        return {
            "format": "scoresde.SolverReport",
            "version": 1,
            "runs": [asdict(r) for r in self.runs],
            "budgets": list(self.budgets),
            "metric": self.metric,
            "recommendations": [asdict(r) for r in self.recommendations],
            "reference": asdict(self.reference),
            "model": self.model,
            "sde": self.sde,
            "shape": list(self.shape),
            "n": self.n,
            "distance_to": self.distance_to,
            "n_data": self.n_data,
            "device": self.device,
            "dtype": self.dtype,
            "seconds": self.seconds,
            "tuned": [t.to_dict() for t in self.tuned],
        }

    def to_json(self, path: str | Path | None = None) -> str:
        """The whole report as JSON (``inf`` as ``Infinity``); :meth:`from_json` reads it
        back into an equal report. Written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=1) + "\n"
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SolverReport:
        """The report written by :meth:`to_dict`."""
        if d.get("format") != "scoresde.SolverReport":
            raise ValueError(f"not a scoresde.SolverReport record (format={d.get('format')!r})")
        return cls(
            runs=tuple(_run_from_dict(r) for r in d["runs"]),
            budgets=tuple(d["budgets"]),
            metric=d["metric"],
            recommendations=tuple(Recommendation(**r) for r in d["recommendations"]),
            reference=ReferenceInfo(**d["reference"]),
            model=d["model"],
            sde=d["sde"],
            shape=tuple(d["shape"]),
            n=d["n"],
            distance_to=d["distance_to"],
            n_data=d["n_data"],
            device=d["device"],
            dtype=d["dtype"],
            seconds=d["seconds"],
            tuned=tuple(TunedGrid.from_dict(t) for t in d["tuned"]),
        )

    @classmethod
    def from_json(cls, source: str | Path) -> SolverReport:
        """Read a report from a JSON string or from a file written by :meth:`to_json`."""
        if isinstance(source, Path) or (
            isinstance(source, str) and not source.lstrip().startswith("{")
        ):
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(f"no report file at {str(path)!r}")
            source = path.read_text()
        try:
            d = json.loads(source)
        except json.JSONDecodeError as err:
            raise ValueError(f"not a JSON report ({err})") from None
        return cls.from_dict(d)

    # ------------------------------------------------------------------ text
    def summary(self) -> str:
        """The recommendations and the Pareto front as Markdown tables (what the CLI prints)."""
        label = _METRIC_LABEL[self.metric]
        lines = [
            "## Recommendation per budget",
            "",
            f"| budget | method | grid | NFE used | {label} | reason |",
            "|---:|---|---|---:|---:|---|",
        ]
        for c in self.recommendations:
            lines.append(
                f"| {c.budget} | `{c.method}` | {c.grid} | {c.nfe} | {_fmt(c.value)} | {c.reason} |"
            )
        lines += [
            "",
            f"## Pareto front ({label} against NFE used)",
            "",
            "| NFE used | method | grid | RMS error | median error | sliced W2 | MMD | time (ms) |",
            "|---:|---|---|---:|---:|---:|---:|---:|",
        ]
        for r in self.pareto_front():
            lines.append(
                f"| {r.nfe} | `{r.method}` | {r.grid} | {_fmt(r.rmse)} | {_fmt(r.median_err)} | "
                f"{_fmt(r.sliced_w2)} | {_fmt(r.mmd)} | {_ms(r.seconds)} |"
            )
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """The full report: set-up, recommendations, Pareto front, and a table per metric
        (rows ``method / grid``, columns budgets; NFE used in brackets where below the
        budget; the default grid marked ``*``)."""
        ref = self.reference
        dist = (
            f"held-out data ({self.n_data} samples)"
            if self.distance_to == "data"
            else f"the reference samples ({self.n_data})"
        )
        floor = ""
        if ref.sliced_w2 is not None:
            floor = (
                f" The reference samples themselves are at sliced W2 {_fmt(ref.sliced_w2)}, "
                f"MMD {_fmt(ref.mmd)} from the data: the floor for a sampler that follows the "
                f"ODE exactly at this sample size."
            )
        head = [
            "# Solver comparison",
            "",
            f"Model: `{self.model}`; SDE: `{self.sde}`; {self.n} samples of shape "
            f"{self.shape} ({self.dtype}, {self.device}); total {self.seconds:.1f} s.",
            "",
            f"Reference: {ref.method} at rtol = {ref.rtol:g}, atol = {ref.atol:g} on the "
            f"probability-flow ODE in EDM variables from the same initial noise, {ref.nfe} "
            f"NFE, {ref.seconds:.1f} s. Endpoint error of a sample: |x - x_ref| / sqrt(D); "
            f"RMS and median over samples (deterministic methods only). Distances (sliced W2, "
            f"MMD) against {dist}, every method.{floor}",
            "",
            self.summary(),
        ]
        if self.tuned:
            head += [
                "",
                "## Tuned grids",
                "",
                "Calibration objective (start -> tuned) and held-out RMS / median error of the "
                "start grid and of the tuned grid (the report's own noise).",
                "",
                "| method | budget | start grid | calibration | held-out RMS | held-out median "
                "| optimizer | evaluations | time (s) |",
                "|---|---:|---|---|---|---|---|---:|---:|",
            ]
            for t in self.tuned:
                head.append(
                    f"| `{t.method}` | {t.nfe} | {t.start} | {_fmt(t.calibration_start)} -> "
                    f"{_fmt(t.calibration_tuned)} | {_fmt(t.held_out_start.rmse)} -> "
                    f"{_fmt(t.held_out_tuned.rmse)} | {_fmt(t.held_out_start.median_err)} -> "
                    f"{_fmt(t.held_out_tuned.median_err)} | {t.optimizer} | {t.evaluations} | "
                    f"{t.seconds:.1f} |"
                )
        tables = []
        det = [r for r in self.runs if r.kind == "ode"]
        for metric in METRICS:
            runs = det if metric in _ERROR_METRICS else list(self.runs)
            if not runs:
                continue
            tables += ["", f"## {_METRIC_LABEL[metric]}", "", self._pivot(runs, metric)]
        tables += ["", "## Wall time per solve (ms)", "", self._pivot(list(self.runs), "seconds")]
        failed = [r for r in self.runs if r.note.startswith("failed")]
        if failed:
            tables += ["", "## Failed runs", ""]
            tables += [f"* `{r.label}` at {r.budget}: {r.note}" for r in failed]
        return "\n".join(head + tables) + "\n"

    def _pivot(self, runs: list[SolverRun], metric: str) -> str:
        keys: list[tuple[str, str]] = []
        cell: dict[tuple[str, str, int], SolverRun] = {}
        for r in runs:
            if (r.method, r.grid) not in keys:
                keys.append((r.method, r.grid))
            cell[(r.method, r.grid, r.budget)] = r
        rec = {(c.method, c.grid, c.nfe) for c in self.recommendations}
        out = [
            "| method | grid | " + " | ".join(f"NFE {b}" for b in self.budgets) + " |",
            "|---|---|" + "---:|" * len(self.budgets),
        ]
        for m, g in keys:
            vals = []
            for b in self.budgets:
                run = cell.get((m, g, b))
                if run is None:
                    vals.append("")
                    continue
                r = run
                v = getattr(r, metric)
                txt = _ms(v) if metric == "seconds" else _fmt(v)
                if r.nfe and r.nfe < b:
                    txt += f" ({r.nfe})"
                if metric == self.metric and (m, g, r.nfe) in rec and r.nfe <= b:
                    txt = f"**{txt}**"
                vals.append(txt)
            default = any(r.default_grid for r in runs if (r.method, r.grid) == (m, g))
            out.append(f"| `{m}` | {g}{'*' if default else ''} | " + " | ".join(vals) + " |")
        return "\n".join(out)

    # ------------------------------------------------------------------ plot
    def plot(self, path: str | Path | None = None, metric: str | None = None) -> Figure:
        """Log-log ``metric`` against NFE actually used: one line per method (its best grid at
        each budget; stochastic methods dashed), the Pareto front as a black step line with
        open circles, the recommendations as stars. When the report has distances, a second
        panel shows the sliced W2 of every method with the reference samples' own distance
        as a floor. Saved to ``path`` (PNG) when given."""
        metric = _check_metric(metric or self.metric)
        fig = _figure(13.0 if self._has_distances() else 8.0, 6.0)
        panels = [(metric, [r for r in self.runs if _metric_value(r, metric) is not None])]
        if self._has_distances() and metric != "sliced_w2":
            panels.append(("sliced_w2", list(self.runs)))
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        methods = list(dict.fromkeys(r.method for r in self.runs))
        cmap = _colours(len(methods))
        markers = "os^vD<>pPhX*"
        for ax, (m_name, runs) in zip(axes, panels):
            for i, method in enumerate(methods):
                pts: dict[int, tuple[int, float]] = {}
                for r in runs:
                    v = _metric_value(r, m_name)
                    if r.method != method or v is None or not math.isfinite(v) or v <= 0:
                        continue
                    if r.budget not in pts or v < pts[r.budget][1]:
                        pts[r.budget] = (r.nfe, v)
                if not pts:
                    continue
                xy = sorted(pts.values())
                kind = next(r.kind for r in self.runs if r.method == method)
                ax.plot(
                    [p[0] for p in xy],
                    [p[1] for p in xy],
                    color=cmap[i],
                    marker=markers[i % len(markers)],
                    markersize=4,
                    linewidth=1.2,
                    linestyle="-" if kind == "ode" else "--",
                    label=method,
                )
            front = pareto_front(runs, m_name) if m_name == metric else ()
            if front:
                xs = [r.nfe for r in front]
                ys = [_metric_value(r, m_name) or math.nan for r in front]
                ax.step(xs, ys, where="post", color="black", linewidth=2.0, alpha=0.6)
                ax.plot(xs, ys, "o", mfc="none", mec="black", ms=9, label="Pareto front")
            recs = [recommend(runs, b, m_name) for b in self.budgets] if front else []
            recs_ok = [c for c in recs if c is not None]
            if recs_ok:
                ax.plot(
                    [c.nfe for c in recs_ok],
                    [c.value for c in recs_ok],
                    "*",
                    color="gold",
                    mec="black",
                    ms=15,
                    label="recommended",
                    zorder=5,
                )
            if m_name == "sliced_w2" and self.reference.sliced_w2 is not None:
                ax.axhline(self.reference.sliced_w2, color="grey", linestyle=":", label="reference")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(list(self.budgets), [str(b) for b in self.budgets])
            ax.minorticks_off()
            ax.set_xlabel("NFE (network evaluations actually used)")
            ax.set_ylabel(_METRIC_LABEL[m_name])
            ax.grid(True, which="both", alpha=0.3)
        axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
        fig.suptitle(f"{self.sde}, {self.n} samples of shape {self.shape}", fontsize=10)
        fig.tight_layout()
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(str(path), dpi=100)
        return fig

    def _has_distances(self) -> bool:
        return any(r.sliced_w2 is not None for r in self.runs)


def _fmt(v: float | None) -> str:
    if v is None:
        return "–"
    if math.isinf(v):
        return "inf"
    return f"{v:.3g}"


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{1e3 * v:.1f}"


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _colours(k: int) -> list[Any]:
    from matplotlib import colormaps

    pool = [colormaps["tab20"](i) for i in range(20)] + [colormaps["tab20b"](i) for i in range(20)]
    return [pool[i % len(pool)] for i in range(k)]


# =========================================================================== comparison


class _DistanceTarget:
    """Sliced W2 and MMD of many samples against one fixed target sample, with everything
    that depends on the target alone computed once.

    The values are those of :func:`scoresde.sliced_wasserstein` (the same directions, drawn
    from ``seed`` the same way; ``n_projections`` = ``min(256, 32 D)``) and of
    :func:`scoresde.mmd` with its default bandwidths (0.5, 1, 2) and ``scale`` fixed to the
    target's median pairwise distance (Gretton et al. 2012, unbiased MMD^2). Cached: the
    target's sorted projections and its kernel sum. The three Gaussian kernels are computed
    from one exponential, ``k = E^16 + E^4 + E`` with ``E = exp(-d^2 / (8 s^2))``.
    """

    def __init__(self, target: Tensor, seed: int) -> None:
        self.y = target.to("cpu", _F64)
        m, d = self.y.shape
        self.n_projections = min(256, 32 * d)
        g = torch.Generator().manual_seed(seed)
        u = torch.randn(d, self.n_projections, generator=g, dtype=_F64)
        self.u = u / u.norm(dim=0, keepdim=True)
        self.py_sorted, _ = torch.sort(self.y @ self.u, dim=0)
        self.scale = median_distance(self.y, max_points=2000)
        kyy = self._kernel(self.y, self.y)
        self.kyy_term = float((kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1)))

    def _kernel(self, a: Tensor, b: Tensor) -> Tensor:
        """sum over bandwidths (0.5, 1, 2) of exp(-|a - b|^2 / (2 (bw s)^2))."""
        e = torch.cdist(a, b).pow_(2).mul_(-1.0 / (8.0 * self.scale**2)).exp_()  # bw = 2
        e4 = e * e
        e4.mul_(e4)  # bw = 1
        e16 = e4 * e4
        e16.mul_(e16)  # bw = 0.5
        return e.add_(e4).add_(e16)

    def sliced_w2(self, x: Tensor) -> float:
        px, _ = torch.sort(x @ self.u, dim=0)
        qy = self.py_sorted
        if px.shape[0] != qy.shape[0]:
            k = max(px.shape[0], qy.shape[0])
            levels = (torch.arange(k, dtype=_F64) + 0.5) / k
            px = px[torch.clamp((levels * px.shape[0]).long(), max=px.shape[0] - 1)]
            qy = qy[torch.clamp((levels * qy.shape[0]).long(), max=qy.shape[0] - 1)]
        return float(((px - qy) ** 2).mean().sqrt())

    def mmd(self, x: Tensor) -> float:
        n = x.shape[0]
        kxx = self._kernel(x, x)
        xx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
        mmd2 = float(xx) + self.kyy_term - 2.0 * float(self._kernel(x, self.y).mean())
        return math.sqrt(max(mmd2, 0.0))


@dataclass
class _Problem:
    """What every run of one comparison shares."""

    model: SamplerModel
    x_t: Tensor
    ref: Tensor
    target: _DistanceTarget
    seed: int


def _distances(x: Tensor, prob: _Problem) -> tuple[float | None, float | None]:
    if not bool(torch.isfinite(x).all()):
        return math.inf, math.inf
    flat = x.detach().reshape(x.shape[0], -1).to("cpu", _F64)
    return prob.target.sliced_w2(flat), prob.target.mmd(flat)


def _run(
    prob: _Problem,
    method: str,
    grid: str | Tensor,
    grid_label: str,
    budget: int,
) -> SolverRun:
    cls = solvers.SOLVERS[method]
    kind = "sde" if cls.stochastic else "ode"
    default = isinstance(grid, str) and grid == _default_grid(method, prob.model.sde)
    gen = torch.Generator().manual_seed(prob.seed + 1) if cls.stochastic else None
    dev = prob.x_t.device
    try:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        res = sample(prob.model, method, budget, x_init=prob.x_t, grid=grid, generator=gen)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - t0
    except Exception as err:  # noqa: BLE001 - a method that cannot run is a result
        msg = " ".join(f"failed: {type(err).__name__}: {err}".split())[:300]
        return SolverRun(
            method, kind, grid_label, default, budget, 0, None, None, None, None, None, None, msg
        )
    x = res.x
    note = ""
    if cls.stochastic:
        rmse = med = mx = None
    elif not bool(torch.isfinite(x).all()):
        rmse = med = mx = math.inf
        note = "non-finite samples"
    else:
        e = _per_sample_error(x, prob.ref)
        rmse, med, mx = float(e.pow(2).mean().sqrt()), float(e.median()), float(e.max())
    sw, mm = _distances(x, prob)
    if not note and sw is not None and math.isinf(sw):
        note = "non-finite samples"
    return SolverRun(
        method, kind, grid_label, default, budget, res.nfe, rmse, med, mx, sw, mm, seconds, note
    )


def compare_solvers(
    model: SamplerModel,
    methods: str | Sequence[str] = "all",
    nfe: int | Sequence[int] = (5, 10, 20, 50),
    grids: str | Sequence[str] = "all",
    n: int = 1000,
    reference: str | solvers.Solver[Any, Any] = "dop853",
    data: Tensor | None = None,
    generator: torch.Generator | None = None,
    *,
    shape: Sequence[int] | None = None,
    reference_tol: float | None = None,
    metric: str = "rmse",
    tune: int = 0,
    tune_n: int = 512,
    tune_iterations: int = 100,
    progress: bool = True,
) -> SolverReport:
    """Compare solvers on ``model``: every method x grid x budget from the same noise.

    Args:
        model: anything with the :class:`~scoresde.ScoreModel` interface (``sde``, ``score``,
            ``x0``): a trained model (``sd.load_model(path).model``) or an oracle
            (``sd.GaussianMixture(...).score_model(sde)``, :func:`builtin_oracle`).
        methods: ``"all"``, ``"ode"`` (deterministic), ``"sde"`` (stochastic), or registry
            names (see :func:`selectable_methods`); adaptive methods are not compared.
        nfe: the evaluation budgets; each method takes the largest step count whose cost
            fits (``sd.sample``'s budget semantics).
        grids: ``"all"`` (:data:`GRID_NAMES`) or names from ``"default"`` (each method's own
            default grid), ``"uniform"``, ``"quadratic"``, ``"logsnr"``, ``"karras"``.
        n: samples per run (one batch).
        reference: the adaptive ODE method of the reference solve (``"dop853"``, scipy, the
            tight default; ``"dopri5"``, ``"dopri8"``: torchdiffeq, stay on the device), or a
            configured adaptive solver instance.
        data: held-out data ``(m, *shape)`` for the distances (in the model's units; its
            first 5000 rows); without it, the distances compare with the reference samples.
        generator: randomness for the initial noise, the stochastic methods' noise, the sliced
            W2 directions and the tuning batch (None: a generator seeded with 0, so the same
            call gives the same report).
        shape: shape of one sample (default: from ``data``, or the oracle's dimension).
        reference_tol: rtol = atol of a named reference (default 1e-10 for float64 models,
            1e-5 for float32 networks, whose round-off a tighter tolerance would chase).
        metric: what the Pareto front and the recommendations rank by, one of
            :data:`METRICS` (``"rmse"``: RMS endpoint error).
        tune: tune the grids of the best ``tune`` methods at every budget with
            :func:`tune_grid` (0: none), on a calibration batch of ``tune_n`` samples drawn
            from ``generator`` after the report's noise, for ``tune_iterations`` iterations,
            then evaluate them on the report's noise (held out) as runs with
            ``grid="tuned"``.
        progress: show a tqdm progress bar.

    Returns:
        :class:`SolverReport`.

    Raises:
        ValueError: unknown method / grid / metric names (listing the valid ones), bad
            budgets, a data tensor whose sample shape differs from ``shape``.
    """
    started = time.perf_counter()
    model = _check_model(model)
    method_list = _check_methods(methods)
    grid_list = _check_grids(grids)
    budgets = _check_budgets(nfe)
    metric = _check_metric(metric)
    n = _check_count(n, "n", 2)
    tune = _check_count(tune, "tune", 0)
    if metric in _ERROR_METRICS and all(solvers.SOLVERS[m].stochastic for m in method_list):
        raise ValueError(
            f"metric {metric!r} is an endpoint error, measured for deterministic methods only; "
            f"with stochastic methods alone use metric='sliced_w2' or 'mmd'"
        )
    if metric not in _ERROR_METRICS and tune:
        raise ValueError(
            f"tune needs an endpoint-error metric ('rmse', 'median_err'), got {metric!r}"
        )
    if data is not None and not isinstance(data, Tensor):
        raise TypeError(f"data must be a tensor (m, *shape) or None, got {type(data).__name__}")
    sample_shape = _sample_shape(model, shape, data)
    if data is not None and (data.ndim < 2 or tuple(data.shape[1:]) != sample_shape):
        raise ValueError(
            f"data must have shape (m, *shape) = (m, {', '.join(map(str, sample_shape))}), "
            f"got {tuple(data.shape)}"
        )
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    device, dtype = _placement(model)
    ref_solver, ref_name, rtol, atol = _reference_solver(reference, reference_tol, dtype)
    sde = model.sde

    x_t = sde.prior_sample((n, *sample_shape), generator, dtype=dtype).to(device)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    ref, ref_nfe, ref_seconds = _reference_solve(model, x_t, ref_solver)
    if data is not None:
        target = data.detach()[:_MAX_TARGET].reshape(-1, math.prod(sample_shape)).to("cpu", _F64)
        distance_to = "data"
    else:
        target = ref.detach().reshape(n, -1).to("cpu", _F64)
        distance_to = "reference"
    prob = _Problem(model, x_t, ref, _DistanceTarget(target, seed), seed)
    ref_sw, ref_mmd = _distances(ref, prob) if data is not None else (None, None)
    ref_info = ReferenceInfo(ref_name, rtol, atol, ref_nfe, ref_seconds, "edm", ref_sw, ref_mmd)

    from tqdm.auto import tqdm

    work = [(m, g, b) for b in budgets for m in method_list for g in grid_list]
    runs: list[SolverRun] = []
    seen: set[tuple[str, str, int]] = set()
    with tqdm(total=len(work), desc="compare_solvers", disable=not progress, unit="run") as bar:
        for m, g, b in work:
            name = _default_grid(m, sde) if g == "default" else g
            if (m, name, b) not in seen:
                seen.add((m, name, b))
                bar.set_postfix_str(f"{m}@{name} NFE {b}", refresh=False)
                runs.append(_run(prob, m, name, name, b))
            bar.update()

    tuned: list[TunedGrid] = []
    if tune:
        objective = "rms" if metric == "rmse" else "mean"
        x_cal = sde.prior_sample((tune_n, *sample_shape), generator, dtype=dtype).to(device)
        ref_cal, _, _ = _reference_solve(model, x_cal, ref_solver)
        jobs = []
        for b in budgets:
            best: dict[str, tuple[float, SolverRun]] = {}
            for r in runs:
                v = _metric_value(r, metric)
                if r.kind != "ode" or r.budget != b or v is None or not math.isfinite(v):
                    continue
                if r.method not in best or v < best[r.method][0]:
                    best[r.method] = (v, r)
            ranked = sorted(best.values(), key=lambda vr: vr[0])[:tune]
            jobs += [(r.method, r.grid, b) for _, r in ranked]
        for m, g, b in tqdm(jobs, desc="tune_grid", disable=not progress, unit="grid"):
            tg = _tune(
                model,
                m,
                b,
                g,
                x_cal,
                ref_cal,
                x_t,
                ref,
                objective=objective,
                space="logsnr",
                optimizer="auto",
                iterations=tune_iterations,
                progress=False,
            )
            tuned.append(tg)
            run = _run(prob, m, tg.ts, "tuned", b)
            runs.append(
                replace(run, note=f"tuned from {g} ({tg.optimizer}, {tg.evaluations} solves)")
            )

    recs = tuple(c for c in (recommend(runs, b, metric) for b in budgets) if c is not None)
    return SolverReport(
        runs=tuple(runs),
        budgets=budgets,
        metric=metric,
        recommendations=recs,
        reference=ref_info,
        model=_short_repr(model),
        sde=repr(sde),
        shape=sample_shape,
        n=n,
        distance_to=distance_to,
        n_data=int(target.shape[0]),
        device=str(device),
        dtype=str(dtype).replace("torch.", ""),
        seconds=time.perf_counter() - started,
        tuned=tuple(tuned),
    )


def _short_repr(model: object) -> str:
    text = " ".join(repr(model).split())
    return text if len(text) <= 200 else text[:197] + "..."


# =========================================================================== tuning


class _GridParam:
    """A grid from T to t_min as softmax increments of ``u`` (log-SNR or t).

    ``p = eps + (1 - m eps) softmax(theta)`` (m steps) are the fractions of the whole interval
    ``u(t_min) - u(T)`` covered by the steps; ``u_i = u(T) + (u(t_min) - u(T)) cumsum(p)``.
    Every fraction is at least ``eps`` > 0, so the grid is strictly monotone by construction
    and its endpoints are exactly ``T`` and ``t_min``. The map from log-SNR to t is
    differentiated implicitly (``dt/dlambda = 1 / lambda'(t)`` with ``lambda'(t) =
    -g^2(t) / sigma^2(t)``), so any SDE's inverse works, however it is computed.
    """

    def __init__(self, sde: SDE, start: Tensor, space: str) -> None:
        self.sde, self.space = sde, space
        start = start.to("cpu", _F64)
        u = self._u(start)
        self.u_a, self.u_b = float(u[0]), float(u[-1])
        self.total = self.u_b - self.u_a
        p0 = torch.diff(u) / self.total
        if not bool((p0 > 0).all()):
            raise ValueError(f"the start grid is not strictly monotone in {space}")
        m = p0.numel()
        self.m = m
        self.eps = 0.01 * min(float(p0.min()), 1.0 / m)
        theta = torch.log(p0 - self.eps)
        self.theta0 = theta - theta.mean()

    def _u(self, ts: Tensor) -> Tensor:
        return self.sde.log_snr(ts).to(_F64) if self.space == "logsnr" else ts

    def grid(self, theta: Tensor) -> Tensor:
        p = self.eps + (1.0 - self.m * self.eps) * torch.softmax(theta, 0)
        u = self.u_a + self.total * torch.cumsum(p, 0)[:-1]
        if self.space == "t":
            inner = u
        else:
            lam_d = u.detach()
            t_d = self.sde.t_from_log_snr(lam_d).to(_F64)
            dlam_dt = -self.sde.g2(t_d).to(_F64) / self.sde.sigma(t_d).to(_F64) ** 2
            inner = t_d + (u - lam_d) / dlam_dt
        ends = torch.tensor([self.sde.T], dtype=_F64), torch.tensor([self.sde.t_min], dtype=_F64)
        return torch.cat([ends[0], inner, ends[1]])


def _valid_grid(ts: Tensor, sde: SDE) -> bool:
    v = ts.detach()
    if not bool(torch.isfinite(v).all()):
        return False
    if float(v[0]) != sde.T or float(v[-1]) != sde.t_min:
        return False
    return bool((torch.diff(v) < 0).all()) and bool((v >= sde.t_min).all() and (v <= sde.T).all())


def _tune(
    model: SamplerModel,
    method: str,
    budget: int,
    start: str | Tensor,
    x_cal: Tensor,
    ref_cal: Tensor,
    x_ho: Tensor,
    ref_ho: Tensor,
    *,
    objective: str,
    space: str,
    optimizer: str,
    iterations: int,
    progress: bool,
) -> TunedGrid:
    t_start = time.perf_counter()
    sde = model.sde
    base, name = resolve_solver(method)
    if type(base).stochastic or type(base).adaptive:
        valid = ", ".join(selectable_methods("ode"))
        raise ValueError(
            f"method must be a deterministic fixed-step method (tuning minimises the error "
            f"against the ODE reference), got {name!r}; valid: {valid}"
        )
    solver, n_steps = base.for_budget(budget)
    start_name, ts0 = _check_start(start, solver, n_steps, sde, name, budget)
    if start_name == "best":
        start_name, ts0 = _best_named_grid(model, solver, n_steps, x_cal, ref_cal, objective)
    assert ts0 is not None
    param = _GridParam(sde, ts0, space)
    term = solver_term(model, type(solver).term_type)
    evals = 0
    limit = [math.inf]  # the optimiser's budget of evaluations, once it starts

    def loss_of(ts: Tensor) -> Tensor:
        nonlocal evals
        if evals >= limit[0]:
            raise _BudgetSpent
        evals += 1
        x = solvers.integrate(solver, term, x_cal, ts.to(x_cal.device)).x
        return _objective(x, ref_cal, objective)

    def value(theta: Tensor) -> tuple[float, Tensor]:
        with torch.no_grad():
            ts = param.grid(theta)
            if not _valid_grid(ts, sde):
                return math.inf, ts
            v = float(loss_of(ts))
        return (v if math.isfinite(v) else math.inf), ts

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # scalar conversions of grad tensors
        with torch.no_grad():
            start_value = float(loss_of(ts0))
        if not math.isfinite(start_value):
            raise ValueError(
                f"{name} on the {start_name} grid gives non-finite samples on the calibration "
                f"batch: nothing to tune from"
            )
        best: list[Any] = [start_value, ts0]

        def consider(v: float, ts: Tensor) -> None:
            if v < best[0]:
                best[0], best[1] = v, ts.detach().clone()

        chosen = optimizer
        if optimizer == "auto":
            chosen = "lbfgs" if _gradient_ok(param, loss_of) else "nelder-mead"
        limit[0] = evals + iterations
        try:
            if chosen == "lbfgs":
                _lbfgs(param, loss_of, consider, iterations, sde, progress)
            else:
                _nelder_mead(param, value, consider, iterations, progress)
        except _BudgetSpent:
            pass
        limit[0] = math.inf
        # the guarantee: the winner re-evaluated exactly as the start was
        final_value = start_value
        if best[1] is not ts0:
            with torch.no_grad():
                final_value = float(loss_of(best[1]))
            if not final_value <= start_value:
                final_value, best[1] = start_value, ts0
    tuned_ts = best[1].detach().to("cpu", _F64)
    assert _valid_grid(tuned_ts, sde)
    sc_start = _score(sample(model, solver, x_init=x_ho, grid=ts0).x, ref_ho)
    sc_tuned = _score(sample(model, solver, x_init=x_ho, grid=tuned_ts).x, ref_ho)
    return TunedGrid(
        method=name,
        nfe=budget,
        grid=tuple(float(v) for v in tuned_ts),
        start_grid=tuple(float(v) for v in ts0),
        start=start_name,
        sde=repr(sde),
        t_min=float(sde.t_min),
        T=float(sde.T),
        space=space,
        objective=objective,
        calibration_start=start_value,
        calibration_tuned=final_value,
        held_out_start=sc_start,
        held_out_tuned=sc_tuned,
        n_calibration=int(x_cal.shape[0]),
        n_held_out=int(x_ho.shape[0]),
        optimizer=chosen,
        evaluations=evals,
        seconds=time.perf_counter() - t_start,
    )


def _check_start(
    start: str | Tensor,
    solver: solvers.Solver[Any, Any],
    n_steps: int,
    sde: SDE,
    name: str,
    budget: int,
) -> tuple[str, Tensor | None]:
    """(name, grid) of a tuning start; ("best", None) is resolved on the calibration batch."""
    if isinstance(start, Tensor):
        ts0 = solvers.as_grid(start).to("cpu")
        if ts0.numel() != n_steps + 1:
            raise ValueError(
                f"start must have {n_steps + 1} points ({n_steps} steps: what {name} takes for "
                f"nfe={budget}), got {ts0.numel()}"
            )
        if float(ts0[0]) != sde.T or float(ts0[-1]) != sde.t_min:
            raise ValueError(
                f"start must run from T = {sde.T} to t_min = {sde.t_min}, got "
                f"{float(ts0[0])} -> {float(ts0[-1])}"
            )
        return "user", ts0
    if start == "best":
        return "best", None
    start_name = _default_grid(solver, sde) if start == "default" else start
    if start_name not in GRID_NAMES:
        raise ValueError(
            f"start: unknown grid {start!r}; valid: 'default', 'best', {', '.join(GRID_NAMES)} "
            f"or a tensor"
        )
    return start_name, solvers.make_grid(start_name, sde, sde.T, sde.t_min, n_steps)


def _objective(x: Tensor, ref: Tensor, objective: str) -> Tensor:
    """``"rms"``: sqrt(mean_i e_i^2); ``"mean"``: mean_i e_i (e_i per-sample, float64)."""
    e2 = (x.to(_F64) - ref.to(_F64)).reshape(x.shape[0], -1).pow(2).mean(1)
    if objective == "rms":
        return e2.mean().sqrt()
    return (e2 + 1e-300).sqrt().mean()


def _best_named_grid(
    model: SamplerModel,
    solver: solvers.Solver[Any, Any],
    n_steps: int,
    x_cal: Tensor,
    ref_cal: Tensor,
    objective: str,
) -> tuple[str, Tensor]:
    """The named grid (:data:`GRID_NAMES`) of least objective on the calibration batch."""
    sde = model.sde
    best: tuple[float, str, Tensor] | None = None
    for name in GRID_NAMES:
        try:
            ts = solvers.make_grid(name, sde, sde.T, sde.t_min, n_steps)
            x = sample(model, solver, x_init=x_cal, grid=ts).x
        except (ValueError, RuntimeError):
            continue
        v = float(_objective(x, ref_cal, objective))
        if math.isfinite(v) and (best is None or v < best[0]):
            best = (v, name, ts)
    if best is None:
        raise ValueError("no named grid gives finite samples on the calibration batch")
    return best[1], best[2]


class _BudgetSpent(Exception):
    """The tuner's evaluation budget is spent (raised by the objective to stop an optimiser)."""


def _gradient_ok(param: _GridParam, loss_of: Callable[[Tensor], Tensor]) -> bool:
    """Whether autograd through the solver gives the derivative of the loss: two directional
    derivatives against central differences (some solvers compute their coefficients outside
    autograd; their gradients are wrong, and Nelder-Mead is used instead)."""
    g = torch.Generator().manual_seed(1234)
    theta = param.theta0.clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            loss = loss_of(param.grid(theta))
            (grad,) = torch.autograd.grad(loss, theta)
    except RuntimeError:
        return False
    if not bool(torch.isfinite(grad).all()):
        return False
    h = 1e-4
    for _ in range(2):
        v = torch.randn(theta.shape, generator=g, dtype=_F64)
        v = v - v.mean()
        v = v / v.norm()
        with torch.no_grad():
            ts_p, ts_m = param.grid(param.theta0 + h * v), param.grid(param.theta0 - h * v)
            fd = (float(loss_of(ts_p)) - float(loss_of(ts_m))) / (2 * h)
        ad = float(grad @ v)
        if not math.isfinite(fd) or abs(ad - fd) > 1e-3 * max(abs(fd), 1e-8 * float(loss)):
            return False
    return True


def _lbfgs(
    param: _GridParam,
    loss_of: Callable[[Tensor], Tensor],
    consider: Callable[[float, Tensor], None],
    iterations: int,
    sde: SDE,
    progress: bool,
) -> None:
    """L-BFGS with a strong-Wolfe line search (Nocedal & Wright 2006, Alg. 7.5 and 3.5;
    ``torch.optim.LBFGS``) on theta, gradients through the solver; restarted from the best
    point while evaluations remain and it still improves. Every evaluated point is offered to
    ``consider`` (best so far)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=iterations, desc="tune_grid (lbfgs)", disable=not progress)
    used = 0
    best: list[Any] = [math.inf, param.theta0.clone()]

    while used < iterations:
        theta = best[1].clone().requires_grad_(True)
        opt = torch.optim.LBFGS(
            [theta],
            lr=1.0,
            max_iter=iterations,
            max_eval=iterations,
            history_size=20,
            tolerance_grad=1e-12,
            tolerance_change=1e-12,
            line_search_fn="strong_wolfe",
        )
        before = best[0]

        def closure(opt: torch.optim.Optimizer = opt, theta: Tensor = theta) -> Tensor:
            nonlocal used
            opt.zero_grad()
            used += 1
            bar.update()
            with torch.enable_grad():
                ts = param.grid(theta)
                if not _valid_grid(ts, sde):
                    return torch.tensor(math.inf, dtype=_F64)
                loss = loss_of(ts)
                v = float(loss)
                if not math.isfinite(v):
                    return torch.tensor(math.inf, dtype=_F64)
                consider(v, ts)
                if v < best[0]:
                    best[0], best[1] = v, theta.detach().clone()
                loss.backward()
            return loss.detach()

        try:
            opt.step(closure)
        except _BudgetSpent:
            break
        if not best[0] < before:  # converged (or stuck): a restart would repeat it
            break
    bar.close()


def _nelder_mead(
    param: _GridParam,
    value: Callable[[Tensor], tuple[float, Tensor]],
    consider: Callable[[float, Tensor], None],
    iterations: int,
    progress: bool,
) -> None:
    """Derivative-free Nelder-Mead (scipy, adaptive parameters of Gao & Han 2012 above 5
    dimensions) on theta, at most ``iterations`` objective evaluations."""
    import numpy as np
    from scipy.optimize import minimize
    from tqdm.auto import tqdm

    bar = tqdm(total=iterations, desc="tune_grid (nelder-mead)", disable=not progress)

    def f(th: Any) -> float:
        v, ts = value(torch.as_tensor(np.asarray(th), dtype=_F64))
        consider(v, ts)
        bar.update()
        return v if math.isfinite(v) else 1e300

    x0 = param.theta0.numpy()
    simplex = np.vstack([x0] + [x0 + 0.5 * np.eye(len(x0))[i] for i in range(len(x0))])
    try:
        minimize(
            f,
            x0,
            method="Nelder-Mead",
            options={
                "maxfev": max(iterations, 1),
                "initial_simplex": simplex,
                "xatol": 1e-4,
                "fatol": 0.0,
                "adaptive": len(x0) > 5,
            },
        )
    finally:
        bar.close()


def tune_grid(
    model: SamplerModel,
    method: str,
    nfe: int,
    *,
    start: str | Tensor = "default",
    n: int = 256,
    n_held_out: int | None = None,
    objective: str = "rms",
    space: str = "logsnr",
    optimizer: str = "auto",
    iterations: int = 100,
    reference: str | solvers.Solver[Any, Any] = "dop853",
    reference_tol: float | None = None,
    shape: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> TunedGrid:
    """Optimise the time grid of ``method`` at budget ``nfe`` for ``model``.

    The grid is parametrised by softmax increments in log-SNR (``space="logsnr"``) or in t:
    strictly monotone, from exactly ``T`` to exactly ``t_min``, by construction. The
    objective is the endpoint error against a tight reference solve of the probability-flow
    ODE from the same noise, on a calibration batch of ``n`` samples: ``"rms"``
    (``sqrt(mean_i e_i^2)``) or ``"mean"`` (``mean_i e_i``, less driven by the few samples
    that switch modes). Optimisers: ``"lbfgs"`` (L-BFGS with a strong-Wolfe line search)
    differentiates through the solver (every solver is torch code; the t(log-SNR) map is
    differentiated implicitly), ``"nelder-mead"`` is derivative-free; ``"auto"`` checks
    autograd against central differences at the start and falls back to Nelder-Mead when they
    disagree (solvers whose coefficients are computed outside autograd). The best grid seen
    is kept, starting from the start grid, so the tuned grid is never worse than the start on
    the calibration batch. It is then scored, with the start grid, on ``n_held_out`` fresh
    samples.

    This is a direct form of "Align Your Steps" (Sabour et al. 2024) and of optimised time
    steps (Xue et al. 2024; Watson et al. 2022 differentiate through the sampler); see the
    module docstring.

    Args:
        model: a model with the ScoreModel interface (trained or oracle).
        method: a deterministic fixed-step method (``selectable_methods("ode")``).
        nfe: the budget; the grid has as many steps as ``method`` takes for it.
        start: the starting grid: a name (``"default"``: the method's own; ``"best"``: the
            named grid of least objective on the calibration batch) or a tensor of the right
            length from ``T`` to ``t_min``.
        n: calibration batch size.
        n_held_out: held-out batch size (default: ``n``).
        objective: ``"rms"`` or ``"mean"``.
        space: ``"logsnr"`` or ``"t"``.
        optimizer: ``"auto"``, ``"lbfgs"`` or ``"nelder-mead"``.
        iterations: the budget of objective evaluations (solves of the calibration batch;
            with L-BFGS each also differentiates through the solve).
        reference: the reference solve (see :func:`compare_solvers`).
        reference_tol: its tolerance (see :func:`compare_solvers`).
        shape: shape of one sample (default: the oracle's dimension).
        generator: randomness for both batches (None: seeded with 0): the calibration batch
            is ``sde.prior_sample((n, *shape), generator)`` in the model's dtype, then the
            held-out batch is drawn the same way.
        progress: show a progress bar.

    Returns:
        :class:`TunedGrid`; ``tuned.save("grid.json")`` and ``sd.sample(model, method, nfe,
        grid=tuned.ts)`` (or ``grid="grid.json"``) reuse it.
    """
    model = _check_model(model)
    if not isinstance(method, str):
        raise TypeError(f"method must be a registry name, got {type(method).__name__}")
    if method not in solvers.SOLVERS:
        raise ValueError(
            f"method: unknown method {method!r}; valid: {', '.join(selectable_methods('ode'))}"
        )
    nfe = _check_count(nfe, "nfe")
    n = _check_count(n, "n", 2)
    n_held_out = _check_count(n if n_held_out is None else n_held_out, "n_held_out", 2)
    iterations = _check_count(iterations, "iterations", 0)
    if objective not in _OBJECTIVES:
        raise ValueError(f"objective must be one of {_OBJECTIVES}, got {objective!r}")
    if space not in _SPACES:
        raise ValueError(f"space must be one of {_SPACES}, got {space!r}")
    if optimizer not in _OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {_OPTIMIZERS}, got {optimizer!r}")
    sample_shape = _sample_shape(model, shape, None)
    base, name = resolve_solver(method)
    if type(base).stochastic or type(base).adaptive:
        valid = ", ".join(selectable_methods("ode"))
        raise ValueError(
            f"method must be a deterministic fixed-step method (tuning minimises the error "
            f"against the ODE reference), got {name!r}; valid: {valid}"
        )
    solver, n_steps = base.for_budget(nfe)
    _check_start(start, solver, n_steps, model.sde, name, nfe)  # fail before the solves
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    device, dtype = _placement(model)
    ref_solver, _, _, _ = _reference_solver(reference, reference_tol, dtype)
    sde = model.sde
    x_cal = sde.prior_sample((n, *sample_shape), generator, dtype=dtype).to(device)
    x_ho = sde.prior_sample((n_held_out, *sample_shape), generator, dtype=dtype).to(device)
    ref_cal, _, _ = _reference_solve(model, x_cal, ref_solver)
    ref_ho, _, _ = _reference_solve(model, x_ho, ref_solver)
    return _tune(
        model,
        method,
        nfe,
        start,
        x_cal,
        ref_cal,
        x_ho,
        ref_ho,
        objective=objective,
        space=space,
        optimizer=optimizer,
        iterations=iterations,
        progress=progress,
    )


# =========================================================================== oracles


def _ddpm_chain() -> SDE:
    """The DDPM chain of Ho et al. 2020 (linear betas 1e-4..0.02, N = 1000) in continuous
    time (t in [1/N, 1]): the VP of diffusers' default schedulers."""
    return VPSDE.from_discrete(torch.linspace(1e-4, 0.02, 1000, dtype=_F64))


ORACLE_SDES: dict[str, Callable[[], SDE]] = {"vp": _ddpm_chain, "edm": EDMSDE}
"""SDE name -> constructor for :func:`builtin_oracle`: ``"vp"`` is the DDPM chain (linear
betas 1e-4..0.02, N = 1000, ``sd.VPSDE.from_discrete``), ``"edm"`` is ``sd.EDMSDE()`` (sigma
in [0.002, 80])."""


def _anisotropic_gmm(dim: int, seed: int) -> GaussianMixture:
    """The mixtures of bench/sampler_accuracy.py (``make_gmm``): sharp, anisotropic modes.

    2-D: 8 components on a circle of radius 1.5, covariance eigenvalues log-uniform in
    [0.003, 0.05], random rotations and weights. 64-D: 16 components with means N(0, 0.8^2 I),
    eigenvalues log-uniform in [0.01, 0.3], random rotations and weights.
    """
    g = torch.Generator().manual_seed(seed)
    if dim == 2:
        k, lo, hi = 8, 0.003, 0.05
        ang = 2 * math.pi * torch.arange(k, dtype=_F64) / k
        means = 1.5 * torch.stack([torch.cos(ang), torch.sin(ang)], 1)
    else:
        k, lo, hi = 16, 0.01, 0.3
        means = 0.8 * torch.randn(k, dim, generator=g, dtype=_F64)
    u = torch.rand(k, dim, generator=g, dtype=_F64)
    lam = torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * u)
    q, _ = torch.linalg.qr(torch.randn(k, dim, dim, generator=g, dtype=_F64))
    covs = q @ torch.diag_embed(lam) @ q.transpose(-1, -2)
    covs = 0.5 * (covs + covs.transpose(-1, -2))
    weights = 0.5 + torch.rand(k, generator=g, dtype=_F64)
    return GaussianMixture(weights / weights.sum(), means, covs)


def _rings2d() -> GaussianMixture:
    """24 isotropic components (variance 0.002) on two concentric rings of radii 0.6 (8)
    and 1.5 (16), equal weights: many close, sharp modes."""
    pts = []
    for radius, k in ((0.6, 8), (1.5, 16)):
        ang = 2 * math.pi * (torch.arange(k, dtype=_F64) + 0.5 * (k == 8)) / k
        pts.append(radius * torch.stack([torch.cos(ang), torch.sin(ang)], 1))
    means = torch.cat(pts)
    k = means.shape[0]
    return GaussianMixture(torch.full((k,), 1.0 / k, dtype=_F64), means, torch.full((k,), 0.002))


ORACLES: dict[str, tuple[str, Callable[[], GaussianMixture]]] = {
    "gmm2d": (
        "8 sharp anisotropic Gaussians on a circle (2-D; bench/sampler_accuracy.py, seed 2)",
        lambda: _anisotropic_gmm(2, 2),
    ),
    "gmm64d": (
        "16 anisotropic Gaussians in 64-D (bench/sampler_accuracy.py, seed 64)",
        lambda: _anisotropic_gmm(64, 64),
    ),
    "rings2d": ("24 isotropic Gaussians on two rings (2-D)", _rings2d),
}
"""Name -> (description, mixture constructor) of the built-in oracle problems."""


@dataclass(frozen=True)
class OracleProblem:
    """A built-in problem with an exact score: a Gaussian mixture under an SDE.

    Attributes:
        name: ``"NAME:SDE"``, e.g. ``"gmm2d:vp"``.
        description: what the mixture is.
        gmm: the data distribution; sde: the diffusion; model: the exact score model.
    """

    name: str
    description: str
    gmm: GaussianMixture
    sde: SDE
    model: GaussianMixtureOracle = field(repr=False)

    def data(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n exact samples of the data distribution (float64), e.g. held-out data for
        :func:`compare_solvers`."""
        return self.gmm.sample(n, generator, dtype=_F64)


def builtin_oracle(name: str, sde: str | None = None) -> OracleProblem:
    """A named oracle problem: ``builtin_oracle("gmm2d")``, ``("gmm2d", "edm")`` or
    ``("gmm2d:edm")``.

    Args:
        name: a key of :data:`ORACLES` (``"gmm2d"``, ``"gmm64d"``, ``"rings2d"``), optionally
            followed by ``":SDE"``.
        sde: a key of :data:`ORACLE_SDES` (``"vp"``, the default, or ``"edm"``).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    base, _, suffix = name.partition(":")
    if suffix and sde is not None and suffix != sde:
        raise ValueError(f"name {name!r} names the SDE {suffix!r} but sde={sde!r}")
    sde_name = suffix or sde or "vp"
    if base not in ORACLES:
        raise ValueError(f"unknown oracle {base!r}; valid: {', '.join(ORACLES)}")
    if sde_name not in ORACLE_SDES:
        raise ValueError(f"unknown oracle SDE {sde_name!r}; valid: {', '.join(ORACLE_SDES)}")
    description, make = ORACLES[base]
    gmm = make()
    s = ORACLE_SDES[sde_name]()
    return OracleProblem(f"{base}:{sde_name}", description, gmm, s, gmm.score_model(s))
