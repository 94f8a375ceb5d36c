"""Time grids: pure functions returning strictly monotone 1-D ``float64`` tensors.

Every grid has ``n + 1`` points (``n`` steps) running from ``t_start`` to ``t_end`` in the
direction of integration: ``t_start > t_end`` (decreasing) for sampling, ``t_start < t_end``
for likelihoods. The endpoints are exactly ``t_start`` and ``t_end``. Grids are built on the
CPU; :func:`solvers.integrate` moves them to the state's device.

Sources: DDIM (Song et al. 2021, "uniform" and "quadratic" skips); DPM-Solver (Lu et al. 2022,
"logSNR" time-uniform steps); EDM (Karras et al. 2022, eq. 5, ``rho = 7``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from solvers.protocols import Schedule

__all__ = [
    "uniform",
    "quadratic",
    "log_snr_uniform",
    "karras",
    "as_grid",
    "check_grid",
    "make_grid",
    "schedule_kind",
    "ScheduleKind",
    "GridFn",
    "GRIDS",
]

_F64 = torch.float64


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n (number of steps) must be an int, got {type(n).__name__} {n!r}")
    if n < 1:
        raise ValueError(f"n (number of steps) must be >= 1, got n={n}")
    return n


def _check_endpoints(t_start: float, t_end: float) -> tuple[float, float]:
    values = []
    for name, value in (("t_start", t_start), ("t_end", t_end)):
        try:
            value = float(value)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name} must be a real number, got {value!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {name}={value}")
        values.append(value)
    if values[0] == values[1]:
        raise ValueError(f"t_start and t_end must differ, got t_start = t_end = {values[0]}")
    return values[0], values[1]


def check_grid(ts: Tensor, *, name: str = "ts") -> None:
    """Validate a time grid: 1-D, >= 2 points, finite, strictly monotone (one host sync).

    Args:
        ts: the grid (any floating dtype, any device).
        name: how the grid is called in error messages.

    Raises:
        TypeError: if ``ts`` is not a real floating tensor.
        ValueError: naming the problem (shape, length, first non-finite entry, first entry
            that breaks the direction set by ``ts[0] -> ts[1]``).
    """
    if not isinstance(ts, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(ts).__name__}")
    if not ts.dtype.is_floating_point:
        raise TypeError(f"{name} must have a floating dtype, got {ts.dtype}")
    if ts.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(ts.shape)}")
    if ts.numel() < 2:
        raise ValueError(f"{name} must have at least 2 points, got {ts.numel()}")
    values = ts.detach().to("cpu", _F64)
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        i = int((~finite).nonzero()[0])
        raise ValueError(f"{name} must be finite, got {name}[{i}] = {values[i].item()}")
    diffs = values[1:] - values[:-1]
    direction = 1.0 if diffs[0] > 0 else -1.0
    bad = (diffs * direction <= 0).nonzero()
    if bad.numel() > 0:
        i = int(bad[0])
        a, b = values[i].item(), values[i + 1].item()
        if a == b:
            problem = f"repeated point {name}[{i}] = {name}[{i + 1}] = {a!r}"
        else:
            kind = "increasing" if direction > 0 else "decreasing"
            problem = (
                f"{name}[0] -> {name}[1] is {kind} but {name}[{i}] = {a!r}, {name}[{i + 1}] = {b!r}"
            )
        raise ValueError(f"{name} must be strictly monotone: {problem}")


def as_grid(ts: Tensor | Sequence[float], *, name: str = "ts") -> Tensor:
    """Validate a user-supplied grid and convert it to ``float64`` (device kept).

    Args:
        ts: 1-D tensor (or sequence of numbers) of at least 2 finite, strictly monotone times.
        name: how the grid is called in error messages (the caller's argument name).

    Returns:
        ``ts`` as a 1-D ``float64`` tensor.

    Raises:
        TypeError / ValueError: see :func:`check_grid`.
    """
    if not isinstance(ts, Tensor):
        try:
            ts = torch.as_tensor(ts, dtype=_F64)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(
                f"{name} must be a 1-D tensor or a sequence of numbers: {err}"
            ) from None
    if ts.dtype == torch.bool or ts.is_complex():
        raise TypeError(f"{name} must be real-valued, got {ts.dtype}")
    ts = ts.to(_F64)
    check_grid(ts, name=name)
    return ts


def _finish(ts: Tensor, t_start: float, t_end: float, grid: str) -> Tensor:
    """Pin the endpoints exactly and check the result is a valid grid."""
    ts = ts.to("cpu", _F64).clone()
    ts[0] = t_start
    ts[-1] = t_end
    try:
        check_grid(ts, name=f"{grid} grid")
    except ValueError as err:
        raise ValueError(
            f"{err} (t_start={t_start}, t_end={t_end}, n={ts.numel() - 1}): too many steps "
            f"for this interval, or an inaccurate schedule inverse"
        ) from None
    return ts


def uniform(t_start: float, t_end: float, n: int) -> Tensor:
    """``n`` equal steps: ``t_i = t_start + (i / n) (t_end - t_start)``.

    Returns:
        ``(n + 1,)`` float64 tensor from ``t_start`` to ``t_end``.
    """
    n = _check_n(n)
    t_start, t_end = _check_endpoints(t_start, t_end)
    return _finish(torch.linspace(t_start, t_end, n + 1, dtype=_F64), t_start, t_end, "uniform")


def quadratic(t_start: float, t_end: float, n: int) -> Tensor:
    """Quadratic in the step index, fine near the *smaller* time (the data end).

    With ``lo = min(t_start, t_end)``, ``hi = max(...)``, the points are
    ``lo + (hi - lo) (j / n)^2`` for ``j = 0..n``, listed from ``t_start`` to ``t_end``: steps
    grow linearly away from ``lo``, whichever direction the grid runs (DDIM's "quadratic"
    skip, Song et al. 2021, puts more steps near ``t = 0``).

    Returns:
        ``(n + 1,)`` float64 tensor from ``t_start`` to ``t_end``.
    """
    n = _check_n(n)
    t_start, t_end = _check_endpoints(t_start, t_end)
    lo, hi = min(t_start, t_end), max(t_start, t_end)
    u = torch.linspace(0.0, 1.0, n + 1, dtype=_F64)
    ts = lo + (hi - lo) * u**2
    if t_start > t_end:
        ts = ts.flip(0)
    return _finish(ts, t_start, t_end, "quadratic")


def _log_snr_at(schedule: Schedule, t: float) -> float:
    return float(schedule.log_snr(torch.tensor(t, dtype=_F64)))


def _t_from_log_snr(schedule: Schedule, lam: Tensor) -> Tensor:
    ts = schedule.t_from_log_snr(lam)
    if not isinstance(ts, Tensor):
        raise TypeError(f"schedule.t_from_log_snr must return a tensor, got {type(ts).__name__}")
    return ts


def log_snr_uniform(schedule: Schedule, t_start: float, t_end: float, n: int) -> Tensor:
    """``n`` equal steps in log-SNR ``lambda(t) = log(alpha^2 / sigma^2)`` (Lu et al. 2022,
    DPM-Solver "logSNR" skip): ``t_i = t_from_log_snr(lambda_s + (i / n)(lambda_e - lambda_s))``.

    Args:
        schedule: a :class:`Schedule` (strictly decreasing ``log_snr`` and its inverse).
        t_start: first time of the grid; ``log_snr`` must be finite there.
        t_end: last time of the grid; ``log_snr`` must be finite there.
        n: number of steps.

    Returns:
        ``(n + 1,)`` float64 tensor from ``t_start`` to ``t_end``.
    """
    n = _check_n(n)
    t_start, t_end = _check_endpoints(t_start, t_end)
    lam_start, lam_end = _log_snr_at(schedule, t_start), _log_snr_at(schedule, t_end)
    for name, t, lam in (("t_start", t_start, lam_start), ("t_end", t_end, lam_end)):
        if not math.isfinite(lam):
            raise ValueError(
                f"log_snr_uniform needs a finite log-SNR at both ends, got "
                f"log_snr({name}={t}) = {lam}"
            )
    lams = torch.linspace(lam_start, lam_end, n + 1, dtype=_F64)
    return _finish(_t_from_log_snr(schedule, lams), t_start, t_end, "log_snr_uniform")


def karras(schedule: Schedule, t_start: float, t_end: float, n: int, rho: float = 7.0) -> Tensor:
    """Karras et al. 2022 (EDM), eq. 5, applied to the noise-to-signal ratio.

    With ``s(t) = sigma(t) / alpha(t) = exp(-log_snr(t) / 2)``,

        s_i = (s_start^(1/rho) + (i / n) (s_end^(1/rho) - s_start^(1/rho)))^rho,  i = 0..n,

    and ``t_i = t_from_log_snr(-2 log s_i)``. For EDM (``alpha = 1``, ``sigma = t``) this is
    the paper's ``sigma_i`` with ``N = n + 1`` (without the appended ``sigma_N = 0``). Larger
    ``rho`` concentrates steps at small noise levels. ``s`` may be 0 at an endpoint.

    Args:
        schedule: a :class:`Schedule`.
        t_start: first time of the grid; ``log_snr`` must not be NaN or ``-inf`` there.
        t_end: last time of the grid; ``log_snr`` must not be NaN or ``-inf`` there.
        n: number of steps.
        rho: the exponent, > 0 (7 in EDM; 1 is uniform in ``s``).

    Returns:
        ``(n + 1,)`` float64 tensor from ``t_start`` to ``t_end``.
    """
    n = _check_n(n)
    t_start, t_end = _check_endpoints(t_start, t_end)
    rho = float(rho)
    if not (math.isfinite(rho) and rho > 0):
        raise ValueError(f"rho must be finite and > 0, got rho={rho}")
    lam_start, lam_end = _log_snr_at(schedule, t_start), _log_snr_at(schedule, t_end)
    for name, t, lam in (("t_start", t_start, lam_start), ("t_end", t_end, lam_end)):
        if math.isnan(lam) or lam == -math.inf:
            raise ValueError(
                f"karras needs a finite noise-to-signal ratio at both ends, got "
                f"log_snr({name}={t}) = {lam}"
            )
    # work with s^(1/rho) = exp(-lam / (2 rho)): exact 0 at lam = +inf, no overflow
    root_start = math.exp(-lam_start / (2.0 * rho))
    root_end = math.exp(-lam_end / (2.0 * rho))
    u = torch.linspace(0.0, 1.0, n + 1, dtype=_F64)
    roots = root_start + u * (root_end - root_start)
    lams = -2.0 * rho * torch.log(roots)  # log-SNR of s_i = roots^rho
    return _finish(_t_from_log_snr(schedule, lams), t_start, t_end, "karras")


ScheduleKind = Literal["vp", "ve"]


def schedule_kind(schedule: Schedule, t_start: float, t_end: float) -> ScheduleKind:
    """Whether a schedule scales the signal down (``"vp"``) or only adds noise (``"ve"``).

    ``"ve"`` when ``alpha`` is the same at both ends of ``[t_end, t_start]`` (``alpha = 1``:
    VE, EDM; ``x_t = x_0 + sigma eps``, and the time is a noise level or its logarithm),
    ``"vp"`` otherwise (VP, sub-VP, cosine, a DDPM chain: the signal decays and the time is the
    diffusion's own clock). The best default grids differ between the two kinds: uniform or
    quadratic steps in a VP time are good, in a noise level they are not (``bench/grid_sweep.py``;
    docs/solvers.md, "Default time grids"). One host computation of ``alpha`` at two times.

    Args:
        schedule: a :class:`Schedule`.
        t_start: one end of the interval to integrate over.
        t_end: the other end (either order).

    Returns:
        ``"vp"`` or ``"ve"``.
    """
    ends = torch.tensor([float(t_start), float(t_end)], dtype=_F64)
    a0, a1 = (float(v) for v in schedule.alpha(ends).to(_F64))
    return "ve" if math.isclose(a0, a1, rel_tol=1e-9, abs_tol=0.0) else "vp"


class GridFn(Protocol):
    """Uniform signature of the entries of :data:`GRIDS`."""

    def __call__(
        self, schedule: Schedule | None, t_start: float, t_end: float, n: int, **kwargs: Any
    ) -> Tensor: ...


def _uniform_entry(
    schedule: Schedule | None, t_start: float, t_end: float, n: int, **kwargs: Any
) -> Tensor:
    return uniform(t_start, t_end, n, **kwargs)


def _quadratic_entry(
    schedule: Schedule | None, t_start: float, t_end: float, n: int, **kwargs: Any
) -> Tensor:
    return quadratic(t_start, t_end, n, **kwargs)


def _needs_schedule(grid: str, schedule: Schedule | None) -> Schedule:
    if schedule is None:
        raise ValueError(f"the {grid!r} time grid needs a schedule, got schedule=None")
    return schedule


def _log_snr_entry(
    schedule: Schedule | None, t_start: float, t_end: float, n: int, **kwargs: Any
) -> Tensor:
    schedule = _needs_schedule("log_snr_uniform", schedule)
    return log_snr_uniform(schedule, t_start, t_end, n, **kwargs)


def _karras_entry(
    schedule: Schedule | None, t_start: float, t_end: float, n: int, **kwargs: Any
) -> Tensor:
    return karras(_needs_schedule("karras", schedule), t_start, t_end, n, **kwargs)


GRIDS: dict[str, GridFn] = {
    "uniform": _uniform_entry,
    "quadratic": _quadratic_entry,
    "logsnr": _log_snr_entry,
    "log_snr_uniform": _log_snr_entry,
    "karras": _karras_entry,
}
"""Grid name -> builder ``(schedule, t_start, t_end, n, **kwargs)``; add entries to extend.
``"logsnr"`` is the short name of ``"log_snr_uniform"``."""


def make_grid(
    name: str,
    schedule: Schedule | None,
    t_start: float,
    t_end: float,
    n: int,
    **kwargs: Any,
) -> Tensor:
    """Build the time grid called ``name`` (a key of :data:`GRIDS`).

    Args:
        name: ``"uniform"``, ``"quadratic"``, ``"log_snr_uniform"``, ``"karras"`` (or a user
            entry); the keys are the names of the builder functions.
        schedule: the schedule (may be ``None`` for ``"uniform"`` and ``"quadratic"``).
        t_start: first time of the grid, where the integration starts.
        t_end: last time of the grid, where the integration ends.
        n: number of steps (>= 1).
        **kwargs: grid-specific options (``rho`` for ``"karras"``).

    Returns:
        ``(n + 1,)`` float64 tensor from ``t_start`` to ``t_end``.

    Raises:
        ValueError: unknown ``name`` (the message lists the known names), ``n < 1``, ...
    """
    try:
        build = GRIDS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown time grid {name!r}; known grids: {', '.join(sorted(GRIDS))}"
        ) from None
    _check_n(n)
    return build(schedule, t_start, t_end, n, **kwargs)
