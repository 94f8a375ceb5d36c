"""Explicit linear multistep (Adams-Bashforth) methods for ODE terms (``dx/dt = v(x, t)``).

One velocity evaluation per step; the previous velocities are the history, kept in the
explicit solver state (:class:`MultistepState`), never in the solver object. Step ``i`` of a
grid ``t_0, ..., t_N`` (``h_i = t_{i+1} - t_i``, either sign) is

    x_{i+1} = x_i + h_i * sum_{j < k_i} b_{i,j} d_{i-j},    d_m = v(x_m, t_m),

with ``k_i = min(max_order, i + 1)``: the first steps are a warm-up of orders 1, 2, 3 (one
new velocity per step, so only ``i + 1`` are known at step ``i``).

* :class:`IPNDM` uses the fixed uniform-step weights ``b`` of Adams-Bashforth (Zhang & Chen
  2022, "Fast Sampling of Diffusion Models with Exponential Integrator": iPNDM, their
  improvement of the PNDM of Liu et al. 2022 that replaces its Runge-Kutta warm-up by
  lower-order multistep steps).
* :class:`IPNDMVariable` recomputes them for the actual step sizes: ``b_{i,j} h_i`` is the
  integral over ``[t_i, t_{i+1}]`` of the Lagrange basis polynomial of node ``t_{i-j}`` through
  ``t_i, ..., t_{i-k_i+1}`` (variable-step Adams-Bashforth, Hairer et al., Solving ODEs I,
  sec. III.5). This is the idea of k-diffusion's ``sample_ipndm_v`` and exactly its
  ``sample_lms`` (which gets the same integrals from ``scipy.integrate.quad``): one algorithm,
  so there is no separate ``LMS`` class; ``IPNDMVariable(max_order=k)`` is LMS of order ``k``.

Warm-up and order: after the warm-up each step has local error ``O(h^(k+1))`` (for IPNDM only
on uniform grids). The warm-up steps of orders 1, 2, 3 have local errors ``O(h^2)``,
``O(h^3)``, ``O(h^4)``; on an ODE whose solution is curved at the start the first (Euler) step
therefore dominates as ``h -> 0`` and the measured global order is 2. On the probability-flow
ODE sampled from ``T`` the solution is nearly linear at high noise (the Euler error of the first
step is tiny) and IPNDMVariable shows its full order over practical step counts (measured
3.7-3.9 under EDM on the karras grid, 64-512 steps). The declared ``order`` (4) is that of the
multistep formula with exact starting values and the default ``max_order = 4``.

States have any shape ``(B, *dims)``; the coefficients are computed in float64 in ``init`` and
cast to the state's dtype.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from solvers.base import Solver
from solvers.protocols import ODETermLike

__all__ = [
    "IPNDM",
    "IPNDMVariable",
    "MultistepState",
    "adams_bashforth_weights",
    "ADAMS_BASHFORTH_WEIGHTS",
    "BUILTINS",
]

MAX_ORDER = 4

ADAMS_BASHFORTH_WEIGHTS: tuple[tuple[float, ...], ...] = (
    (1.0,),
    (3.0 / 2.0, -1.0 / 2.0),
    (23.0 / 12.0, -16.0 / 12.0, 5.0 / 12.0),
    (55.0 / 24.0, -59.0 / 24.0, 37.0 / 24.0, -9.0 / 24.0),
)
"""Uniform-step Adams-Bashforth weights of orders 1-4, newest value first (IPNDM here; PLMS
applies the same weights to noise predictions, :mod:`solvers.exponential_multistep`)."""


@dataclass(frozen=True)
class MultistepState:
    """State of an Adams-Bashforth solver between steps.

    Attributes:
        index: the step about to be taken (a Python int: branching on it needs no host sync).
        coefficients: ``(N, max_order)`` tensor in the state's dtype with
            ``coefficients[i, j] = h_i b_{i,j}`` (zero beyond the order ``k_i`` of step ``i``),
            precomputed for the whole grid by :meth:`init`.
        history: previous velocities ``(d_{i-1}, d_{i-2}, ...)``, newest first, at most
            ``max_order - 1`` of them, each of the state's shape.
    """

    index: int
    coefficients: Tensor
    history: tuple[Tensor, ...]


def _step_orders(n_steps: int, max_order: int) -> list[int]:
    return [min(max_order, i + 1) for i in range(n_steps)]


def adams_bashforth_weights(ts: Tensor, max_order: int = MAX_ORDER) -> Tensor:
    """Variable-step Adams-Bashforth weights for a whole grid, in closed form (no host sync).

    For step ``i`` of order ``k = min(max_order, i + 1)`` the nodes in the scaled variable
    ``s = (t - t_i) / h_i`` are ``s_j = (t_{i-j} - t_i) / h_i``, ``j < k``, and

        b_{i,j} = integral_0^1 prod_{m != j} (s - s_m) / (s_j - s_m) ds

    (the Lagrange basis polynomial of node ``j``, expanded in powers of ``s`` and integrated
    term by term). The quadrature ``h_i sum_j b_{i,j} d_{i-j}`` integrates polynomials of degree
    ``< k`` exactly; on a uniform grid ``s_j = -j`` and ``b`` are the classical weights
    ``[1], [3/2, -1/2], [23/12, -16/12, 5/12], [55/24, -59/24, 37/24, -9/24]``.

    Args:
        ts: grid ``(N + 1,)`` (float64 recommended), strictly monotone, either direction.
        max_order: highest order ``k``, 1 to 4.

    Returns:
        ``(N, max_order)`` tensor of ``b_{i,j}`` (dtype and device of ``ts``), zero for
        ``j >= k_i``. Each row sums to 1.
    """
    _check_max_order(max_order)
    n_steps = ts.numel() - 1
    weights = ts.new_zeros(n_steps, max_order)
    h = ts[1:] - ts[:-1]
    orders = _step_orders(n_steps, max_order)
    for k in sorted(set(orders)):
        rows = [i for i, o in enumerate(orders) if o == k]  # a contiguous range of steps
        lo, hi = rows[0], rows[-1] + 1
        # nodes s_j = (t_{i-j} - t_i) / h_i for the steps lo <= i < hi: (R, k)
        nodes = torch.stack([(ts[lo - j : hi - j] - ts[lo:hi]) / h[lo:hi] for j in range(k)], 1)
        for j in range(k):
            # numerator prod_{m != j} (s - s_m) as power-series coefficients, lowest first
            poly = torch.ones_like(nodes[:, :1])
            denom = torch.ones_like(nodes[:, 0])
            for m in range(k):
                if m == j:
                    continue
                shifted = torch.cat([torch.zeros_like(poly[:, :1]), poly], 1)  # s * poly
                padded = torch.cat([poly, torch.zeros_like(poly[:, :1])], 1)
                poly = shifted - nodes[:, m : m + 1] * padded
                denom = denom * (nodes[:, j] - nodes[:, m])
            powers = torch.arange(1, poly.shape[1] + 1, dtype=ts.dtype, device=ts.device)
            weights[lo:hi, j] = (poly / powers).sum(1) / denom
    return weights


def _check_max_order(max_order: object) -> None:
    if isinstance(max_order, bool) or not isinstance(max_order, int):
        raise TypeError(f"max_order must be an int in 1..{MAX_ORDER}, got {max_order!r}")
    if not 1 <= max_order <= MAX_ORDER:
        raise ValueError(f"max_order must be in 1..{MAX_ORDER}, got max_order={max_order}")


@dataclass(frozen=True)
class _AdamsBashforth(Solver[ODETermLike, MultistepState]):
    """Shared machinery: weights for the whole grid in :meth:`init`, one evaluation per step."""

    max_order: int = MAX_ORDER

    order = MAX_ORDER
    term_type = ODETermLike
    evals_per_step = 1

    def __post_init__(self) -> None:
        _check_max_order(self.max_order)

    @property
    def convergence_order(self) -> int:
        """``max_order`` once the history is full (on uniform steps for :class:`IPNDM`)."""
        return self.max_order

    @property
    def cold_start_order(self) -> int:
        """The Euler first step caps the asymptotic global order at 2."""
        return min(self.max_order, 2)

    @abc.abstractmethod
    def weights(self, ts: Tensor) -> Tensor:
        """``(N, max_order)`` float64 weights ``b_{i,j}`` of every step of the grid ``ts``."""

    def init(self, term: ODETermLike, ts: Tensor, x: Tensor) -> MultistepState:
        """Precompute ``h_i b_{i,j}`` for the whole grid (float64, then cast to ``x.dtype``)."""
        h = ts[1:] - ts[:-1]
        coefficients = (h[:, None] * self.weights(ts)).to(device=x.device, dtype=x.dtype)
        return MultistepState(index=0, coefficients=coefficients, history=())

    def step(
        self,
        term: ODETermLike,
        t0: Tensor,
        t1: Tensor,
        x: Tensor,
        state: MultistepState,
        noise: Tensor | None,
    ) -> tuple[Tensor, MultistepState]:
        """One Adams-Bashforth step: one new velocity, combined with the history."""
        i = state.index
        order = min(self.max_order, i + 1)
        velocities = (term.velocity(x, t0), *state.history)
        c = state.coefficients[i]  # (max_order,): h_i b_{i,j}
        x_next = x + c[0] * velocities[0]
        for j in range(1, order):
            x_next = x_next + c[j] * velocities[j]
        next_state = MultistepState(
            index=i + 1,
            coefficients=state.coefficients,
            history=velocities[: self.max_order - 1],
        )
        return x_next, next_state


@dataclass(frozen=True)
class IPNDM(_AdamsBashforth):
    """iPNDM: Adams-Bashforth with fixed uniform-step weights (Zhang & Chen 2022, "Fast
    Sampling of Diffusion Models with Exponential Integrator": the improved pseudo numerical
    method of Liu et al. 2022, PNDM, with a lower-order multistep warm-up).

    With ``h = t_{i+1} - t_i`` and ``d_m = v(x_m, t_m)``, the order-4 step is

        x_{i+1} = x_i + h (55 d_i - 59 d_{i-1} + 37 d_{i-2} - 9 d_{i-3}) / 24,

    preceded by the warm-up steps ``x + h d_0``, ``x + h (3 d_1 - d_0) / 2`` and
    ``x + h (23 d_2 - 16 d_1 + 5 d_0) / 12``; ``max_order < 4`` caps the order.

    Grids: the weights assume equal steps in the integration variable ``t``. On a non-uniform
    grid (``"karras"``, ``"logsnr"``) the method stays convergent but the mismatch between the
    assumed and the actual step ratios costs a local error ``O(h^3)``, so it is only of
    order 2 (measured ~2 as ``h -> 0``), though usually still more accurate than Heun at equal
    cost for small step counts; :class:`IPNDMVariable` keeps the full order on any grid.
    See the module docstring for the effect of the warm-up on the order.

    ODE solver; order 4 on uniform grids with exact starting values (``order``), global order
    2 on the grids it is used on (``convergence_order``, what ``solvers_available`` reports);
    1 velocity evaluation per step; the last ``max_order - 1`` velocities in
    :class:`MultistepState`. Shapes: any ``(B, *dims)``. Default grid ``"quadratic"`` under
    VP-type schedules, ``"logsnr"`` under VE and EDM (by measurement,
    ``bench/grid_sweep.py``). In EDM variables (:class:`solvers.EDMVariables`) it is PLMS.

    Args:
        max_order: highest Adams-Bashforth order, 1 to 4 (default 4).
    """

    default_grid = "logsnr"
    default_grid_vp = "quadratic"
    edm_variables_grids = ("quadratic", "logsnr")

    @property
    def convergence_order(self) -> int:
        """``min(max_order, 2)``: the global order on the non-uniform grids it runs on (and,
        from its Euler start, on any grid as ``h -> 0``); ``max_order`` is the order of the
        formula on uniform steps with exact starting values (the class attribute ``order``).
        Measured 1.98-2.06 under VP, VE and EDM (``tests/test_sampling.py``). In EDM variables
        it is :class:`~solvers.PLMS`, also of order 2."""
        return min(self.max_order, 2)

    def weights(self, ts: Tensor) -> Tensor:
        """The fixed weights of order ``min(max_order, i + 1)`` for every step ``i``."""
        rows = [
            list(ADAMS_BASHFORTH_WEIGHTS[k - 1]) + [0.0] * (self.max_order - k)
            for k in _step_orders(ts.numel() - 1, self.max_order)
        ]
        return torch.tensor(rows, dtype=torch.float64).reshape(-1, self.max_order).to(ts.device)


@dataclass(frozen=True)
class IPNDMVariable(_AdamsBashforth):
    """iPNDM-v: variable-step Adams-Bashforth (Zhang & Chen 2022's iPNDM with weights recomputed
    for the actual steps, as k-diffusion's ``sample_ipndm_v``; equal to k-diffusion's
    ``sample_lms``, the linear multistep method of Karras et al. 2022 / Liu et al. 2022).

    Step ``i`` of order ``k = min(max_order, i + 1)``:

        x_{i+1} = x_i + sum_{j < k} d_{i-j} integral_{t_i}^{t_{i+1}} l_j(t) dt,

    where ``l_j`` is the Lagrange basis polynomial of node ``t_{i-j}`` through the nodes
    ``t_i, ..., t_{i-k+1}`` (see :func:`adams_bashforth_weights`; computed for the whole grid in
    :meth:`init`, in closed form, so steps need no host sync and no scipy). On a uniform grid it
    is exactly :class:`IPNDM`. (The closed-form order-3/4 coefficients of the widely copied
    ``sample_ipndm_v`` of zju-pi/diff-sampler and ComfyUI's k-diffusion differ from these off
    uniform grids; on a smooth non-uniform grid they measure orders 3 and 2 instead of 3 and 4.
    The weights here are the exact integrals, checked against ``scipy.integrate.quad``.)

    ODE solver; order ``max_order`` = 4 on any smooth grid (after the warm-up, see the module
    docstring); 1 velocity evaluation per step; history in :class:`MultistepState`. Shapes: any
    ``(B, *dims)``. Default grid ``"quadratic"`` under VP-type schedules, ``"karras"`` under
    VE and EDM, in t and in EDM variables (:class:`solvers.EDMVariables`, k-diffusion's
    ``sample_lms`` on any schedule) alike: under EDM the two are the same solve (by
    measurement, ``bench/grid_sweep.py``: on the EDM problems ``"karras"`` scores 1.04 and
    ``"logsnr"`` 1.30).

    Args:
        max_order: highest order, 1 to 4 (default 4); ``max_order = k`` is LMS of order ``k``.
    """

    default_grid = "karras"
    default_grid_vp = "quadratic"
    edm_variables_grids = ("quadratic", "karras")

    def weights(self, ts: Tensor) -> Tensor:
        """Variable-step weights from :func:`adams_bashforth_weights`."""
        return adams_bashforth_weights(ts.to(torch.float64), self.max_order)


BUILTINS: dict[str, type[Solver[Any, Any]]] = {
    "ipndm": IPNDM,
    "ipndm_v": IPNDMVariable,
}
"""Registry entries of this module. There is no ``"lms"``: k-diffusion's LMS is the same
algorithm as ``"ipndm_v"`` (``IPNDMVariable(max_order=k)`` is LMS of order ``k``)."""
