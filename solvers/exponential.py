"""Exponential integrators in log-SNR time: DDIM, DPM-Solver-2/3, DPM-Solver++ 2S/2M/3M.

For a Gaussian schedule ``x_t = alpha_t x_0 + sigma_t eps`` write ``lambda = log(alpha /
sigma) = log_snr / 2`` (half the log-SNR of :class:`solvers.Schedule`; increasing as ``t``
decreases) and ``h = lambda_t - lambda_s`` for a step ``s -> t`` (``h > 0`` when sampling).
The probability-flow ODE has the exact solutions (variation of constants; Lu et al. 2022a,
eq. 3.4; Lu et al. 2022b, eq. 8; integrals over ``[lambda_s, lambda_t]``)

    noise prediction:  x_t = (alpha_t / alpha_s) x_s - alpha_t int e^{-lambda} eps(lambda) dlambda
    data prediction:   x_t = (sigma_t / sigma_s) x_s + sigma_t int e^{lambda} x0(lambda) dlambda

The linear part is integrated exactly; only the network output is approximated, by a Taylor
polynomial in ``lambda``. With ``phi_k`` (:func:`phi`) the integrals of the Taylor terms are

    sigma_t int e^{lambda} (lambda - lambda_s)^k / k! dlambda = alpha_t h^{k+1} phi_{k+1}(-h)
    alpha_t int e^{-lambda} (lambda - lambda_s)^k / k! dlambda = sigma_t h^{k+1} phi_{k+1}(h)

Everything here is written in ``(lambda, alpha, sigma)`` only, so it works for any schedule:
VP, sub-VP, cosine, VE and EDM (``alpha = 1``). Solvers consume a
:class:`solvers.DenoiserTermLike` (an x0 prediction and the schedule); where a method is
stated for noise prediction, ``eps = (x - alpha x0) / sigma`` (:func:`eps_from_x0`).

Every solver precomputes, in ``init``, all coefficients of all steps in float64 (the half
log-SNR, alpha and sigma at every grid point and at the intermediate points
``t_from_log_snr(lambda_s + r h)`` of the single-step methods); ``step`` indexes them with a
Python-int step index (no host synchronisation) and casts them to the state dtype.

The shared part at the top is imported by the other log-SNR solvers (UniPC, PLMS, DEIS in
:mod:`solvers.exponential_multistep`) rather than re-derived there: the log-SNR maths
(:func:`half_log_snr`, :class:`LogSNRPoints`, :func:`log_snr_points`,
:func:`points_at_half_log_snr`, :func:`phi`, :func:`eps_from_x0`, :func:`coef`), the per-step
orders of multistep methods with the one ``lower_order_final`` rule
(:func:`multistep_orders`), the one state class (:class:`ExponentialState`) and the one
multistep step (:class:`MultistepTable`, :class:`ExponentialMultistep`).

Sources: Song et al. 2021, "Denoising Diffusion Implicit Models" (DDIM); Lu et al. 2022a,
"DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling in Around 10 Steps"
(NeurIPS 2022); Lu et al. 2022b, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models" (arXiv:2211.01095); Hochbruck & Ostermann 2010, "Exponential
integrators" (Acta Numerica; the ``phi`` functions).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Generic, Literal, NamedTuple, TypeVar

import torch
from torch import Tensor

from solvers.base import Solver, check_nfe
from solvers.broadcast import coef
from solvers.protocols import DenoiserTermLike, Schedule

__all__ = [
    # shared log-SNR maths
    "half_log_snr",
    "LogSNRPoints",
    "log_snr_points",
    "points_at_half_log_snr",
    "phi",
    "eps_from_x0",
    "multistep_orders",
    "check_lower_order_final",
    "coef",
    "combine",
    "ExponentialState",
    "MultistepTable",
    "ExponentialMultistep",
    # solvers
    "DDIM",
    "DPMSolver2",
    "DPMSolver3",
    "DPMSolverPP2S",
    "DPMSolverPP2M",
    "DPMSolverPP3M",
    "BUILTINS",
]

_F64 = torch.float64

# =========================================================================== shared maths


def half_log_snr(schedule: Schedule, t: Tensor) -> Tensor:
    """``lambda(t) = log(alpha(t) / sigma(t)) = log_snr(t) / 2``, the time variable of the
    DPM-Solver papers (Lu et al. 2022a, Sec. 3.1), in float64.

    Args:
        schedule: the :class:`solvers.Schedule`.
        t: times, any shape, float64.

    Returns:
        ``lambda(t)``, same shape, float64 (increasing as ``t`` decreases).
    """
    return schedule.log_snr(t).to(_F64) / 2.0


@dataclass(frozen=True)
class LogSNRPoints:
    """A set of times with the schedule quantities exponential integrators need.

    Attributes (all float64, the same shape ``(M,)``):
        t: the times.
        lam: ``lambda = log(alpha / sigma) = log_snr / 2`` at ``t``.
        alpha: ``alpha(t)``.
        sigma: ``sigma(t)``.
    """

    t: Tensor
    lam: Tensor
    alpha: Tensor
    sigma: Tensor


def log_snr_points(schedule: Schedule, t: Tensor) -> LogSNRPoints:
    """``lambda``, ``alpha`` and ``sigma`` at the times ``t`` (e.g. a whole grid ``ts``).

    Args:
        schedule: the :class:`solvers.Schedule`.
        t: times, shape ``(M,)``, float64.

    Returns:
        :class:`LogSNRPoints` with float64 fields of shape ``(M,)`` on ``t``'s device.
    """
    t = t.to(_F64)
    return LogSNRPoints(
        t=t,
        lam=half_log_snr(schedule, t),
        alpha=schedule.alpha(t).to(_F64),
        sigma=schedule.sigma(t).to(_F64),
    )


def points_at_half_log_snr(schedule: Schedule, lam: Tensor) -> LogSNRPoints:
    """The points whose half log-SNR is ``lam``: ``t = t_from_log_snr(2 lam)``.

    Used for the intermediate points ``lambda_s + r h`` of single-step methods. ``lam``,
    ``alpha`` and ``sigma`` of the result are recomputed from the time actually returned by
    the schedule's inverse, so the coefficients built from them are consistent with the time
    at which the network is evaluated even if the inverse is inexact or clamped.

    Args:
        schedule: the :class:`solvers.Schedule`.
        lam: target half log-SNRs, shape ``(M,)``, float64.

    Returns:
        :class:`LogSNRPoints`, shape ``(M,)``.
    """
    t = schedule.t_from_log_snr(2.0 * lam.to(_F64)).to(_F64)
    return log_snr_points(schedule, t)


_PHI_SERIES_TERMS = 24
_PHI_SERIES_RADIUS = 1.0


def phi(k: int, z: Tensor) -> Tensor:
    """The exponential-integrator function ``phi_k(z)``, elementwise, in a stable form.

    ``phi_0(z) = e^z`` and ``phi_k(z) = int_0^1 e^{(1 - u) z} u^{k-1} / (k-1)! du =
    sum_{j >= 0} z^j / (j + k)!``, so ``phi_1(z) = expm1(z) / z``, ``phi_2(z) = (phi_1(z) - 1)
    / z``, ``phi_3(z) = (phi_2(z) - 1/2) / z``, ``phi_k(0) = 1 / k!`` (Hochbruck & Ostermann
    2010, eq. 2.10). The recurrence ``phi_{k+1} = (phi_k - 1/k!) / z`` cancels catastrophically
    for small ``|z|``; there (``|z| < 1``) the Taylor series is summed instead (24 terms:
    error below 1e-25), so the result is accurate to a few ulps everywhere, including ``z = 0``.

    The DDIM / DPM-Solver coefficients in this notation: ``-expm1(-h) = h phi_1(-h)``,
    ``expm1(h) / h - 1 = h phi_2(h)``, ``(expm1(-h) + h) / h^2 = phi_2(-h)``.

    Args:
        k: the index, an int >= 0.
        z: argument, any shape, floating dtype (use float64 for coefficients).

    Returns:
        ``phi_k(z)``, shape and dtype of ``z``.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"phi: k must be an int >= 0, got k={k!r}")
    if k == 0:
        return torch.exp(z)
    small = z.abs() < _PHI_SERIES_RADIUS
    # Taylor series sum_j z^j / (j + k)! by Horner's rule
    series = torch.full_like(z, 1.0 / math.factorial(_PHI_SERIES_TERMS - 1 + k))
    for j in range(_PHI_SERIES_TERMS - 2, -1, -1):
        series = series * z + 1.0 / math.factorial(j + k)
    # recurrence from phi_1 = expm1(z) / z, on a safe argument (the other branch is discarded)
    zs = torch.where(small, torch.ones_like(z), z)
    rec = torch.expm1(zs) / zs
    for j in range(1, k):
        rec = (rec - 1.0 / math.factorial(j)) / zs
    return torch.where(small, series, rec)


