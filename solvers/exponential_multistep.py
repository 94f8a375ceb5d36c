"""Exponential multistep solvers on a denoiser term: UniPC, PLMS (PNDM) and DEIS.

All three integrate the probability-flow ODE of ``x_t = alpha(t) x_0 + sigma(t) eps`` in the
half log-SNR ``lambda = log(alpha / sigma) = log_snr / 2`` (DPM-Solver's convention), which
increases along a sampling grid. With ``h = lambda_t - lambda_s``, the ODE solution is, in data
(x0) form and in noise (eps) form (Lu et al. 2022, "DPM-Solver", eq. 3.4, and its data-prediction
form in "DPM-Solver++"),

    x_t = (sigma_t / sigma_s) x_s + alpha_t int_0^h e^{-(h - v)} D(lambda_s + v) dv
        = (alpha_t / alpha_s) x_s - sigma_t int_0^h e^{h - v} eps(lambda_s + v) dv,

with ``D = term.denoise(x, t)`` and ``eps = (x - alpha D) / sigma``. Every method replaces
``D`` or ``eps`` by a polynomial through previous evaluations and integrates it exactly; the
moments ``int_0^h e^{-(h-v)} v^m dv = m! h^(m+1) phi_{m+1}(-h)`` (and ``phi_{m+1}(h)`` in the
eps form) use the phi functions ``phi_k(z) = int_0^1 e^{(1-s) z} s^(k-1) / (k-1)! ds``. The
shared log-SNR helpers (``log_snr_points``, ``phi``, ``eps_from_x0``) come from
:mod:`solvers.exponential`.

Because ``lambda``, ``alpha`` and ``sigma`` are read from ``term.schedule``, the same code
serves any schedule: VP, VE and EDM (``alpha = 1``). Per-step coefficients of the whole grid are
computed once in ``init`` (float64, one device-to-host copy of ``lambda``, ``alpha`` and
``sigma`` per solve), then stored on the state's device in its dtype; ``step`` only indexes
them with a Python-int step index and never synchronises. The state, the per-step table and
the step of PLMS and DEIS are those of the DPM-Solver++ multistep methods
(:class:`solvers.exponential.ExponentialState`, :class:`~solvers.exponential.MultistepTable`,
:class:`~solvers.exponential.ExponentialMultistep`); the multistep history (previous
evaluations, newest first) lives in the state.

The grid may end where ``sigma = 0`` (``lambda = +inf``, e.g. an EDM grid to ``sigma = 0``):
that last step is taken with order 1 (DDIM's limit ``x = alpha D``). Everywhere else
``lambda`` must be finite.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from solvers.base import Solver
from solvers.exponential import (
    ExponentialMultistep,
    ExponentialState,
    MultistepTable,
    check_lower_order_final,
    combine,
    eps_from_x0,
    log_snr_points,
    multistep_orders,
    phi,
)
from solvers.linear_multistep import ADAMS_BASHFORTH_WEIGHTS
from solvers.protocols import DenoiserTermLike

__all__ = [
    "UniPC",
    "PLMS",
    "DEIS",
    "BUILTINS",
]

_F64 = torch.float64


# --------------------------------------------------------------------------- shared maths


def _solve(matrix: Sequence[Sequence[float]], rhs: Sequence[float]) -> list[float]:
    """Solve a small dense linear system in float64 (``torch.linalg.solve``, LU with partial
    pivoting); host-side, in ``init`` only."""
    a = torch.tensor(matrix, dtype=_F64)
    return torch.linalg.solve(a, torch.tensor(rhs, dtype=_F64)).tolist()


_MAX_PHI = 4  # phi_1 .. phi_4: enough for UniC-3 (b_1..b_3) and DEIS-3 (moments 0..2)


@dataclass(frozen=True)
class _GridValues:
    """The schedule on the grid as Python floats (double precision), for building tables.

    Attributes:
        lam: ``lambda = log_snr / 2`` at the ``N + 1`` grid points.
        alpha, sigma: ``alpha`` and ``sigma`` at the grid points.
        phi_neg: ``phi_neg[k][i] = phi_k(-h_i)`` for ``k = 0..4`` (data form).
        phi_pos: ``phi_pos[k][i] = phi_k(h_i)`` for ``k = 0..4`` (eps form).
    """

    lam: list[float]
    alpha: list[float]
    sigma: list[float]
    phi_neg: list[list[float]]
    phi_pos: list[list[float]]

    @property
    def n_steps(self) -> int:
        return len(self.lam) - 1

    def h(self, i: int) -> float:
        """``lambda_{i+1} - lambda_i`` (``+inf`` for a last step to ``sigma = 0``)."""
        return self.lam[i + 1] - self.lam[i]

    def r(self, i: int, j: int) -> float:
        """Scaled offset ``(lambda_{i-j} - lambda_i) / h_i`` of the ``j``-th previous node."""
        return (self.lam[i - j] - self.lam[i]) / self.h(i)

    def final_is_singular(self) -> bool:
        """Whether the grid ends where ``sigma = 0`` (``lambda = +inf``)."""
        return self.lam[-1] == math.inf


def _grid_values(term: DenoiserTermLike, ts: Tensor, solver: str) -> _GridValues:
    """Read ``lambda``, ``alpha``, ``sigma`` of the whole grid from ``term.schedule`` (with
    :func:`solvers.exponential.log_snr_points`) and the phi functions of every step (with
    :func:`solvers.exponential.phi`), then copy them to the host once.

    Raises:
        ValueError: if ``lambda`` is NaN anywhere, infinite before the last point, or ``-inf``
            at it (the exponential integrators need ``alpha > 0`` and ``sigma > 0`` except for
            ``sigma = 0`` at the very end).
    """
    pts = log_snr_points(term.schedule, ts)
    h = pts.lam[1:] - pts.lam[:-1]
    # phi rows (N,) are padded by one entry to stack with the (N + 1,) grid values
    rows = torch.stack(
        [pts.lam, pts.alpha, pts.sigma]
        + [torch.cat([phi(k, -h), h[:1]]) for k in range(_MAX_PHI + 1)]
        + [torch.cat([phi(k, h), h[:1]]) for k in range(_MAX_PHI + 1)]
    ).cpu()  # the one device-to-host copy of the solve
    values = rows.tolist()
    lam = values[0]
    for i, value in enumerate(lam):
        if math.isfinite(value) or (i == len(lam) - 1 and value == math.inf):
            continue
        raise ValueError(
            f"{solver} needs a finite log-SNR at every grid point (sigma = 0 is allowed only at "
            f"the last point), got log_snr(ts[{i}] = {float(ts[i])!r}) = {2.0 * value}"
        )
    n = _MAX_PHI + 1
    return _GridValues(
        lam=lam,
        alpha=values[1],
        sigma=values[2],
        phi_neg=[v[:-1] for v in values[3 : 3 + n]],
        phi_pos=[v[:-1] for v in values[3 + n :]],
    )


def _table(rows: Sequence[Sequence[float]], width: int, x: Tensor) -> Tensor:
    """Pad ``rows`` with zeros to ``width`` and store them on ``x``'s device in its dtype."""
    padded = [list(r) + [0.0] * (width - len(r)) for r in rows]
    table = torch.tensor(padded, dtype=_F64).reshape(len(rows), width)
    return table.to(device=x.device, dtype=x.dtype)


