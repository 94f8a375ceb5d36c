"""Exact log-likelihood through the probability-flow ODE, bits per dimension, encode/decode.

**The instantaneous change of variables** (Chen et al. 2018, "Neural Ordinary Differential
Equations", Theorem 1; Song et al. 2021, "Score-Based Generative Modeling through SDEs", eq. 39
and appendix D.2). Along a solution of ``dx/dt = v(x, t)`` the density transported by the flow
obeys ``d/dt log p_t(x_t) = -div v(x_t, t)``. With ``v`` the probability-flow velocity
``f(t) x - g(t)^2 s(x, t) / 2`` (:class:`scoresde.ProbabilityFlowODE`) and the *augmented* ODE

    dx/dt     = v(x, t)                                   x(t_min) = x (the data)
    d delta/dt = div v(x, t) = D f(t) - g(t)^2 div s(x, t) / 2,    delta(t_min) = 0

integrated **upwards** from ``t_min`` to ``T``,

    log p_{t_min}(x) = log p_T(z) + delta(T),     z = x(T).

The sign: ``log p_T(z) = log p_{t_min}(x) - int div v dt`` (the density falls where the flow
spreads), so the divergence integral is *added* to the prior term. ``log p_T`` is
:meth:`scoresde.SDE.prior_logp` unless a ``prior`` is given (the oracle tests pass the exact
``log p_T`` of the diffused mixture, which removes the prior mismatch from the comparison).

**Divergence** (:mod:`scoresde.divergence`): ``"exact"`` costs one forward pass and ``D``
vector-Jacobian products per evaluation (batched, chunked for large D); ``"hutchinson"`` costs
``K`` VJPs with probes drawn **once per solve** (so every probe's integrand is a smooth ODE and
the adaptive solver sees a deterministic problem; Grathwohl et al. 2019). The augmented state
then carries K log-density channels, one per probe: their mean is the estimate and their
standard deviation over the probes, divided by sqrt(K), the reported standard error. The
``D f(t)`` part of the divergence is exact in both cases, so only the network's Jacobian is
estimated.

**Bits per dimension.** Continuous data: ``bpd = -log p(x) / (D ln 2)``, in the data's own
units (it changes by ``log2(c)`` per dimension when the data are scaled by ``c``). Discrete data
with ``levels`` values per dimension at ``lo + k Delta``, ``Delta = (hi - lo) / (levels - 1)``
(``data_range = (lo, hi)``, as :class:`scoresde.Dataset` records them): a density ``p`` on the
scaled data assigns the bin ``[x - Delta/2, x + Delta/2)^D`` of a data point the mass
``P(x) = int_bin p(y) dy = Delta^D E_u[p(x + Delta (u - 1/2))]`` (``u ~ U[0, 1)^D``), so

    log P(x) >= E_u[ log p(x + Delta (u - 1/2)) ] + D log Delta                (Jensen)
    log P(x) >= E[ log (1/S) sum_s p(x + Delta (u_s - 1/2)) ] + D log Delta     (S draws)

(uniform dequantization, Theis et al. 2016; the importance-weighted bound with the uniform
proposal, Burda et al. 2016 / Ho et al. 2019 "Flow++"), and ``bpd = -log P(x) / (D ln 2)``.
``D log Delta`` is the change of variables from the data's units to *bin units* (one bin = one
unit), so the result does not depend on ``data_range``. For 8-bit images this is the convention
of the literature: Ho et al. 2020 and Song et al. 2021 report ``-log2 p(y) / D`` for the
dequantized pixels ``y = k + u`` in ``[0, 256)`` (score_sde adds the offset ``7 = log2(256/2)``
to the bits/dim of its ``[-1, 1]`` data, i.e. ``-D log Delta`` with its evaluation bin width
``Delta = 2/256``). Here ``Delta`` is the spacing the data actually have (``2/255`` for 256
levels scaled to ``[-1, 1]``); see ``docs/likelihood.md``.

**Float policy.** The ODE state, the time and the log-density channels are float64 on CPU and
CUDA; a half-precision (or float32) input is upcast, never integrated in its own precision
(torchdiffeq's dopri5 on float16 dies with "underflow in dt"). The network is evaluated in its
own dtype (that of its parameters; float64 for parameter-free models such as the oracle) and
its output upcast. On a device without float64 (MPS) everything is float32, with a warning.

**Step-size control.** ``method="dopri5"`` (default) or ``"bosh3"`` run this module's batched
embedded Runge-Kutta loop (Dormand & Prince 1980; Bogacki & Shampine 1989; the controller of
torchdiffeq: ``h_new = h clip(0.9 err^(-1/p), 0.2 or 1, 10)``), entirely on the input's device:
the only host synchronisation per step is the count of unfinished samples. The error norm is
the RMS over one sample's components of ``e / (atol + rtol max(|y0|, |y1|))``.

* ``per_sample=False`` (default): the batch shares one step size, accepted when *every*
  sample's error ratio is <= 1 (the max over samples, not torchdiffeq's RMS over the batch,
  which lets one sample's error hide in the average).
* ``per_sample=True``: every sample has its own step size and its own accept/reject decision;
  the samples still unfinished are evaluated together (one batched network call per stage, of
  a batch that shrinks as samples reach T). Each sample's trajectory, and so its result, does
  not depend on the rest of the batch.

Other adaptive methods of :mod:`solvers` (``"dopri8"``, ``"adaptive_heun"``, ``"rk45"``,
``"dop853"``, ...) are accepted with shared steps (their own error norm, the RMS over the
batch). A solve that does not reach T within ``max_steps`` step attempts, or whose step size
underflows or whose state becomes non-finite, raises :class:`ConvergenceError` naming the
samples concerned, instead of returning numbers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import Tensor

import solvers
from scoresde.divergence import (
    PROBE_KINDS,
    ProbeKind,
    exact_divergence,
    hutchinson_divergence,
    outside_inference_mode,
    sample_probes,
)
from scoresde.reverse import reverse_drift
from scoresde.sde import SDE
from solvers.adaptive import AdaptiveStepError
from solvers.integrate import NonFiniteError
from solvers.registry import adaptive_ode_names

__all__ = [
    "DivergenceMethod",
    "LikelihoodResult",
    "ConvergenceError",
    "log_likelihood",
    "encode",
    "decode",
    "dequantize",
    "bits_per_dim",
]

DivergenceMethod = Literal["exact", "hutchinson"]
"""How the divergence of the velocity is computed: exactly (D VJPs) or estimated (K probes)."""

_F64 = torch.float64
_LN2 = math.log(2.0)


# =========================================================================== results, errors
@dataclass(frozen=True)
class LikelihoodResult:
    """Result of :func:`log_likelihood`; per-sample tensors are float64 (float32 on MPS).

    Attributes:
        log_prob: (B,) nats. Continuous data: ``log p_{t_min}(x)``, the model's log-density
            in the data's units. Discrete data: the dequantization lower bound on the log
            *probability* of the data point's bin (in bin units, independent of the data
            range; with ``n_dequant = 0`` the midpoint value ``log p(x) + D log Delta``, not a
            bound). With Hutchinson divergence: the mean over the probes.
        bpd: (B,) bits per dimension, ``-log_prob / (D ln 2)``.
        nfe: evaluations of the augmented ODE (each: one network forward pass plus the
            divergence's backward passes), counted as batched calls.
        z: the latent ``x(T)``, shape of ``x`` (for ``n_dequant > 1``: that of the first
            dequantization draw).
        prior_logp: (B,) ``log p_T(z)`` (first draw for ``n_dequant > 1``).
        delta_logp: (B,) ``int_{t_min}^T div v dt`` (mean over the probes; first draw for
            ``n_dequant > 1``).
        stderr: (B,) Hutchinson standard error of ``log_prob``, the standard deviation over
            the K probes divided by sqrt(K); 0 for the exact divergence, NaN for K = 1 (it
            cannot be estimated from one probe).
        nfe_per_sample: (B,) int64 evaluations each data point took part in (summed over its
            dequantization draws); equal to ``nfe`` (times the draws) with shared steps.
        steps: (B,) int64 accepted steps of each data point's solve (summed over its draws).
        dim: D, the number of dimensions per sample.
    """

    log_prob: Tensor
    bpd: Tensor
    nfe: int
    z: Tensor
    prior_logp: Tensor
    delta_logp: Tensor
    stderr: Tensor
    nfe_per_sample: Tensor
    steps: Tensor
    dim: int


class ConvergenceError(AdaptiveStepError):
    """An adaptive PF-ODE solve did not converge for some samples (no numbers are returned).

    Raised when a sample's step attempts reach ``max_steps``, its step size falls below the
    minimum step, or its state or velocity becomes non-finite.

    Attributes:
        samples: indices (into the input batch) of the samples concerned.
        t_reached: (n,) float64 time each of them reached, in ``samples`` order.
        reasons: one short reason per sample, in ``samples`` order.
        t, nfe, rtol, atol: as :class:`solvers.AdaptiveStepError` (``t``: the earliest time
            reached among the samples concerned).
    """

    def __init__(
        self,
        message: str,
        *,
        samples: list[int],
        t_reached: Tensor,
        reasons: list[str],
        nfe: int,
        rtol: float,
        atol: float,
    ) -> None:
        t = float(t_reached.min()) if t_reached.numel() else math.nan
        super().__init__(message, t=t, nfe=nfe, rtol=rtol, atol=atol)
        self.samples = samples
        self.t_reached = t_reached
        self.reasons = reasons


# =========================================================================== bits per dim
def bits_per_dim(log_prob: Tensor, dim: int) -> Tensor:
    """``-log_prob / (dim ln 2)``: nats per sample to bits per dimension."""
    return -log_prob / (dim * _LN2)


def _check_quantization(
    levels: int | None, data_range: tuple[float, float] | None
) -> tuple[int, float, float] | None:
    """(levels, lo, bin width) for discrete data, None for continuous."""
    if levels is None and data_range is None:
        return None
    if levels is None or data_range is None:
        raise ValueError(
            "levels and data_range go together (as in scoresde.Dataset): both None for "
            f"continuous data or both set, got levels={levels!r}, data_range={data_range!r}"
        )
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels must be an int >= 2 or None, got levels={levels!r}")
    if (
        not isinstance(data_range, (tuple, list))
        or len(data_range) != 2
        or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in data_range
        )
        or not data_range[0] < data_range[1]
    ):
        raise ValueError(
            f"data_range must be a pair (lo, hi) of finite floats with lo < hi, got {data_range!r}"
        )
    lo, hi = float(data_range[0]), float(data_range[1])
    return levels, lo, (hi - lo) / (levels - 1)


def _check_on_grid(
    x: Tensor, levels: int, lo: float, width: float, source: torch.dtype | None = None
) -> Tensor:
    """Discrete data must sit on the levels (one host synchronisation per call); returns them
    snapped exactly onto the levels.

    The tolerance is 1e-3 bins, or the rounding of ``source`` (the data's own dtype) at the
    largest level if that is coarser: 8-bit levels stored in float16 are ~0.03 bins off.
    ``source`` too coarse to tell neighbouring levels apart (bfloat16 for 256 levels on
    [-1, 1]) is an error."""
    hi = lo + (levels - 1) * width
    tol = 1e-3
    if source is not None and source.is_floating_point:
        tol = max(tol, torch.finfo(source).eps * max(abs(lo), abs(hi)) / width)
        if tol >= 0.5:
            raise ValueError(
                f"x's dtype {source} cannot tell the levels apart (its rounding near "
                f"{max(abs(lo), abs(hi)):g} is {tol:.2g} bins of width {width:g}): pass the data "
                "in float32 or float64"
            )
    k = (x.detach().to(_F64) - lo) / width
    k_round = k.round()
    stats = torch.stack([(k - k_round).abs().max(), k_round.min(), k_round.max()])
    off, k_lo, k_hi = (float(v) for v in stats.cpu())
    if off > tol or k_lo < 0 or k_hi > levels - 1:
        raise ValueError(
            f"x is not on the grid of levels={levels} values lo + k * {width:g} "
            f"(k = 0..{levels - 1}): found level indices in [{k_lo:g}, {k_hi:g}] and a distance "
            f"of {off:.3g} bins from the nearest level. Pass the undequantized discrete data, or "
            f"levels=None, data_range=None for continuous data"
        )
    return (lo + k_round * width).to(x.dtype)


def dequantize(
    x: Tensor,
    levels: int,
    data_range: tuple[float, float],
    n: int = 1,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Uniform dequantization: ``x + Delta (u - 1/2)``, ``u ~ U[0, 1)^D``, for n draws.

    ``Delta = (hi - lo) / (levels - 1)`` is the spacing of the levels, so each draw is uniform on
    the bin ``[x - Delta/2, x + Delta/2)`` centred on the data point.

    Args:
        x: discrete data ``(B, *dims)`` on the levels ``lo + k Delta``.
        levels: number of levels per dimension (>= 2).
        data_range: ``(lo, hi)``, the values of the first and last level.
        n: number of draws (>= 1).
        generator: randomness (draws on its device, then moved to x's).

    Returns:
        ``(n, B, *dims)`` in x's dtype.
    """
    quant = _check_quantization(levels, data_range)
    assert quant is not None
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got n={n!r}")
    width = quant[2]
    gen_device = generator.device if generator is not None else x.device
    u = torch.rand((n, *x.shape), generator=generator, device=gen_device, dtype=x.dtype)
    return x.unsqueeze(0) + width * (u.to(x.device) - 0.5)


# =========================================================================== float policy
_MPS_WARNED = False


def _work_dtype(device: torch.device) -> torch.dtype:
    """float64, except on devices without it (MPS): float32, with a warning."""
    global _MPS_WARNED
    if device.type == "mps":
        if not _MPS_WARNED:
            warnings.warn(
                "the likelihood ODE is integrated in float32 on MPS (no float64 there); "
                "expect ~1e-4 relative error in log p and keep rtol, atol >= 1e-5",
                RuntimeWarning,
                stacklevel=3,
            )
            _MPS_WARNED = True
        return torch.float32
    return _F64


def _model_dtype(model: Any, work: torch.dtype, override: torch.dtype | None) -> torch.dtype:
    """The dtype the network is evaluated in: its parameters' (float64 if it has none)."""
    if override is not None:
        if not isinstance(override, torch.dtype) or not override.is_floating_point:
            raise TypeError(f"model_dtype must be a floating torch.dtype, got {override!r}")
        return override
    net = getattr(model, "net", None)
    if isinstance(net, torch.nn.Module):
        for p in list(net.parameters()) + list(net.buffers()):
            if p.is_floating_point():
                if p.dtype in (torch.float16, torch.bfloat16):
                    warnings.warn(
                        f"the network's parameters are {p.dtype}: its outputs carry ~1e-3 "
                        "relative round-off, which the adaptive solver sees as error; use "
                        "rtol, atol >= 1e-3 or evaluate it in float32 (model_dtype=torch.float32 "
                        "after net.float())",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                return p.dtype
    return work


def _check_model(model: Any) -> SDE:
    sde = getattr(model, "sde", None)
    if not isinstance(sde, SDE) or not callable(getattr(model, "score", None)):
        raise TypeError(
            "model must have an SDE `sde` and a method `score(x, t)` (a scoresde.ScoreModel or "
            f"an oracle), got {type(model).__name__}"
        )
    return sde


def _check_input(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        what = f"dtype {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"{name} must be a floating-point torch.Tensor, got {what}")
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(
            f"{name} must have shape (B, *dims) with B >= 1 and at least one data dimension, "
            f"got shape {tuple(x.shape)} (a batch of scalars is (B, 1))"
        )
    bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(1)
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        raise ValueError(
            f"{name} must be finite: samples {rows[:10]}{' ...' if len(rows) > 10 else ''} hold "
            "NaN or inf"
        )
    return x


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a positive float, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0, got {name}={value}")
    return float(value)


def _count(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {name}={value!r}")
    return value


# =========================================================================== the RK loop
# A batched embedded Runge-Kutta integrator with shared or per-sample step sizes. Generic (it
# knows nothing of diffusions) and could live in ``solvers``; it is here because it needs the
# sample-indexed callback ``fn(y, t, idx)`` that the solvers' term protocols do not have.


@dataclass(frozen=True)
class _Tableau:
    """An FSAL embedded pair: stages 2..s at ``c``, rows ``a`` (the last row is b), and the
    error weights ``e = b - b_hat`` over all s stages; ``order`` sets the controller exponent
    ``1 / order`` (as torchdiffeq)."""

    order: int
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    e: tuple[float, ...]


_DOPRI5 = _Tableau(  # Dormand & Prince 1980; Hairer, Norsett & Wanner I, Table II.5.2
    order=5,
    c=(1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=(
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
    ),
    e=(
        35 / 384 - 5179 / 57600,
        0.0,
        500 / 1113 - 7571 / 16695,
        125 / 192 - 393 / 640,
        -2187 / 6784 + 92097 / 339200,
        11 / 84 - 187 / 2100,
        -1 / 40,
    ),
)

_BOSH3 = _Tableau(  # Bogacki & Shampine 1989
    order=3,
    c=(1 / 2, 3 / 4, 1.0),
    a=((1 / 2,), (0.0, 3 / 4), (2 / 9, 1 / 3, 4 / 9)),
    e=(2 / 9 - 7 / 24, 1 / 3 - 1 / 4, 4 / 9 - 1 / 3, -1 / 8),
)

_OWN_METHODS: dict[str, _Tableau] = {"dopri5": _DOPRI5, "bosh3": _BOSH3}

_REASONS = {1: "non-finite state or velocity", 2: "step size below the minimum", 3: "max_steps"}

AugmentedFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``fn(y (b, M), t (b,), idx (b,) int64) -> dy/dt (b, M)``: idx are the rows' sample ids."""


@dataclass
class _Solve:
    y: Tensor  # (B, M) state at t1 (or where the sample stopped)
    nfe: int  # batched calls
    nfe_per_sample: Tensor  # (B,) int64
    steps: Tensor  # (B,) int64 accepted steps
    t: Tensor  # (B,) time reached
    failed: Tensor  # (B,) bool
    reason: Tensor  # (B,) int64 code (0 for samples that finished)


def _rms(v: Tensor) -> Tensor:
    return v.square().mean(1).sqrt()


def _rk_solve(
    fn: AugmentedFn,
    y0: Tensor,
    t0: float,
    t1: float,
    *,
    tableau: _Tableau,
    rtol: float,
    atol: float,
    per_sample: bool,
    max_steps: int,
    rel_min_step: float = 1e-12,
) -> _Solve:
    """Integrate ``dy/dt = fn(y, t, idx)`` from t0 to t1 for a batch (B, M) of independent
    systems, with shared or per-sample adaptive steps (see the module docstring)."""
    b, _ = y0.shape
    dev, dt = y0.device, y0.dtype
    sgn = 1.0 if t1 > t0 else -1.0
    span = abs(t1 - t0)
    t_lo, t_hi = min(t0, t1), max(t0, t1)
    min_step = rel_min_step * max(abs(t0), abs(t1), span)
    counts = {"nfe": 0}
    nfe_ps = torch.zeros(b, dtype=torch.int64, device=dev)

    def call(y: Tensor, t: Tensor, idx: Tensor) -> Tensor:
        counts["nfe"] += 1
        nfe_ps.index_add_(0, idx, torch.ones_like(idx))
        return fn(y, t.clamp(t_lo, t_hi), idx)

    all_idx = torch.arange(b, device=dev)
    y = y0.clone()
    t = torch.full((b,), t0, dtype=dt, device=dev)
    k1 = call(y, t, all_idx)

    # initial step: Hairer, Norsett & Wanner I, sec. II.4 (torchdiffeq's _select_initial_step);
    # a sample whose first velocity is not finite fails at once (its h is a placeholder)
    finite0 = torch.isfinite(k1).all(1) & torch.isfinite(y).all(1)
    scale = atol + rtol * y.abs()
    d0, d1 = _rms(y / scale), _rms(k1 / scale)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
    h0 = torch.where(finite0, h0, torch.full_like(h0, 1e-6)).clamp(max=span)
    if not per_sample:
        h0 = h0.min().expand(b)
    f1 = call(y + (sgn * h0)[:, None] * k1, t + sgn * h0, all_idx)
    d2 = _rms((f1 - k1) / scale) / h0
    dmax = torch.maximum(d1, d2)
    h1 = torch.where(
        dmax <= 1e-15,
        torch.clamp(h0 * 1e-3, min=1e-6),
        (0.01 / dmax.clamp(min=1e-300)) ** (1.0 / (tableau.order + 1)),
    )
    h = torch.minimum(100 * h0, h1).clamp(max=span)
    h = torch.where(torch.isfinite(h), h, h0)  # a non-finite f1: start from h0
    if not per_sample:
        h = h.min().expand(b)
    h = h.clone()

    steps = torch.zeros(b, dtype=torch.int64, device=dev)
    attempts = torch.zeros(b, dtype=torch.int64, device=dev)
    done = torch.zeros(b, dtype=torch.bool, device=dev)
    failed = ~finite0
    reason = torch.where(finite0, 0, 1).to(torch.int64)
    if not per_sample:  # one step for all: a sample that cannot start stops the batch
        done = done | failed.any()
    inv_order = -1.0 / tableau.order

    while True:
        idx = torch.nonzero(~(done | failed)).squeeze(1)  # the one host sync per step
        if idx.numel() == 0:
            break
        ya, ta, k1a = y[idx], t[idx], k1[idx]
        remaining = ((t1 - ta) * sgn).clamp(min=0.0)
        ha = torch.minimum(h[idx], remaining)
        last = h[idx] >= remaining
        t_end = torch.where(last, torch.full_like(ta, t1), ta + sgn * ha)
        hs = (sgn * ha)[:, None]

        # stages; the last stage's input is the new solution (FSAL)
        ks = [k1a]
        yi = ya
        for i, (ci, row) in enumerate(zip(tableau.c, tableau.a)):
            incr = sum(aij * kj for aij, kj in zip(row, ks) if aij != 0.0)
            yi = ya + hs * incr
            ti = t_end if i == len(tableau.c) - 1 else ta + sgn * ci * ha
            ks.append(call(yi, ti, idx))
        y_new = yi
        err = hs * sum(ei * ki for ei, ki in zip(tableau.e, ks) if ei != 0.0)
        tol = atol + rtol * torch.maximum(ya.abs(), y_new.abs())
        ratio = _rms(err / tol)
        ratio = torch.where(torch.isfinite(y_new).all(1), ratio, torch.full_like(ratio, math.nan))
        own_ratio = ratio
        if not per_sample:
            ratio = ratio.amax().expand_as(ratio)  # NaN propagates
        accept = ratio <= 1.0
        finish = accept & last

        # step-size update (torchdiffeq's _optimal_step_size)
        safe = torch.where(ratio > 0, ratio, torch.ones_like(ratio))
        factor = torch.where(ratio > 0, 0.9 * safe**inv_order, torch.full_like(ratio, 10.0))
        floor = torch.where(accept, torch.ones_like(ratio), torch.full_like(ratio, 0.2))
        factor = torch.minimum(torch.maximum(factor, floor), torch.full_like(ratio, 10.0))
        h_next = ha * factor

        acc = accept[:, None]
        y[idx] = torch.where(acc, y_new, ya)
        k1[idx] = torch.where(acc, ks[-1], k1a)
        t[idx] = torch.where(accept, t_end, ta)
        h[idx] = h_next
        steps[idx] += accept.to(torch.int64)
        attempts[idx] += 1
        done[idx] = finish

        # failures: non-finite, step underflow, step bound
        code = torch.zeros_like(idx)
        code = torch.where(~finish & (attempts[idx] >= max_steps), torch.full_like(code, 3), code)
        code = torch.where(~finish & ~(h_next >= min_step), torch.full_like(code, 2), code)
        code = torch.where(~torch.isfinite(ratio), torch.full_like(code, 1), code)
        bad = code > 0
        if not per_sample:
            # one step for all: the batch stops; the samples concerned are those with a
            # non-finite error if any, else those whose own error forced the rejection (all of
            # them if none did, e.g. at max_steps)
            any_bad = bad.any()
            own_nonfinite = ~torch.isfinite(own_ratio)
            concerned = torch.where(own_nonfinite.any(), own_nonfinite, ~(own_ratio <= 1.0))
            concerned = torch.where(concerned.any(), concerned, torch.ones_like(concerned))
            code = torch.where(any_bad & concerned, code.amax().expand_as(code), code)
            code = torch.where(any_bad & ~concerned, torch.zeros_like(code), code)
            done[idx] = done[idx] | (any_bad & ~concerned)
            failed[idx] = any_bad & concerned
        else:
            failed[idx] = bad
        reason[idx] = torch.where(failed[idx], code, reason[idx])

    return _Solve(y, counts["nfe"], nfe_ps, steps, t, failed, reason)


class _CountingTerm:
    """The augmented ODE as a ``solvers.ODETermLike`` for the solvers' adaptive methods."""

    def __init__(self, fn: AugmentedFn, b: int, device: torch.device, dtype: torch.dtype) -> None:
        self.fn, self.b, self.dtype = fn, b, dtype
        self.idx = torch.arange(b, device=device)
        self.nfe = 0

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        return self.fn(x, t.to(self.dtype).expand(self.b), self.idx)


def _adaptive_names() -> list[str]:
    return sorted(set(_OWN_METHODS).union(adaptive_ode_names()))


def _solve(
    fn: AugmentedFn,
    y0: Tensor,
    t0: float,
    t1: float,
    *,
    method: str,
    rtol: float,
    atol: float,
    per_sample: bool,
    max_steps: int,
) -> _Solve:
    if method in _OWN_METHODS:
        return _rk_solve(
            fn,
            y0,
            t0,
            t1,
            tableau=_OWN_METHODS[method],
            rtol=rtol,
            atol=atol,
            per_sample=per_sample,
            max_steps=max_steps,
        )
    if not isinstance(method, str) or method not in _adaptive_names():
        raise ValueError(
            f"method must be an adaptive ODE method, one of {_adaptive_names()}; got "
            f"method={method!r}"
        )
    if per_sample:
        raise ValueError(
            f"per_sample=True needs one of the batched methods {sorted(_OWN_METHODS)}; "
            f"method={method!r} shares one step size across the batch"
        )
    b = y0.shape[0]
    solver = solvers.get_solver(method, rtol=rtol, atol=atol, max_steps=max_steps)
    term = _CountingTerm(fn, b, y0.device, y0.dtype)
    ts = torch.tensor([t0, t1], dtype=_F64, device=y0.device)
    dev = y0.device
    try:
        y, _ = solver.solve(term, y0, ts)  # type: ignore[attr-defined]
    except (AdaptiveStepError, NonFiniteError) as err:
        code = 1 if isinstance(err, NonFiniteError) else 2
        t_reached = float(getattr(err, "t", math.nan))
        return _Solve(
            y0,
            term.nfe,
            torch.full((b,), term.nfe, dtype=torch.int64, device=dev),
            torch.zeros(b, dtype=torch.int64, device=dev),
            torch.full((b,), t_reached, dtype=y0.dtype, device=dev),
            torch.ones(b, dtype=torch.bool, device=dev),
            torch.full((b,), code, dtype=torch.int64, device=dev),
        )
    return _Solve(
        y,
        term.nfe,
        torch.full((b,), term.nfe, dtype=torch.int64, device=dev),
        torch.zeros(b, dtype=torch.int64, device=dev),
        torch.full((b,), t1, dtype=y0.dtype, device=dev),
        torch.zeros(b, dtype=torch.bool, device=dev),
        torch.zeros(b, dtype=torch.int64, device=dev),
    )


def _raise_if_failed(
    sol: _Solve, what: str, method: str, rtol: float, atol: float, n_data: int
) -> None:
    """ConvergenceError naming the data points whose solve failed (rows map to ``row % B``)."""
    failed = sol.failed.cpu()
    if not bool(failed.any()):
        return
    rows = torch.nonzero(failed).squeeze(1)
    t_rows = sol.t.detach().cpu().to(_F64)[rows]
    codes = sol.reason.cpu()[rows].tolist()
    samples: list[int] = []
    t_out: list[float] = []
    reasons: list[str] = []
    for r, tr, c in zip(rows.tolist(), t_rows.tolist(), codes):
        s = r % n_data
        if s not in samples:
            samples.append(s)
            t_out.append(tr)
            reasons.append(_REASONS.get(int(c), "solver failure"))
    shown = ", ".join(
        f"{s} (t={tr:.4g}, {why})" for s, tr, why in list(zip(samples, t_out, reasons))[:8]
    )
    more = f" and {len(samples) - 8} more" if len(samples) > 8 else ""
    raise ConvergenceError(
        f"{what}: the adaptive {method} solve (rtol={rtol:g}, atol={atol:g}, {sol.nfe} "
        f"evaluations) did not converge for {len(samples)} of {n_data} samples: {shown}{more}. "
        "Loosen rtol/atol, raise max_steps, or check the model at those inputs (per_sample=True "
        "lets the other samples finish and isolates the ones that fail)",
        samples=samples,
        t_reached=torch.tensor(t_out, dtype=_F64),
        reasons=reasons,
        nfe=sol.nfe,
        rtol=rtol,
        atol=atol,
    )


# =========================================================================== the ODEs
def _score_fn(
    model: Any, mdtype: torch.dtype, work: torch.dtype
) -> Callable[[Tensor, Tensor], Tensor]:
    def score(x: Tensor, t: Tensor) -> Tensor:
        return model.score(x.to(mdtype), t).to(work)

    return score


def _velocity(sde: SDE, score: Tensor, x: Tensor, t: Tensor) -> Tensor:
    """The PF-ODE velocity from an already computed score (reverse.py writes the drift)."""
    return reverse_drift(sde, lambda _x, _t: score, x, t, probability_flow=True)


def _augmented_fn(
    model: Any,
    sde: SDE,
    dims: tuple[int, ...],
    work: torch.dtype,
    mdtype: torch.dtype,
    divergence: DivergenceMethod,
    probes: Tensor | None,
    chunk_size: int | None,
) -> AugmentedFn:
    d = math.prod(dims)
    score = _score_fn(model, mdtype, work)

    def fn(y: Tensor, t: Tensor, idx: Tensor) -> Tensor:
        b = y.shape[0]
        x = y[:, :d].reshape(b, *dims)
        if divergence == "exact":
            out = exact_divergence(lambda xx: score(xx, t), x, chunk_size=chunk_size, strict=True)
            div_s = out.divergence[:, None]
        else:
            assert probes is not None
            out = hutchinson_divergence(lambda xx: score(xx, t), x, probes[:, idx], strict=True)
            div_s = out.divergence
        v = _velocity(sde, out.value, x, t)
        t64 = t.to(_F64)
        f = sde._f(t64).to(work)[:, None]
        g2 = sde._g2(t64).to(work)[:, None]
        ddelta = d * f - 0.5 * g2 * div_s
        return torch.cat([v.reshape(b, d), ddelta], 1)

    return fn


def _flow_fn(
    model: Any, sde: SDE, dims: tuple[int, ...], work: torch.dtype, mdtype: torch.dtype
) -> AugmentedFn:
    d = math.prod(dims)
    score = _score_fn(model, mdtype, work)

    def fn(y: Tensor, t: Tensor, idx: Tensor) -> Tensor:
        b = y.shape[0]
        x = y.reshape(b, *dims)
        return _velocity(sde, score(x, t), x, t).reshape(b, d)

    return fn


# =========================================================================== public
@outside_inference_mode
def log_likelihood(
    model: Any,
    x: Tensor,
    *,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    divergence: DivergenceMethod = "exact",
    n_probes: int = 1,
    probe: ProbeKind = "rademacher",
    generator: torch.Generator | None = None,
    levels: int | None = None,
    data_range: tuple[float, float] | None = None,
    n_dequant: int | None = None,
    per_sample: bool = False,
    max_steps: int = 10_000,
    chunk_size: int | None = None,
    prior: Callable[[Tensor], Tensor] | None = None,
    model_dtype: torch.dtype | None = None,
) -> LikelihoodResult:
    """Log-likelihood and bits/dim of data under a score model's probability-flow ODE.

    Integrates the augmented ODE ``(x, delta)`` from ``t_min`` to ``T`` on x's device and returns
    ``log p_{t_min}(x) = log p_T(z) + int div v dt`` (Chen et al. 2018; Song et al. 2021, eq. 39);
    see the module docstring for the maths, bits/dim and the float policy.

    Args:
        model: a score model (``sde`` and ``score(x, t)``): :class:`scoresde.ScoreModel`, an
            oracle.
        x: data, ``(B, *dims)``; any floating dtype (upcast to float64).
        method: ``"dopri5"`` or ``"bosh3"`` (this module's batched loop, shared or per-sample
            steps), or another adaptive method of :mod:`solvers` (shared steps).
        rtol: relative local error tolerance (``docs/likelihood.md`` measures what it buys).
        atol: absolute local error tolerance.
        divergence: ``"exact"`` (D VJPs per evaluation) or ``"hutchinson"`` (K probes).
        n_probes: K, Hutchinson probes per sample, drawn once per solve.
        probe: ``"rademacher"`` or ``"gaussian"``.
        generator: randomness for the probes and the dequantization.
        levels: number of discrete levels per dimension (discrete data), or None (continuous).
        data_range: ``(lo, hi)``, values of the first and last level (with ``levels``); as
            recorded by :class:`scoresde.Dataset` (``levels=ds.levels,
            data_range=ds.data_range``).
        n_dequant: uniform dequantization draws S per data point (discrete data only; default 1
            there, 0 for continuous data). S = 1: the Jensen bound; S > 1: the
            importance-weighted bound (needs ``divergence="exact"``); 0: the density at the
            level itself times ``Delta^D``.
        per_sample: give every sample its own step size and error control.
        max_steps: bound on each sample's step attempts; beyond it :class:`ConvergenceError`.
        chunk_size: basis vectors per backward pass of the exact divergence (None: automatic).
        prior: ``log p_T`` as a function of the latent ``(B, *dims) -> (B,)`` (default
            ``model.sde.prior_logp``).
        model_dtype: dtype the network is evaluated in (default: its parameters' dtype, or
            the working dtype for parameter-free models).

    Returns:
        :class:`LikelihoodResult`.

    Raises:
        ConvergenceError: a sample's solve did not converge (names the samples).
        ValueError: bad arguments (named), ``n_dequant > 1`` with Hutchinson, or a model whose
            score is not differentiable in ``x`` (its divergence would silently be zero).
    """
    sde = _check_model(model)
    x = _check_input(x, "x")
    rtol, atol = _positive("rtol", rtol), _positive("atol", atol)
    if divergence not in get_args(DivergenceMethod):
        raise ValueError(
            f"divergence must be one of {list(get_args(DivergenceMethod))}, got {divergence!r}"
        )
    n_probes = _count("n_probes", n_probes)
    if divergence == "exact" and n_probes != 1:
        raise ValueError(f"n_probes applies to divergence='hutchinson', got n_probes={n_probes}")
    if probe not in PROBE_KINDS:
        raise ValueError(f"probe must be one of {list(PROBE_KINDS)}, got probe={probe!r}")
    max_steps = _count("max_steps", max_steps)
    if not isinstance(per_sample, bool):
        raise TypeError(f"per_sample must be a bool, got {per_sample!r}")
    quant = _check_quantization(levels, data_range)
    if n_dequant is None:
        n_dequant = 0 if quant is None else 1
    n_dequant = _count("n_dequant", n_dequant, minimum=0)
    if quant is None and n_dequant > 0:
        raise ValueError(
            f"n_dequant={n_dequant} needs discrete data: pass levels and data_range (continuous "
            "data are not dequantized)"
        )
    if divergence == "hutchinson" and n_dequant > 1:
        raise ValueError(
            f"n_dequant={n_dequant} with divergence='hutchinson' is not a bound: the "
            "importance-weighted bound averages p over the draws (a logsumexp of log p), and "
            "a Hutchinson estimate is unbiased for log p only, so it biases the result upwards "
            "(above the true log P); use divergence='exact' for n_dequant > 1, or n_dequant=1 "
            "(the Jensen bound, unbiased with Hutchinson)"
        )

    work = _work_dtype(x.device)
    mdtype = _model_dtype(model, work, model_dtype)
    b, dims = x.shape[0], tuple(x.shape[1:])
    d = math.prod(dims)
    xw = x.detach().to(work)

    # data points, dequantized: rows s * B + i for draw s of data point i
    if quant is not None:
        levels_, lo, width = quant
        xw = _check_on_grid(xw, levels_, lo, width, x.dtype)
        n_draws = max(1, n_dequant)
        if n_dequant > 0:
            rows = dequantize(xw, levels_, data_range, n_dequant, generator=generator)  # type: ignore[arg-type]
            rows = rows.reshape(n_draws * b, *dims)
        else:
            rows = xw
    else:
        n_draws, width, rows = 1, 1.0, xw
    n_rows = rows.shape[0]

    probes = None
    n_div = 1
    if divergence == "hutchinson":
        probes = sample_probes(
            (n_rows, *dims), n_probes, probe, generator=generator, device=x.device, dtype=work
        )
        n_div = n_probes

    fn = _augmented_fn(model, sde, dims, work, mdtype, divergence, probes, chunk_size)
    y0 = torch.cat(
        [rows.reshape(n_rows, d), torch.zeros(n_rows, n_div, dtype=work, device=x.device)], 1
    )
    with torch.no_grad():
        sol = _solve(
            fn,
            y0,
            sde.t_min,
            sde.T,
            method=method,
            rtol=rtol,
            atol=atol,
            per_sample=per_sample,
            max_steps=max_steps,
        )
        _raise_if_failed(sol, "log_likelihood", method, rtol, atol, b)
        z = sol.y[:, :d].reshape(n_rows, *dims)
        delta = sol.y[:, d:]  # (rows, K)
        prior_fn = sde.prior_logp if prior is None else prior
        prior_lp = prior_fn(z).to(work)
        if prior_lp.shape != (n_rows,):
            raise ValueError(f"prior must return shape ({n_rows},), got {tuple(prior_lp.shape)}")
        lp = (prior_lp[:, None] + delta).reshape(n_draws, b, n_div)
        if quant is not None:
            lp = lp + d * math.log(width)
        lp = torch.logsumexp(lp, 0) - math.log(n_draws)  # (B, K)
        log_prob = lp.mean(1)
        if divergence == "exact":
            stderr = torch.zeros_like(log_prob)
        elif n_div > 1:
            stderr = lp.std(1) / math.sqrt(n_div)
        else:
            stderr = torch.full_like(log_prob, math.nan)
    return LikelihoodResult(
        log_prob=log_prob,
        bpd=bits_per_dim(log_prob, d),
        nfe=sol.nfe,
        z=z[:b],
        prior_logp=prior_lp[:b],
        delta_logp=delta[:b].mean(1),
        stderr=stderr,
        nfe_per_sample=sol.nfe_per_sample.reshape(n_draws, b).sum(0),
        steps=sol.steps.reshape(n_draws, b).sum(0),
        dim=d,
    )


def _flow(
    model: Any,
    x: Tensor,
    forward: bool,
    method: str,
    rtol: float,
    atol: float,
    per_sample: bool,
    max_steps: int,
    model_dtype: torch.dtype | None,
) -> Tensor:
    sde = _check_model(model)
    name = "x" if forward else "z"
    x = _check_input(x, name)
    rtol, atol = _positive("rtol", rtol), _positive("atol", atol)
    max_steps = _count("max_steps", max_steps)
    work = _work_dtype(x.device)
    mdtype = _model_dtype(model, work, model_dtype)
    b, dims = x.shape[0], tuple(x.shape[1:])
    fn = _flow_fn(model, sde, dims, work, mdtype)
    t0, t1 = (sde.t_min, sde.T) if forward else (sde.T, sde.t_min)
    with torch.no_grad():
        sol = _solve(
            fn,
            x.detach().to(work).reshape(b, -1),
            t0,
            t1,
            method=method,
            rtol=rtol,
            atol=atol,
            per_sample=per_sample,
            max_steps=max_steps,
        )
    _raise_if_failed(sol, "encode" if forward else "decode", method, rtol, atol, b)
    return sol.y.reshape(x.shape)


def encode(
    model: Any,
    x: Tensor,
    *,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    per_sample: bool = False,
    max_steps: int = 10_000,
    model_dtype: torch.dtype | None = None,
) -> Tensor:
    """The latent ``z = x(T)`` of data ``x = x(t_min)`` through the probability-flow ODE.

    Adaptive integration from ``t_min`` up to ``T`` (the same loop and float policy as
    :func:`log_likelihood`); the inverse of :func:`decode` up to the solver's error.

    Args:
        model: a score model (``sde``, ``score``).
        x: data ``(B, *dims)``.
        method: adaptive solver, as :func:`log_likelihood`.
        rtol: relative tolerance, as :func:`log_likelihood`.
        atol: absolute tolerance, as :func:`log_likelihood`.
        per_sample: per-sample step control, as :func:`log_likelihood`.
        max_steps: bound on the step attempts, as :func:`log_likelihood`.
        model_dtype: dtype of the network, as :func:`log_likelihood`.

    Returns:
        ``z``, x's shape, float64 (float32 on MPS), on x's device.
    """
    return _flow(model, x, True, method, rtol, atol, per_sample, max_steps, model_dtype)


def decode(
    model: Any,
    z: Tensor,
    *,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    per_sample: bool = False,
    max_steps: int = 10_000,
    model_dtype: torch.dtype | None = None,
) -> Tensor:
    """Data ``x = x(t_min)`` from a latent ``z = x(T)`` through the probability-flow ODE
    (adaptive integration from ``T`` down to ``t_min``; the inverse of :func:`encode`).

    Returns:
        ``x``, z's shape, float64 (float32 on MPS), on z's device.
    """
    return _flow(model, z, False, method, rtol, atol, per_sample, max_steps, model_dtype)