def eps_from_x0(x: Tensor, x0: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """Noise prediction from the data prediction: ``eps = (x - alpha x0) / sigma``.

    Args:
        x: state, shape ``(B, *dims)``.
        x0: x0 prediction at ``(x, t)``, shape of ``x``.
        alpha, sigma: ``alpha(t)``, ``sigma(t)``, shape ``()`` or ``(B,)`` (any float dtype;
            cast to ``x.dtype`` through :func:`coef`).

    Returns:
        ``eps``, shape and dtype of ``x``.
    """
    return (x - coef(alpha, x) * x0) / coef(sigma, x)


def check_lower_order_final(value: object) -> None:
    """Validate a ``lower_order_final`` option (see :func:`multistep_orders`).

    Raises:
        TypeError: ``value`` is not ``None``, ``True`` or ``False``.
    """
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"lower_order_final must be None, True or False, got {value!r}")


def multistep_orders(
    n_steps: int,
    order: int,
    lower_order_final: bool | None = False,
    lower_order_final_steps: int = 0,
) -> tuple[int, ...]:
    """Per-step orders of a multistep method of order ``order`` over ``n_steps`` steps.

    Step ``i`` (0-based) uses the ``i`` previous evaluations it has, so its order is at most
    ``i + 1`` (warm-up: 1, 2, ..., ``order``). The final-step rule (Lu et al. 2022b, Sec. 5 /
    dpm-solver ``lower_order_final``; UniPC) also limits step ``i`` to ``n_steps - i``: the last
    step is first order and the one before at most second order, which stabilises very few-step
    sampling where the last log-SNR steps are large. For example
    ``multistep_orders(6, 3, True) == (1, 2, 3, 3, 2, 1)``.

    ``lower_order_final`` means the same for every multistep method of the package (DPM-Solver++
    2M/3M, UniPC): ``True`` applies the rule always, ``False`` never, and ``None`` (their
    default) only to solves of fewer than ``lower_order_final_steps`` steps, the method's class
    attribute of that name (15 for DPM-Solver++, diffusers' ``DPMSolverMultistepScheduler``
    rule; 10 for UniPC, the dpm-solver reference code's rule).

    Args:
        n_steps: number of steps, >= 1.
        order: the method's order, >= 1.
        lower_order_final: ``True``, ``False`` or ``None`` (see above).
        lower_order_final_steps: the threshold used when ``lower_order_final`` is ``None``.

    Returns:
        A tuple of ``n_steps`` ints in ``[1, order]``.
    """
    if lower_order_final is None:
        lower = n_steps < lower_order_final_steps
    else:
        lower = lower_order_final
    return tuple(
        min(order, i + 1, n_steps - i) if lower else min(order, i + 1) for i in range(n_steps)
    )


TableT = TypeVar("TableT")