def _check_int_option(name: str, value: object, allowed: Sequence[int]) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int in {list(allowed)}, got {value!r}")
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {name}={value}")


@dataclass(frozen=True)
class _UniPCTable(MultistepTable):
    """UniPC's table: the UniP rows (:class:`MultistepTable`, on ``(m_i, m_{i-1}, ...)``) and
    the UniC rows ``corrector`` ``(N, K + 1)`` on ``(m_new, m_i, m_{i-1}, ...)``."""

    corrector: Tensor


@dataclass(frozen=True)
class _EpsTable(MultistepTable):
    """Table of an eps-form method (PLMS, DEIS): the history holds noise predictions, formed
    with ``alpha`` and ``sigma`` ``(N + 1,)`` (float64) at the grid points."""

    alpha: Tensor
    sigma: Tensor


# --------------------------------------------------------------------------- UniPC


@dataclass(frozen=True)
class UniPC(Solver[DenoiserTermLike, ExponentialState[_UniPCTable]]):
    """UniPC-p: unified predictor-corrector in data-prediction form with ``B(h)`` (Zhao et al.
    2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
    Models", Sec. 3: UniC-p (Theorem 3.1, order ``p + 1``) and UniP-p (Corollary 3.2, order
    ``p``); the multistep data-prediction algorithm of the official code).

    Step ``i`` (``t_i -> t_{i+1}``, ``h = lambda_{i+1} - lambda_i``, order ``p = p_i``) with the
    denoiser outputs ``m_i, m_{i-1}, ...``, the offsets ``r_k = (lambda_{i-k} - lambda_i) / h``
    and ``D_k = (m_{i-k} - m_i) / r_k``:

        UniP-p:  x~ = (sigma_{i+1}/sigma_i) x_i - alpha_{i+1} expm1(-h) m_i
                      - alpha_{i+1} B(h) sum_{k<p} rho^P_k D_k
        UniC-p:  m_new = D(x~, t_{i+1})
                 x_{i+1} = (sigma_{i+1}/sigma_i) x_i - alpha_{i+1} expm1(-h) m_i
                      - alpha_{i+1} B(h) (sum_{k<p} rho^C_k D_k + rho^C_p (m_new - m_i))

    ``rho`` solves ``sum_k rho_k r_k^(n-1) = n! phi_{n+1}(-h) (-h) / B(h)`` for ``n = 1..p-1``
    (predictor) or ``n = 1..p`` (corrector, with ``r_p = 1``); as in the official code and
    diffusers, the 2nd-order predictor and the 1st-order corrector use ``rho = 1/2`` instead.
    ``B(h) = -h`` (``variant="bh1"``) or ``expm1(-h)`` (``"bh2"``). Where ``rho`` is solved
    exactly, ``B(h)`` cancels: the variants differ only through the two ``rho = 1/2`` steps.
    ``m_new`` is evaluated at the *predicted* point and reused as the history of the next step,
    so the corrector costs no extra evaluation; the last step has no corrector (its evaluation
    would be wasted). Every coefficient is computed once, in :meth:`init`.

    Warm-up: ``p_i = min(order, i + 1)``; ``lower_order_final`` also caps ``p_i <= N - i`` (the
    last step is then UniP-1). UniP-1 is DDIM exactly (``order=1, corrector=False``) and UniP-2
    with bh2 is DPM-Solver++(2M). A last step to ``sigma = 0`` is UniP-1.

    Order: without the final-step rule, ``order + 1`` with the corrector, ``order`` without
    (measured 3.0-3.3 for ``order=2``, 4.0 for ``order=3``, 2.0 for ``order=1`` and for UniP-2;
    K = 1 Gaussian oracle, VP/VE/EDM); the default ``lower_order_final=True`` makes the last
    step UniP-1 and caps :attr:`convergence_order` at 2. Note that the field ``order`` is the
    paper's ``p`` (the official ``order``, diffusers' ``solver_order``), so the class attribute
    ``UniPC.order`` is ``2`` whatever the configured method converges at. With the lower-order
    first steps the asymptotic order of ``order=3`` is 3 (its first step has a local error
    ``O(h^3)``, with a tiny constant when sampling from high noise).

    ODE solver on a :class:`DenoiserTermLike`; 1 denoiser evaluation per step (exactly ``N``
    for ``N`` steps); the last ``order`` evaluations in the :class:`ExponentialState`. Shapes:
    ``x`` is ``(B, *dims)``. Default grid ``"quadratic"`` under VP-type schedules,
    ``"logsnr"`` under VE and EDM (by measurement, ``bench/grid_sweep.py``); defaults
    ``variant="bh2"``, ``order=2`` chosen by measurement at 5-10 evaluations (see the user
    docs).

    Args:
        variant: ``"bh2"`` (default, ``B(h) = expm1(-h)``) or ``"bh1"`` (``B(h) = -h``).
        order: the predictor order ``p`` in 1, 2, 3 (default 2).
        lower_order_final: lower the order of the last steps (``p_i <= N - i``): ``True``
            (default) always, as the official UniPC code and diffusers (the last step is
            first order; the convergence order is then 2, but on ``bench/grid_sweep.py`` it is
            at most 1% less accurate anywhere at 5-200 evaluations and up to 4x more accurate
            on the median sample on the quadratic VP grid); ``None`` only for solves of fewer
            than 10 steps (``lower_order_final_steps``, the dpm-solver rule); ``False`` never.
            The same rule as DPM-Solver++(2M)/(3M) (:func:`solvers.exponential.multistep_orders`).
        corrector: apply UniC (default); ``False`` gives the plain UniP-p multistep method.
    """

    variant: Literal["bh1", "bh2"] = "bh2"
    order: int = 2  # type: ignore[misc]  # the paper's p, not the convergence order
    lower_order_final: bool | None = True
    corrector: bool = True

    term_type = DenoiserTermLike
    evals_per_step = 1
    default_grid = "logsnr"
    default_grid_vp = "quadratic"
    lower_order_final_steps: ClassVar[int] = 10
    """With ``lower_order_final=None`` the final-step rule applies to solves of fewer steps
    than this (the dpm-solver reference code's rule)."""

    def __post_init__(self) -> None:
        if self.variant not in ("bh1", "bh2"):
            raise ValueError(f"variant must be 'bh1' or 'bh2', got variant={self.variant!r}")
        _check_int_option("order", self.order, (1, 2, 3))
        check_lower_order_final(self.lower_order_final)
        if not isinstance(self.corrector, bool):
            raise TypeError(f"corrector must be a bool, got {self.corrector!r}")

    @property
    def convergence_order(self) -> int:
        """Convergence order of this configuration: ``order + 1`` with the corrector (``order``
        without), at most 2 with ``lower_order_final=True``: its last step is UniP-1 (DDIM),
        whose local error ``O(h^2)`` remains at every step count."""
        full = self.order + 1 if self.corrector else self.order
        return min(full, 2) if self.lower_order_final is True else full

    @property
    def cold_start_order(self) -> int:
        """The first (order-1) step caps the asymptotic order: 3 with the corrector, else 2."""
        return min(self.convergence_order, 3 if self.corrector else 2)

    def step_orders(self, n_steps: int) -> list[int]:
        """Predictor order ``p_i`` of every step of an ``n_steps`` solve (warm-up and
        ``lower_order_final`` included; a last step to ``sigma = 0`` is also order 1)."""
        lower, below = self.lower_order_final, self.lower_order_final_steps
        return list(multistep_orders(n_steps, self.order, lower, below))

    def _rhs(self, g: _GridValues, i: int, n: int) -> tuple[float, list[float]]:
        """``B(h)`` and ``b_k = k! phi_{k+1}(-h) (-h) / B(h)``, ``k = 1..n``, of step ``i``."""
        hh = -g.h(i)
        b_h = hh if self.variant == "bh1" else math.expm1(hh)
        return b_h, [math.factorial(k) * g.phi_neg[k + 1][i] * hh / b_h for k in range(1, n + 1)]

    def init(self, term: DenoiserTermLike, ts: Tensor, x: Tensor) -> ExponentialState[_UniPCTable]:
        """Precompute the UniP and UniC weights of every step (see the class docstring)."""
        g = _grid_values(term, ts, "UniPC")
        n_steps = g.n_steps
        orders = self.step_orders(n_steps)
        if g.final_is_singular():
            orders[-1] = 1
        x_coefs: list[float] = []
        pred_rows: list[list[float]] = []
        corr_rows: list[list[float]] = []
        for i, p in enumerate(orders):
            h = g.h(i)
            a = g.sigma[i + 1] / g.sigma[i]
            c = -g.alpha[i + 1] * math.expm1(-h)  # weight of m_i in x_t_ (DDIM part)
            x_coefs.append(a)
            if p == 1:  # UniP-1 = DDIM; no r_k, B(h) is not needed
                pred_rows.append([c])
            else:
                r = [g.r(i, k) for k in range(1, p)]
                b_h, b = self._rhs(g, i, p - 1)
                e = -g.alpha[i + 1] * b_h
                rho = [0.5] if p == 2 else _solve([[rk**n for rk in r] for n in range(p - 1)], b)
                # E sum_k rho_k (m_k - m_i) / r_k, folded into weights of (m_i, m_{i-1}, ...)
                w = [e * rho[k] / r[k] for k in range(p - 1)]
                pred_rows.append([c - sum(w), *w])
            if i == n_steps - 1:  # no corrector after the last step
                corr_rows.append([])
                continue
            r = [g.r(i, k) for k in range(1, p)] + [1.0]
            b_h, b = self._rhs(g, i, p)
            e = -g.alpha[i + 1] * b_h
            if p == 1:
                rho = [0.5]
            else:
                rho = _solve([[rk**n for rk in r] for n in range(p)], b)
            w_new = e * rho[-1]  # rho_p (m_new - m_i), r_p = 1
            w = [e * rho[k] / r[k] for k in range(p - 1)]
            corr_rows.append([w_new, c - w_new - sum(w), *w])
        table = _UniPCTable(
            orders=tuple(orders),
            x_coef=_table([[v] for v in x_coefs], 1, x)[:, 0],
            weights=_table(pred_rows, self.order, x),
            corrector=_table(corr_rows, self.order + 1, x),
        )
        return ExponentialState(0, table)

    def step(
        self,
        term: DenoiserTermLike,
        t0: Tensor,
        t1: Tensor,
        x: Tensor,
        state: ExponentialState[_UniPCTable],
        noise: Tensor | None,
    ) -> tuple[Tensor, ExponentialState[_UniPCTable]]:
        """One UniP-p step, then UniC-p with the evaluation at the predicted point."""
        i, table = state.index, state.table
        p = table.orders[i]
        history = state.history
        if not history:  # first step: the only evaluation at the start of a step
            history = (term.denoise(x, t0),)
        # predictor UniP-p
        x_pred = table.update(i, x, history)
        if i == len(table.orders) - 1:
            return x_pred, ExponentialState(i + 1, table)
        # one evaluation at the predicted point: the corrector's and the next step's
        m_new = term.denoise(x_pred, t1)
        x_next = x_pred
        if self.corrector:
            x_next = combine(table.x_coef[i], x, table.corrector[i], (m_new, *history[:p]))
        return x_next, ExponentialState(i + 1, table, (m_new, *history[: self.order - 1]))