@dataclass(frozen=True)
class ExponentialState(Generic[TableT]):
    """State of an exponential integrator between steps (every solver of this module and of
    :mod:`solvers.exponential_multistep`).

    Attributes:
        index: the 0-based index of the next step (a Python int: branching on it needs no
            host synchronisation).
        table: the method's per-step coefficients, computed once by ``init`` for the whole
            grid (e.g. a :class:`MultistepTable`).
        history: previous evaluations of a multistep method (x0 or noise predictions), most
            recent first (empty for single-step methods).
    """

    index: int
    table: TableT
    history: tuple[Tensor, ...] = ()


def _steps(ts: Tensor) -> int:
    return int(ts.numel()) - 1


def combine(x_coef: Tensor, x: Tensor, weights: Tensor, ys: Sequence[Tensor]) -> Tensor:
    """``x_coef * x + sum_j weights[j] * ys[j]`` (0-d coefficients in ``x``'s dtype)."""
    out = x_coef * x
    for j, y in enumerate(ys):
        out = out + weights[j] * y
    return out


@dataclass(frozen=True)
class MultistepTable:
    """Per-step coefficients of a one-evaluation multistep method over a grid of ``N`` steps:

        x_{i+1} = x_coef[i] x_i + sum_{j < orders[i]} weights[i, j] y_{i-j}

    with ``y`` the method's evaluations, newest first (x0 predictions for DDIM and
    DPM-Solver++(2M)/(3M) and UniPC's predictor, noise predictions for PLMS and DEIS). Built
    once by ``init`` in float64, stored in the state's dtype and on its device.

    Attributes:
        orders: the order of every step (warm-up and final steps included), Python ints.
        x_coef: ``(N,)`` coefficients of ``x_i``.
        weights: ``(N, K)`` weights of the history, ``K`` the largest order of the method
            (zero past the order of a step).
    """

    orders: tuple[int, ...]
    x_coef: Tensor
    weights: Tensor

    @property
    def history_length(self) -> int:
        """Evaluations a later step can use: ``K - 1`` (a Python int, from the shape)."""
        return int(self.weights.shape[1]) - 1

    def update(self, i: int, x: Tensor, ys: Sequence[Tensor]) -> Tensor:
        """Step ``i``: ``x_coef[i] x + sum_{j < orders[i]} weights[i, j] ys[j]``."""
        return combine(self.x_coef[i], x, self.weights[i], ys[: self.orders[i]])


MultistepTableT = TypeVar("MultistepTableT", bound=MultistepTable)


class ExponentialMultistep(Solver[DenoiserTermLike, ExponentialState[MultistepTableT]]):
    """Shared step of the one-evaluation multistep methods whose steps are the rows of a
    :class:`MultistepTable` (DDIM, DPM-Solver++(2M)/(3M), PLMS, DEIS): evaluate ``y_i`` at
    ``(x_i, t_i)`` (:meth:`evaluate`: the x0 prediction unless overridden), take the table's
    update and keep the newest ``history_length`` evaluations in the state. Subclasses build
    the table in :meth:`init`."""

    term_type = DenoiserTermLike
    evals_per_step = 1

    @abc.abstractmethod
    def init(
        self, term: DenoiserTermLike, ts: Tensor, x: Tensor
    ) -> ExponentialState[MultistepTableT]:
        """The :class:`MultistepTable` of the whole grid ``ts`` ``(N + 1,)``, index 0."""

    def evaluate(
        self, term: DenoiserTermLike, x: Tensor, t: Tensor, table: MultistepTableT, i: int
    ) -> Tensor:
        """The value the history holds for step ``i``: the x0 prediction ``D(x, t)``."""
        return term.denoise(x, t)

    def step(
        self,
        term: DenoiserTermLike,
        t0: Tensor,
        t1: Tensor,
        x: Tensor,
        state: ExponentialState[MultistepTableT],
        noise: Tensor | None,
    ) -> tuple[Tensor, ExponentialState[MultistepTableT]]:
        """One step ``t0 -> t1`` of order ``table.orders[index]``; one evaluation at
        ``(x, t0)``."""
        i, table = state.index, state.table
        ys = (self.evaluate(term, x, t0, table, i), *state.history)
        history = ys[: table.history_length]
        return table.update(i, x, ys), ExponentialState(i + 1, table, history)


# =========================================================================== multistep (x0)