# --------------------------------------------------------------------------- eps-form solvers


def _eps_state(
    g: _GridValues,
    orders: Sequence[int],
    eps_weights: Sequence[Sequence[float]],
    width: int,
    x: Tensor,
) -> ExponentialState[_EpsTable]:
    """State of an eps-form step ``x_{i+1} = (alpha_{i+1}/alpha_i) x_i + b_i sum_j w_j eps_{i-j}``
    with the DDIM transfer coefficient ``b_i = (alpha_{i+1} sigma_i / alpha_i) expm1(-h_i)``
    (``= -sigma_{i+1} expm1(h_i)``, finite also for ``sigma_{i+1} = 0``)."""
    x_coefs: list[float] = []
    rows: list[list[float]] = []
    for i, w in enumerate(eps_weights):
        ratio = g.alpha[i + 1] / g.alpha[i]
        b = ratio * g.sigma[i] * math.expm1(-g.h(i))
        x_coefs.append(ratio)
        rows.append([b * wj for wj in w])
    table = _EpsTable(
        orders=tuple(orders),
        x_coef=_table([[v] for v in x_coefs], 1, x)[:, 0],
        weights=_table(rows, width, x),
        alpha=torch.tensor(g.alpha, dtype=_F64).to(device=x.device),
        sigma=torch.tensor(g.sigma, dtype=_F64).to(device=x.device),
    )
    return ExponentialState(0, table)


class _NoisePredictionMultistep(ExponentialMultistep[_EpsTable]):
    """PLMS and DEIS: the multistep step of :class:`~solvers.exponential.ExponentialMultistep`
    on the noise predictions ``eps_i = (x_i - alpha_i D(x_i, t_i)) / sigma_i``."""

    def evaluate(
        self, term: DenoiserTermLike, x: Tensor, t: Tensor, table: _EpsTable, i: int
    ) -> Tensor:
        """The noise prediction at grid point ``i``."""
        return eps_from_x0(x, term.denoise(x, t), table.alpha[i], table.sigma[i])


@dataclass(frozen=True)
class PLMS(_NoisePredictionMultistep):
    """PLMS: pseudo linear multistep method (Liu et al. 2022, "Pseudo Numerical Methods for
    Diffusion Models on Manifolds", ICLR; Sec. 3-4: the DDIM "transfer part" and PLMS), with a
    one-evaluation lower-order warm-up.

    The noise predictions ``eps_m = (x_m - alpha_m D(x_m, t_m)) / sigma_m`` are combined with
    the fixed equal-step Adams-Bashforth weights and fed through the DDIM transfer, with
    ``h = lambda_{i+1} - lambda_i``:

        eps' = (55 eps_i - 59 eps_{i-1} + 37 eps_{i-2} - 9 eps_{i-3}) / 24
        x_{i+1} = (alpha_{i+1} / alpha_i) x_i - sigma_{i+1} expm1(h) eps'

    Warm-up: steps 0, 1, 2 use ``eps_0``, ``(3 eps_1 - eps_0) / 2`` and
    ``(23 eps_2 - 16 eps_1 + 5 eps_0) / 12`` (Adams-Bashforth 1-3), so every step costs exactly
    one evaluation. The paper starts with three pseudo Runge-Kutta steps (4 evaluations each)
    and LDM/diffusers' PLMS with one pseudo improved-Euler step (1 extra evaluation); this
    variant keeps the cost of an ``N``-step solve at ``N`` (a fixed budget buys a step more).

    Order 2. The fixed weights treat ``eps`` as a polynomial in the step index while the
    transfer integrates it against ``d(sigma / alpha)``: on a grid that is not uniform in
    ``sigma / alpha`` the two differ at ``O(h^3)`` per step (order 2; measured 2.0 on the
    ``"logsnr"``, ``"karras"`` and VP ``"uniform"`` grids). On a grid uniform in
    ``sigma / alpha`` (EDM's ``"uniform"`` grid) the step is the paper's pseudo-4th-order
    one (measured slopes 3.1-3.8 between 160 and 2560 steps), but the first (Euler-type) step
    has a local error ``O(h^2)``, which bounds the asymptotic order by 2 there too.

    ODE solver on a :class:`DenoiserTermLike`; 1 denoiser evaluation per step; the last three
    noise predictions in the :class:`ExponentialState`. Shapes: ``(B, *dims)``. Default grid
    ``"quadratic"`` under VP-type schedules, ``"logsnr"`` under VE and EDM (by measurement,
    ``bench/grid_sweep.py``). It is iPNDM stepped in EDM variables
    (``solvers.EDMVariables(solvers.IPNDM())`` gives the same numbers).
    """

    order: ClassVar[int] = 2
    default_grid = "logsnr"
    default_grid_vp = "quadratic"

    def init(self, term: DenoiserTermLike, ts: Tensor, x: Tensor) -> ExponentialState[_EpsTable]:
        """Precompute the DDIM transfer coefficients times the Adams-Bashforth weights."""
        g = _grid_values(term, ts, "PLMS")
        orders = multistep_orders(g.n_steps, 4)
        return _eps_state(g, orders, [ADAMS_BASHFORTH_WEIGHTS[k - 1] for k in orders], 4, x)