def _multistep_table(
    pts: LogSNRPoints, orders: tuple[int, ...], width: int, x: Tensor, d2_weight: float = 2.0
) -> MultistepTable:
    """Coefficients of DDIM / DPM-Solver++(2M) / (3M) steps of the given orders (computed in
    float64; ``width`` history weights per step, stored in ``x``'s dtype and on its device).

    With ``h_i = lambda_{i+1} - lambda_i`` and ``m_j`` the x0 prediction at grid point ``j``:

    * order 1 (DDIM): ``x_{i+1} = (sigma_{i+1}/sigma_i) x_i + A m_i``,
      ``A = -alpha_{i+1} expm1(-h_i) = alpha_{i+1} h_i phi_1(-h_i)``;
    * order 2 (DPM-Solver++(2M), Lu et al. 2022b, Algorithm 2): ``r = h_{i-1} / h_i``,
      ``D = (1 + 1/(2r)) m_i - 1/(2r) m_{i-1}``, ``x_{i+1} = ratio x_i + A D``;
    * order 3: the quadratic through ``m_{i-2}, m_{i-1}, m_i`` (in ``lambda``) integrated
      exactly: with ``r0 = h_{i-1}/h_i``, ``r1 = h_{i-2}/h_i``, ``D1_0 = (m_i - m_{i-1})/r0``,
      ``D1_1 = (m_{i-1} - m_{i-2})/r1``, ``D1 = D1_0 + r0/(r0+r1) (D1_0 - D1_1)`` (= h p') and
      ``D2 = (D1_0 - D1_1)/(r0+r1)`` (= h^2 p''/2),
      ``x_{i+1} = ratio x_i + alpha_{i+1} h [phi_1(-h) m_i + phi_2(-h) D1 + w phi_3(-h) D2]``
      with ``w = d2_weight``: 2 is the exact integral of the quadratic (third order), 1 the
      weight of the reference implementations (second order; see :class:`DPMSolverPP3M`).
    """
    lam, alpha, sigma = pts.lam, pts.alpha, pts.sigma
    n = lam.numel() - 1
    h = lam[1:] - lam[:-1]
    alpha_t = alpha[1:]
    ratio = sigma[1:] / sigma[:-1]
    a = -alpha_t * torch.expm1(-h)  # alpha_t h phi_1(-h)
    b = alpha_t * h * phi(2, -h)
    c = d2_weight * alpha_t * h * phi(3, -h)
    ones = torch.ones_like(h)
    # step-size ratios (placeholders 1 where the history does not exist yet)
    h_prev1 = torch.cat([ones[:1], h[:-1]]) if n > 1 else ones
    h_prev2 = torch.cat([ones[:2], h[:-2]]) if n > 2 else ones
    r = h_prev1 / h
    r0, r1 = r, h_prev2 / h
    # order 2: D = m0 + (m0 - m1) / (2 r)
    w2 = torch.stack([a * (1.0 + 0.5 / r), -a * 0.5 / r, torch.zeros_like(a)], dim=-1)
    # order 3: A m0 + B D1 + C D2 expanded in m0, m1, m2
    p_coef = (b * (1.0 + r0 / (r0 + r1)) + c / (r0 + r1)) / r0
    q_coef = (b * r0 / (r0 + r1) + c / (r0 + r1)) / r1
    w3 = torch.stack([a + p_coef, -p_coef - q_coef, q_coef], dim=-1)
    w1 = torch.stack([a, torch.zeros_like(a), torch.zeros_like(a)], dim=-1)
    order_t = torch.tensor(orders, device=h.device)[:, None]
    weights = torch.where(order_t == 1, w1, torch.where(order_t == 2, w2, w3))[:, :width]
    return MultistepTable(
        orders=orders,
        x_coef=ratio.to(device=x.device, dtype=x.dtype),
        weights=weights.to(device=x.device, dtype=x.dtype),
    )


class _DataPredictionMultistep(ExponentialMultistep[MultistepTable]):
    """DDIM and DPM-Solver++(2M)/(3M): one x0 evaluation per step, the previous ``order - 1``
    predictions kept in the state, the per-step orders from :meth:`_orders`."""

    default_grid = "logsnr"
    default_grid_vp = "quadratic"

    def _orders(self, n_steps: int) -> tuple[int, ...]:
        return multistep_orders(n_steps, type(self).order)

    def _d2_weight(self) -> float:
        """Weight ``w`` of ``h phi_3(-h) D2`` in third-order steps (:func:`_multistep_table`)."""
        return 2.0

    def init(
        self, term: DenoiserTermLike, ts: Tensor, x: Tensor
    ) -> ExponentialState[MultistepTable]:
        """Precompute ``x_coef = sigma_{i+1} / sigma_i`` and the history weights of every step
        (see :func:`_multistep_table`) from the whole grid ``ts`` ``(N + 1,)``."""
        pts = log_snr_points(term.schedule, ts)
        orders = self._orders(_steps(ts))
        table = _multistep_table(pts, orders, type(self).order, x, self._d2_weight())
        return ExponentialState(0, table)


@dataclass(frozen=True)
class _LowerOrderFinalMultistep(_DataPredictionMultistep):
    """DPM-Solver++(2M)/(3M): the data-prediction multistep methods with the
    ``lower_order_final`` option (one meaning everywhere, see :func:`multistep_orders`)."""

    lower_order_final: bool | None = True

    lower_order_final_steps: ClassVar[int] = 15
    """With ``lower_order_final=None`` the final-step rule applies to solves of fewer steps
    than this (diffusers' ``DPMSolverMultistepScheduler``; the dpm-solver code uses 10)."""

    def __post_init__(self) -> None:
        check_lower_order_final(self.lower_order_final)

    def _orders(self, n_steps: int) -> tuple[int, ...]:
        return multistep_orders(
            n_steps, type(self).order, self.lower_order_final, self.lower_order_final_steps
        )

    def _full_order(self) -> int:
        """The order of the multistep formula (without the final-step rule)."""
        return type(self).order

    @property
    def convergence_order(self) -> int:
        """The formula's order; at most 2 with ``lower_order_final=True``, whose first-order
        last step has a local error ``O(h^2)`` at every step count."""
        full = self._full_order()
        return min(full, 2) if self.lower_order_final is True else full


@dataclass(frozen=True)
class DDIM(_DataPredictionMultistep):
    """DDIM (Song et al. 2021, eq. 12 with eta = 0) = DPM-Solver-1 (Lu et al. 2022a, eq. 3.7)
    = first-order DPM-Solver++ (Lu et al. 2022b, eq. 10 with k = 1).

    With ``h = lambda_t - lambda_s`` and ``x0_hat = D(x_s, s)``:

        x_t = (sigma_t / sigma_s) x_s - alpha_t expm1(-h) x0_hat

    (equivalently ``x_t = (alpha_t / alpha_s) x_s - sigma_t expm1(h) eps_hat``). For
    ``alpha = 1`` (VE, EDM) this is ``x_t = x0_hat + (sigma_t / sigma_s)(x_s - x0_hat)``.
    Exact when the x0 prediction is constant along the path (e.g. a point-mass data set).

    ODE solver; order 1; 1 denoiser evaluation per step; stateless apart from the step index;
    default grid ``"quadratic"`` under VP-type schedules, ``"karras"`` under VE and EDM (by
    measurement, ``bench/grid_sweep.py``). States of any shape ``(B, *dims)``.
    """

    order = 1
    default_grid = "karras"


@dataclass(frozen=True)
class DPMSolverPP2M(_LowerOrderFinalMultistep):
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2): second-order multistep, data
    prediction.

    With ``h_i = lambda_{i+1} - lambda_i``, ``r_i = h_{i-1} / h_i`` and ``x0_i = D(x_i, t_i)``:

        D_i = (1 + 1/(2 r_i)) x0_i - 1/(2 r_i) x0_{i-1}
        x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} expm1(-h_i) D_i

    The first step (no history) is the DDIM step. The previous x0 prediction lives in the
    state.

    ODE solver; order 2; 1 denoiser evaluation per step; default grid ``"quadratic"`` under
    VP-type schedules, ``"logsnr"`` under VE and EDM (by measurement, ``bench/grid_sweep.py``).

    Args:
        lower_order_final: ``True`` (default): the last step is first order (DDIM), which
            stabilises sampling where the last log-SNR step is large (Lu et al. 2022b); chosen
            by measurement over 5-200 evaluations (``bench/grid_sweep.py``: never worse, up to
            2.7x more accurate on the median sample on the quadratic VP grid). ``None``: only
            for solves of fewer than 15 steps (``lower_order_final_steps``, diffusers' rule);
            ``False``: never (:func:`multistep_orders`).
    """

    order = 2


@dataclass(frozen=True)
class DPMSolverPP3M(_LowerOrderFinalMultistep):
    """DPM-Solver++(3M): third-order multistep, data prediction (Lu et al. 2022b, Sec. 4/App.;
    dpm-solver ``multistep_dpm_solver_third_update``): an exponential Adams-Bashforth method.

    The x0 predictions ``m_i, m_{i-1}, m_{i-2}`` at ``lambda_i, lambda_{i-1}, lambda_{i-2}``
    are interpolated by a quadratic ``p(lambda)`` which is integrated exactly against the
    exponential weight. With ``h = lambda_{i+1} - lambda_i``, ``r0 = h_{i-1} / h``,
    ``r1 = h_{i-2} / h``:

        D1_0 = (m_i - m_{i-1}) / r0,   D1_1 = (m_{i-1} - m_{i-2}) / r1
        D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1)     (= h p'(lambda_i))
        D2 = (D1_0 - D1_1) / (r0 + r1)                (= h^2 p''(lambda_i) / 2)
        x_{i+1} = (sigma_{i+1}/sigma_i) x_i
                  + alpha_{i+1} h [phi_1(-h) m_i + phi_2(-h) D1 + w phi_3(-h) D2]

    with ``w = 2`` (``coefficient="exact"``: the exact integral of the quadratic, third order,
    measured order 3 in the tests). The reference implementations (dpm-solver's
    ``multistep_dpm_solver_third_update``, diffusers' ``DPMSolverMultistepScheduler``,
    k-diffusion's ``sample_dpmpp_3m_sde``) weight ``D2`` by ``h phi_3(-h)``, ``w = 1``
    (``coefficient="lu"``): with equal steps and ``h -> 0`` their weights tend to
    ``h (22, -14, 4) / 12`` instead of the Adams-Bashforth-3 weights ``h (23, -16, 5) / 12``
    and the method is second order. The default is ``"lu"``, by measurement
    (``bench/grid_sweep.py``, 36 problems, 5-50 evaluations): the half weight damps the
    extrapolation; on the median sample it is 10-60% more accurate at 8-50 evaluations, on the
    RMS error within about 15% either way. The exact coefficient wins from about 100
    evaluations on (1.4-2x smaller errors at 100, 2-5x at 200; ``--large-nfe``).

    Warm-up: step 0 is DDIM and step 1 is the 2M step.

    ODE solver; order 2 (``"lu"``) or 3 (``"exact"``, without the final-step rule); 1
    denoiser evaluation per step; default grid ``"quadratic"`` under VP-type schedules,
    ``"logsnr"`` under VE and EDM (by measurement).

    Args:
        lower_order_final: ``True`` (default, by measurement as for :class:`DPMSolverPP2M`): the
            last step is first order and the one before second order, at every step count
            (the convergence order is then 2); ``None``: only for solves of fewer than 15 steps
            (diffusers' rule); ``False``: never (:func:`multistep_orders`).
        coefficient: ``"lu"`` (default; the reference implementations' ``h phi_3(-h)``
            weight of ``D2``, Lu et al.'s code) or ``"exact"`` (``2 h phi_3(-h)``, third
            order).
    """

    coefficient: Literal["exact", "lu"] = "lu"

    order = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.coefficient not in ("exact", "lu"):
            raise ValueError(
                f"coefficient must be 'exact' or 'lu', got coefficient={self.coefficient!r}"
            )

    def _d2_weight(self) -> float:
        return 2.0 if self.coefficient == "exact" else 1.0

    def _full_order(self) -> int:
        """3 with ``coefficient="exact"``, 2 with the reference implementations' ``"lu"``."""
        return 3 if self.coefficient == "exact" else 2

    @property
    def cold_start_order(self) -> int:
        """The first (DDIM) step caps the asymptotic order at 2 (tiny constant from high noise)."""
        return 2


# =========================================================================== single-step


@dataclass(frozen=True)
class _SinglestepTable:
    """Per-step coefficients of the single-step methods (``N`` steps; unused entries of steps
    of lower order are harmless). ``s`` is the step start, ``1``/``2`` the intermediate points,
    ``t`` the step end."""

    orders: tuple[int, ...]
    alpha_s: Tensor  # (N,)
    sigma_s: Tensor
    t1: Tensor  # intermediate point 1: time, alpha, sigma
    alpha1: Tensor
    sigma1: Tensor
    t2: Tensor  # intermediate point 2 (order 3 only)
    alpha2: Tensor
    sigma2: Tensor
    a1: Tensor  # u1 = a1 x + b1 (eps or x0)_s
    b1: Tensor
    a2: Tensor  # u2 = a2 x + b2 eps_s + c2 (eps_1 - eps_s)
    b2: Tensor
    c2: Tensor
    a: Tensor  # x_t = a x + b (eps or x0)_s + c (correction)
    b: Tensor
    c: Tensor
    rows: tuple[_SinglestepRow, ...] = ()  # the same per step, made by init (see _step_rows)


class _SinglestepRow(NamedTuple):
    """Step ``i`` of a :class:`_SinglestepTable`: the times in float64, every coefficient
    already in the state's dtype (0-d views)."""

    t1: Tensor
    t2: Tensor
    alpha_s: Tensor
    sigma_s: Tensor
    alpha1: Tensor
    sigma1: Tensor
    alpha2: Tensor
    sigma2: Tensor
    a1: Tensor
    b1: Tensor
    a2: Tensor
    b2: Tensor
    c2: Tensor
    a: Tensor
    b: Tensor
    c: Tensor


RowT = TypeVar("RowT", bound=tuple[Any, ...])


def _step_rows(
    table: object, row_type: type[RowT], x: Tensor, times: tuple[str, ...]
) -> tuple[RowT, ...]:
    """The per-step rows of a single-step method's table, made once in ``init``: column
    ``name`` of ``row_type`` is the table's ``(N,)`` tensor of that name, cast to ``x``'s dtype
    (``times`` stay float64) and split into 0-d views. ``step`` then reads step ``i``'s
    coefficients with one tuple index instead of a tensor index and a dtype cast for each
    (the values are those of :func:`coef`; the results are bitwise the same)."""
    columns = []
    for name in row_type._fields:  # type: ignore[attr-defined]
        column: Tensor = getattr(table, name)
        if name not in times:
            column = column.to(device=x.device, dtype=x.dtype)
        columns.append(column.unbind(0))
    return tuple(row_type(*values) for values in zip(*columns))


def _check_orders_field(owner: str, orders: object, max_order: int) -> tuple[int, ...] | None:
    if orders is None:
        return None
    if isinstance(orders, (str, bytes)) or not isinstance(orders, Sequence):
        raise TypeError(f"{owner}: orders must be a sequence of ints or None, got {orders!r}")
    values = tuple(orders)
    if not values or any(
        isinstance(o, bool) or not isinstance(o, int) or not 1 <= o <= max_order for o in values
    ):
        raise ValueError(
            f"{owner}: orders must be a non-empty sequence of ints in [1, {max_order}] (one "
            f"per step), got orders={orders!r}"
        )
    return values


def _fast_orders(nfe: int, order: int) -> tuple[int, ...]:
    """DPM-Solver-fast order schedule (Lu et al. 2022a, Sec. 3.4) for a budget of ``nfe``."""
    if order == 3:
        k = nfe // 3 + 1
        if nfe % 3 == 0:
            return (3,) * (k - 2) + (2, 1)
        return (3,) * (k - 1) + (nfe % 3,)
    # order 2 (dpm-solver's singlestep rule): all second order, a first-order last step if odd
    return (2,) * (nfe // 2) + ((1,) if nfe % 2 else ())


class _DPMSolverSinglestep(Solver[DenoiserTermLike, ExponentialState[_SinglestepTable]]):
    """Shared machinery of DPM-Solver-2 and -3 (noise prediction, Lu et al. 2022a)."""

    term_type = DenoiserTermLike
    default_grid = "logsnr"
    default_grid_vp = "quadratic"
    orders: tuple[int, ...] | None

    def __post_init__(self) -> None:
        checked = _check_orders_field(type(self).__name__, self.orders, type(self).order)
        object.__setattr__(self, "orders", checked)

    def _step_orders(self, n_steps: int) -> tuple[int, ...]:
        if self.orders is None:
            return (type(self).order,) * n_steps
        if len(self.orders) != n_steps:
            raise ValueError(
                f"{type(self).__name__}: the order schedule orders={self.orders} has "
                f"{len(self.orders)} entries (one per step) but the grid has {n_steps} steps; "
                f"build the grid with the step count returned by for_budget(nfe), or pass "
                f"orders=None"
            )
        return self.orders

    def nfe_for_steps(self, n_steps: int) -> int:
        """``n_steps * order`` (``orders=None``), else ``sum(orders)`` (``n_steps`` must equal
        ``len(orders)``)."""
        return sum(self._step_orders(n_steps))

    def steps_for_nfe(self, nfe: int) -> int:
        """Largest affordable step count; with a fixed ``orders`` schedule, its length.

        Raises:
            ValueError: ``nfe`` invalid or smaller than the cost of the schedule.
        """
        if self.orders is None:
            return super().steps_for_nfe(nfe)
        check_nfe(nfe)
        if sum(self.orders) > nfe:
            raise ValueError(
                f"{type(self).__name__} with orders={self.orders} needs {sum(self.orders)} "
                f"evaluations; nfe={nfe} is too small"
            )
        return len(self.orders)

    def for_budget(self, nfe: int) -> tuple[_DPMSolverSinglestep, int]:
        """The solver with the DPM-Solver-fast order schedule that uses ``nfe`` evaluations
        exactly (Lu et al. 2022a, Sec. 3.4), and its step count ``K``.

        Order 3: ``K = nfe // 3 + 1`` steps with orders ``[3, ..., 3, 1]`` if ``nfe % 3 == 1``,
        ``[3, ..., 3, 2]`` if ``nfe % 3 == 2`` and ``[3, ..., 3, 2, 1]`` if ``nfe % 3 == 0``.
        Order 2 (dpm-solver's rule): ``[2, ..., 2]`` (``K = nfe / 2``) for even ``nfe``, else
        ``[2, ..., 2, 1]`` (``K = nfe // 2 + 1``). Any existing ``orders`` is replaced.

        Raises:
            ValueError: ``nfe`` is not an int >= 1.
        """
        check_nfe(nfe)
        orders = _fast_orders(nfe, type(self).order)
        return replace(self, orders=orders), len(orders)  # type: ignore[type-var]

    def init(
        self, term: DenoiserTermLike, ts: Tensor, x: Tensor
    ) -> ExponentialState[_SinglestepTable]:
        """Precompute lambda/alpha/sigma at the grid points and at the intermediate points
        ``t_from_log_snr(lambda_s + r h)`` (``r1 = 1/2`` for second-order steps, ``r1 = 1/3``,
        ``r2 = 2/3`` for third-order steps) and the update coefficients of every step.

        Raises:
            ValueError: ``orders`` is set and its length is not the number of grid steps.
        """
        orders = self._step_orders(_steps(ts))
        schedule = term.schedule
        pts = log_snr_points(schedule, ts)
        lam_s, h = pts.lam[:-1], pts.lam[1:] - pts.lam[:-1]
        order_t = torch.tensor(orders, device=h.device)
        r1 = torch.where(order_t == 3, h.new_tensor(1.0 / 3.0), h.new_tensor(0.5))
        p1 = points_at_half_log_snr(schedule, lam_s + r1 * h)
        p2 = points_at_half_log_snr(schedule, lam_s + (2.0 / 3.0) * h)
        hh1, hh2 = p1.lam - lam_s, p2.lam - lam_s  # r1 h, r2 h as actually realised
        alpha_s, sigma_s = pts.alpha[:-1], pts.sigma[:-1]
        alpha_t, sigma_t = pts.alpha[1:], pts.sigma[1:]
        # final update: order 2 uses -sigma_t expm1(h) / (2 r1), order 3 -sigma_t h phi_2(h) / r2
        c_order2 = -sigma_t * torch.expm1(h) * h / (2.0 * hh1)
        c_order3 = -sigma_t * h * h * phi(2, h) / hh2
        table = _SinglestepTable(
            orders=orders,
            alpha_s=alpha_s,
            sigma_s=sigma_s,
            t1=p1.t,
            alpha1=p1.alpha,
            sigma1=p1.sigma,
            t2=p2.t,
            alpha2=p2.alpha,
            sigma2=p2.sigma,
            a1=p1.alpha / alpha_s,
            b1=-p1.sigma * torch.expm1(hh1),
            a2=p2.alpha / alpha_s,
            b2=-p2.sigma * torch.expm1(hh2),
            c2=-p2.sigma * hh2 * hh2 * phi(2, hh2) / hh1,  # -sigma_2 (r2/r1) r2 h phi_2(r2 h)
            a=alpha_t / alpha_s,
            b=-sigma_t * torch.expm1(h),
            c=torch.where(order_t == 3, c_order3, c_order2),
        )
        rows = _step_rows(table, _SinglestepRow, x, ("t1", "t2"))
        return ExponentialState(0, replace(table, rows=rows))

    def step(
        self,
        term: DenoiserTermLike,
        t0: Tensor,
        t1: Tensor,
        x: Tensor,
        state: ExponentialState[_SinglestepTable],
        noise: Tensor | None,
    ) -> tuple[Tensor, ExponentialState[_SinglestepTable]]:
        """One DPM-Solver step ``t0 -> t1`` of order ``orders[index]`` (that many denoiser
        evaluations)."""
        i, tab = state.index, state.table
        order, r = tab.orders[i], tab.rows[i]  # r: step i's coefficients, in x's dtype
        # stage 0: eps at the step start
        eps_s = eps_from_x0(x, term.denoise(x, t0), r.alpha_s, r.sigma_s)
        x1 = r.a * x + r.b * eps_s  # DPM-Solver-1
        if order == 1:
            return x1, ExponentialState(i + 1, tab)
        # stage 1: first-order step to lambda_s + r1 h
        u1 = r.a1 * x + r.b1 * eps_s
        eps_1 = eps_from_x0(u1, term.denoise(u1, r.t1), r.alpha1, r.sigma1)
        if order == 2:  # Algorithm 1
            return x1 + r.c * (eps_1 - eps_s), ExponentialState(i + 1, tab)
        # stage 2 (Algorithm 2): second-order step to lambda_s + r2 h
        u2 = r.a2 * x + r.b2 * eps_s + r.c2 * (eps_1 - eps_s)
        eps_2 = eps_from_x0(u2, term.denoise(u2, r.t2), r.alpha2, r.sigma2)
        return x1 + r.c * (eps_2 - eps_s), ExponentialState(i + 1, tab)


@dataclass(frozen=True)
class DPMSolver2(_DPMSolverSinglestep):
    """DPM-Solver-2 (Lu et al. 2022a, Algorithm 1, ``r1 = 1/2``): single-step, second order,
    noise prediction.

    With ``h = lambda_t - lambda_s``, ``s1 = t_lambda(lambda_s + r1 h)``, ``eps = (x - alpha
    x0_hat) / sigma``:

        u = (alpha_s1 / alpha_s) x_s - sigma_s1 expm1(r1 h) eps(x_s, s)
        x_t = (alpha_t / alpha_s) x_s - sigma_t expm1(h) eps(x_s, s)
              - sigma_t / (2 r1) expm1(h) (eps(u, s1) - eps(x_s, s))

    ODE solver; order 2; 2 denoiser evaluations per step; default grid ``"quadratic"`` under
    VP-type schedules, ``"karras"`` under VE and EDM (by measurement, ``bench/grid_sweep.py``).

    Args:
        orders: per-step orders in ``{1, 2}`` (one per grid step; a first-order step is
            DPM-Solver-1 = DDIM), or ``None`` for second order everywhere. :meth:`for_budget`
            sets it so that an odd budget is used exactly (last step first order).
    """

    order = 2
    evals_per_step = 2
    default_grid = "karras"
    orders: tuple[int, ...] | None = None


@dataclass(frozen=True)
class DPMSolver3(_DPMSolverSinglestep):
    """DPM-Solver-3 (Lu et al. 2022a, Algorithm 2, ``r1 = 1/3``, ``r2 = 2/3``): single-step,
    third order, noise prediction.

    With ``h = lambda_t - lambda_s``, ``s_k = t_lambda(lambda_s + r_k h)``, ``eps_s =
    eps(x_s, s)``:

        u1 = (alpha_s1/alpha_s) x_s - sigma_s1 expm1(r1 h) eps_s
        D1 = eps(u1, s1) - eps_s
        u2 = (alpha_s2/alpha_s) x_s - sigma_s2 expm1(r2 h) eps_s
             - sigma_s2 (r2/r1) (expm1(r2 h)/(r2 h) - 1) D1
        D2 = eps(u2, s2) - eps_s
        x_t = (alpha_t/alpha_s) x_s - sigma_t expm1(h) eps_s - sigma_t/r2 (expm1(h)/h - 1) D2

    (``expm1(z)/z - 1 = z phi_2(z)`` is evaluated stably by :func:`phi`.)

    ODE solver; order 3; 3 denoiser evaluations per step; default grid ``"quadratic"`` under
    VP-type schedules, ``"logsnr"`` under VE and EDM (by measurement, ``bench/grid_sweep.py``).

    Args:
        orders: per-step orders in ``{1, 2, 3}`` (one per grid step; order 2 is DPM-Solver-2
            with ``r1 = 1/2``, order 1 is DDIM), or ``None`` for third order everywhere.
            :meth:`for_budget` sets the DPM-Solver-fast schedule (Sec. 3.4): ``[3, ..., 3, 1]``
            for ``nfe % 3 == 1``, ``[3, ..., 3, 2]`` for ``nfe % 3 == 2``, ``[3, ..., 3, 2, 1]``
            for ``nfe % 3 == 0``, with ``nfe // 3 + 1`` steps.
    """

    order = 3
    evals_per_step = 3
    orders: tuple[int, ...] | None = None


@dataclass(frozen=True)
class _PP2STable:
    t1: Tensor  # (N,) intermediate times
    ratio1: Tensor  # sigma_1 / sigma_s
    a1: Tensor  # -alpha_1 expm1(-r h)
    ratio: Tensor  # sigma_t / sigma_s
    a: Tensor  # -alpha_t expm1(-h)
    w: Tensor  # 1 / (2 r)
    rows: tuple[_PP2SRow, ...] = ()  # the same per step, made by init (see _step_rows)


class _PP2SRow(NamedTuple):
    """Step ``i`` of a :class:`_PP2STable` (``t1`` float64, the rest in the state's dtype)."""

    t1: Tensor
    ratio1: Tensor
    a1: Tensor
    ratio: Tensor
    a: Tensor
    w: Tensor


@dataclass(frozen=True)
class DPMSolverPP2S(Solver[DenoiserTermLike, ExponentialState[_PP2STable]]):
    """DPM-Solver++(2S) (Lu et al. 2022b, Algorithm 1, ``r = 1/2``): single-step, second
    order, data prediction.

    With ``h = lambda_t - lambda_s``, ``s1 = t_lambda(lambda_s + r h)``, ``m = D(x_s, s)``:

        u = (sigma_s1 / sigma_s) x_s - alpha_s1 expm1(-r h) m
        D = (1 - 1/(2r)) m + 1/(2r) D(u, s1)
        x_t = (sigma_t / sigma_s) x_s - alpha_t expm1(-h) D

    ODE solver; order 2; 2 denoiser evaluations per step; default grid ``"quadratic"`` under
    VP-type schedules, ``"logsnr"`` under VE and EDM (by measurement, ``bench/grid_sweep.py``).
    With a budget, ``nfe // 2`` steps.
    """

    order = 2
    term_type = DenoiserTermLike
    evals_per_step = 2
    default_grid = "logsnr"
    default_grid_vp = "quadratic"

    def init(self, term: DenoiserTermLike, ts: Tensor, x: Tensor) -> ExponentialState[_PP2STable]:
        """Precompute the intermediate points ``t_from_log_snr(lambda_s + h / 2)`` and the
        coefficients of every step."""
        schedule = term.schedule
        pts = log_snr_points(schedule, ts)
        lam_s, h = pts.lam[:-1], pts.lam[1:] - pts.lam[:-1]
        p1 = points_at_half_log_snr(schedule, lam_s + 0.5 * h)
        hh1 = p1.lam - lam_s  # r h as realised
        table = _PP2STable(
            t1=p1.t,
            ratio1=p1.sigma / pts.sigma[:-1],
            a1=-p1.alpha * torch.expm1(-hh1),
            ratio=pts.sigma[1:] / pts.sigma[:-1],
            a=-pts.alpha[1:] * torch.expm1(-h),
            w=h / (2.0 * hh1),
        )
        return ExponentialState(0, replace(table, rows=_step_rows(table, _PP2SRow, x, ("t1",))))

    def step(
        self,
        term: DenoiserTermLike,
        t0: Tensor,
        t1: Tensor,
        x: Tensor,
        state: ExponentialState[_PP2STable],
        noise: Tensor | None,
    ) -> tuple[Tensor, ExponentialState[_PP2STable]]:
        """One DPM-Solver++(2S) step ``t0 -> t1``; two x0 evaluations."""
        i, tab = state.index, state.table
        r = tab.rows[i]  # step i's coefficients, in x's dtype
        m = term.denoise(x, t0)
        u = r.ratio1 * x + r.a1 * m
        m1 = term.denoise(u, r.t1)
        d = m + r.w * (m1 - m)  # (1 - 1/(2r)) m + 1/(2r) m1
        return r.ratio * x + r.a * d, ExponentialState(i + 1, tab)


BUILTINS: dict[str, type[Solver[Any, Any]]] = {
    "ddim": DDIM,
    "dpm_solver_2": DPMSolver2,
    "dpm_solver_3": DPMSolver3,
    "dpmpp_2s": DPMSolverPP2S,
    "dpmpp_2m": DPMSolverPP2M,
    "dpmpp_3m": DPMSolverPP3M,
}
"""Registry names of this module's solvers (wired into :data:`solvers.SOLVERS` by
``solvers/registry.py``)."""