@dataclass(frozen=True)
class DEIS(_NoisePredictionMultistep):
    """DEIS: exponential integrator with polynomial extrapolation of eps (Zhang & Chen 2023,
    "Fast Sampling of Diffusion Models with Exponential Integrator", ICLR; the multistep
    "AB-DEIS"), the polynomial taken in ``lambda`` and integrated in closed form.

    Step ``i`` of order ``k = k_i`` interpolates ``eps_i, ..., eps_{i-k+1}`` at
    ``lambda_i, ..., lambda_{i-k+1}`` by the Lagrange polynomial ``sum_j l_j(lambda) eps_{i-j}``
    and integrates it exactly against the exponential weight (``h = lambda_{i+1} - lambda_i``):

        x_{i+1} = (alpha_{i+1} / alpha_i) x_i
                  - sigma_{i+1} sum_j eps_{i-j} int_0^h e^{h - v} l_j(lambda_i + v) dv

    The integrals follow from the moments ``int_0^h e^{h-v} v^m dv = m! h^(m+1) phi_{m+1}(h)``
    and the inverse Vandermonde matrix of the scaled nodes ``r_j = (lambda_{i-j} - lambda_i)
    / h`` (exact; computed once for the whole grid in :meth:`init`). ``order=1`` is DDIM.

    Choice of variable: the paper's tAB-DEIS interpolates in ``t``, so its update depends on
    how the schedule is parametrised (``t`` vs ``sigma`` for VE/EDM) and its integrals need
    quadrature; a polynomial in ``lambda`` (diffusers' "logrho" DEIS) is parametrisation-free
    and has closed-form weights. Measured on the Gaussian-mixture oracle at 5-10 evaluations,
    the ``lambda`` version is more accurate on the ``"logsnr"`` and ``"karras"`` grids (the
    ``t`` version only on ``"uniform"``, where both are worse), see the user docs.

    Order ``order`` (default 3; measured 3.0 for ``order=3``, 2.0 for ``order=2``). Warm-up
    ``k_i = min(order, i + 1)``; the first (DDIM) step has a local error ``O(h^2)``, which
    bounds the asymptotic order of ``order=3`` by 2, with a tiny constant when sampling from
    high noise (the 3rd-order regime covers any practical step count). A last step to
    ``sigma = 0`` is DDIM.

    ODE solver on a :class:`DenoiserTermLike`; 1 denoiser evaluation per step; the last
    ``order - 1`` noise predictions in the :class:`ExponentialState`. Shapes: ``(B, *dims)``.
    Default grid ``"logsnr"`` for every schedule (by measurement, ``bench/grid_sweep.py``).

    Args:
        order: order ``k`` of the method (polynomial degree ``k - 1``), 1, 2 or 3 (default 3).
        lower_order_final: ``False`` (default, by measurement: lowering the last orders makes
            the median sample 10-20% less accurate at 5-10 evaluations, and is neutral
            beyond); ``True``: the last step first order and the one before at most second
            order, always (the convergence order is then 2); ``None``: only for solves of fewer
            than 15 steps (``lower_order_final_steps``, diffusers' ``DEISMultistepScheduler``
            rule). The rule of :func:`solvers.exponential.multistep_orders`.
    """

    order: int = 3  # type: ignore[misc]  # per instance; the class attribute is the default
    lower_order_final: bool | None = False

    default_grid = "logsnr"
    lower_order_final_steps: ClassVar[int] = 15
    """With ``lower_order_final=None`` the final-step rule applies to solves of fewer steps
    than this (diffusers' ``DEISMultistepScheduler``)."""

    def __post_init__(self) -> None:
        _check_int_option("order", self.order, (1, 2, 3))
        check_lower_order_final(self.lower_order_final)

    @property
    def convergence_order(self) -> int:
        """``order``; at most 2 with ``lower_order_final=True`` (first-order last step)."""
        return min(self.order, 2) if self.lower_order_final is True else self.order

    @property
    def cold_start_order(self) -> int:
        """The first (DDIM) step caps the asymptotic order at 2."""
        return min(self.order, 2)

    def init(self, term: DenoiserTermLike, ts: Tensor, x: Tensor) -> ExponentialState[_EpsTable]:
        """Precompute the exact Lagrange-times-exponential integrals of every step."""
        g = _grid_values(term, ts, "DEIS")
        orders = list(
            multistep_orders(
                g.n_steps, self.order, self.lower_order_final, self.lower_order_final_steps
            )
        )
        if g.final_is_singular():
            orders[-1] = 1
        rows: list[list[float]] = []
        for i, k in enumerate(orders):
            if k == 1:
                rows.append([1.0])
                continue
            # normalised moments m! phi_{m+1}(h) / phi_1(h): the weights sum to 1 (m = 0)
            phi1 = g.phi_pos[1][i]
            moments = [math.factorial(m) * g.phi_pos[m + 1][i] / phi1 for m in range(k)]
            nodes = [g.r(i, j) for j in range(k)]
            rows.append(_solve([[rj**m for rj in nodes] for m in range(k)], moments))
        return _eps_state(g, orders, rows, self.order, x)


BUILTINS: dict[str, type[Solver[Any, Any]]] = {
    "unipc": UniPC,
    "plms": PLMS,
    "deis": DEIS,
}
"""Registry entries of this module (``get_solver("unipc", variant="bh1", order=3)``)."""
