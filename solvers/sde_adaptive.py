"""Whole-interval SDE solvers: the torchsde back-end (one adapter for all its methods, fixed
grid or adaptive) and an adaptive reverse-SDE solver with per-sample steps ("Gotta Go Fast").

These solvers run over the whole interval themselves: :func:`solvers.integrate` calls their
``solve(term, x0, ts, noise=..., save_path=..., progress=...)`` with the noise source
(:mod:`solvers.brownian`) instead of stepping them. They consume an :class:`solvers.SDETermLike`
(the reverse SDE ``dx = [f x - g^2 score] dt + g dw_bar`` built by ``scoresde``).

**torchsde adapter** (:class:`TorchSDESolver` and its registered subclasses). torchsde (Li et
al. 2020, "Scalable Gradients for Stochastic Differential Equations") needs a state of shape
``(batch, dim)``, increasing times and a Brownian motion; the adapter

* flattens any state ``(B, *dims)`` to ``(B, D)`` and back (diagonal noise: ``g`` is broadcast
  to the state's shape);
* flips time: torchsde's time is ``s = |t - t_0|`` (:func:`solvers.brownian.flip_time`),
  increasing from 0 whichever way ``t`` runs, so ``t = t_0 + sign (s)`` and the drift in ``s``
  is ``sign * f(x, t)`` (``sign = -1`` when sampling from ``T`` to ``t_min``); the diffusion
  is unchanged (``-dW`` is a Brownian motion too);
* takes its Brownian motion from the noise source: a ``torchsde.BrownianInterval`` seeded from
  the generator (:class:`~solvers.brownian.GaussianNoise`), one per sample
  (:class:`~solvers.brownian.PerSampleNoise`), or the path of a
  :class:`~solvers.brownian.BrownianPath` (which lets a fixed-grid solver and torchsde see the
  same increments: ``euler_maruyama`` and ``sde_euler`` then agree to rounding);
* converts the drift for Stratonovich methods (``reversible_heun``): ``f_S = f_I - 1/2 g dg/dx``
  (diagonal noise: ``g_i`` may depend on ``x_i`` only). For additive noise (``g = g(t)``, every
  reverse diffusion SDE) the correction vanishes: Ito = Stratonovich, and the adapter detects it
  (no autograd call when ``g`` does not depend on ``x``);
* steps exactly on the grid ``ts`` for the fixed-step methods (one torchsde step per grid
  interval; a method's extra state, e.g. reversible Heun's, is carried across intervals);
* counts every drift call as one NFE. torchsde evaluates the drift once per ``sdeint`` call to
  check shapes; the adapter answers that probe with zeros without calling the network. The
  stochastic Runge-Kutta method re-evaluates earlier stages (10 drift calls per step for its 4
  stages); the adapter caches the stage values, so it costs 4 network evaluations per step.

**Gotta Go Fast** (:class:`GottaGoFast`, ``adaptive_sde``): Jolicoeur-Martineau et al. 2021,
Algorithm 1 — Euler-Maruyama and improved Euler (Heun) share the noise ``z``, their
difference is the error estimate, the step is accepted per sample under a mixed tolerance and
each sample has its own step size.

Host synchronisation: these solvers decide on the host (torchsde works with Python floats;
step acceptance of the adaptive methods), so they synchronise every step. They are reference
and research samplers, not the fast path.
"""

from __future__ import annotations

import abc
import math
import warnings
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from solvers.adaptive import AdaptiveStepError
from solvers.autograd import autograd_enabled, normal_tensor
from solvers.base import Solver, check_nfe
from solvers.broadcast import append_dims
from solvers.brownian import GaussianNoise, NoiseSource, flip_time
from solvers.protocols import SDETermLike

__all__ = [
    "WholeIntervalSDESolver",
    "TorchSDESolver",
    "TorchSDEEuler",
    "TorchSDEMilstein",
    "TorchSDESRK",
    "TorchSDEReversibleHeun",
    "TorchSDEAdaptive",
    "GottaGoFast",
    "BUILTINS",
]

_F64 = torch.float64
TorchSDEMethod = Literal["euler", "milstein", "srk", "reversible_heun"]
_METHOD_INFO: dict[str, tuple[str, str]] = {
    # method: (sde_type, Levy area it needs)
    "euler": ("ito", "none"),
    "milstein": ("ito", "none"),
    "srk": ("ito", "space-time"),
    "reversible_heun": ("stratonovich", "none"),
}


def _positive(name: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be finite and {'>=' if allow_zero else '>'} 0, got {v}")
    return v


def _optional_count(name: str, value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be an int >= 1 or None, got {name}={value!r}")


class WholeIntervalSDESolver(Solver[SDETermLike, None]):
    """Base of the stochastic solvers that integrate the whole grid themselves.

    :func:`solvers.integrate` calls :meth:`solve` (with the noise source) instead of
    :meth:`step`; ``ts`` is the grid (fixed-step methods) or the output times (adaptive ones).
    """

    stochastic = True
    term_type = SDETermLike

    def step(
        self,
        term: SDETermLike,
        t0: Tensor,
        t1: Tensor,
        x: Tensor,
        state: None,
        noise: Tensor | None,
    ) -> tuple[Tensor, None]:
        """Not supported: the solver integrates the whole interval.

        Raises:
            TypeError: always; call :func:`solvers.integrate`.
        """
        raise TypeError(
            f"{type(self).__name__} integrates the whole interval; call "
            f"solvers.integrate(solver, term, x0, ts)"
        )

    @abc.abstractmethod
    def solve(
        self,
        term: SDETermLike,
        x0: Tensor,
        ts: Tensor,
        *,
        noise: NoiseSource | None = None,
        save_path: bool = False,
        progress: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Integrate from ``ts[0]`` to ``ts[-1]``.

        Args:
            term: the (NFE-counting) SDE term.
            x0: state at ``ts[0]``, shape ``(B, *dims)``.
            ts: the grid / output times, ``(M + 1,)`` float64, strictly monotone.
            noise: the noise source (default: ``GaussianNoise()``, the global RNG).
            save_path: also return the states at every point of ``ts``.
            progress: show a tqdm bar.

        Returns:
            ``(x_end, path)``: the state at ``ts[-1]`` and the ``(M + 1, *x0.shape)`` states at
            ``ts`` if ``save_path`` (else ``None``).
        """


# =========================================================================== torchsde adapter


class _Budget(Exception):
    """Raised inside torchsde when the evaluation cap is reached (converted by the caller)."""


class _TorchSDEFunction:
    """The term as torchsde sees it: ``f(s, y)``, ``g(s, y)`` on ``(B, D)`` states and the
    flipped time ``s``. Counts drift calls, answers torchsde's shape probe, caches stage
    values, applies the Stratonovich correction."""

    noise_type = "diagonal"

    def __init__(
        self,
        term: SDETermLike,
        shape: torch.Size,
        t0: Tensor,
        sign: float,
        t_lo: Tensor,
        t_hi: Tensor,
        sde_type: str,
        max_nfe: int | None,
    ) -> None:
        self.term, self.shape, self.t0, self.sign = term, shape, t0, sign
        self.t_lo, self.t_hi = t_lo, t_hi
        self.sde_type = sde_type
        self.max_nfe = max_nfe
        self.nfe = 0
        self.probe = False
        self.grid_times: dict[float, Tensor] = {}
        self._cache: list[tuple[Tensor, float, Tensor]] = []
        self._additive: bool | None = None

    def time(self, s: Any) -> Tensor:
        """The solver's time of torchsde time ``s`` (grid points exactly; clamped)."""
        key = float(s)
        exact = self.grid_times.get(key)
        if exact is not None:
            return exact
        t = self.t0 + self.sign * torch.as_tensor(key, dtype=_F64, device=self.t0.device)
        return torch.minimum(torch.maximum(t, self.t_lo), self.t_hi)

    def _drift(self, t: Tensor, y: Tensor) -> Tensor:
        if self.max_nfe is not None and self.nfe >= self.max_nfe:
            raise _Budget
        self.nfe += 1
        x = y.reshape(self.shape)
        return self.term.drift(x, t).reshape(y.shape)

    def _diffusion(self, t: Tensor, y: Tensor) -> Tensor:
        x = y.reshape(self.shape)
        g = self.term.diffusion(x, t).to(y.dtype)
        return torch.broadcast_to(g, self.shape).reshape(y.shape)

    def f(self, s: Any, y: Tensor) -> Tensor:
        """torchsde drift ``sign * f(x, t)`` (Stratonovich-corrected where needed)."""
        if self.probe:  # torchsde's shape check in sdeint: not a network evaluation
            self.probe = False
            return torch.zeros_like(y)
        key = float(s)
        for cached_y, cached_s, out in self._cache:
            if cached_y is y and cached_s == key:
                return out
        t = self.time(s)
        f = self._drift(t, y)
        if self.sde_type == "stratonovich":
            correction = self._ito_to_stratonovich(t, y)
            if correction is not None:
                f = f - correction
        out = self.sign * f
        self._cache = [*self._cache[-7:], (y, key, out)]
        return out

    def g(self, s: Any, y: Tensor) -> Tensor:
        """torchsde diffusion ``g(x, t)`` broadcast to ``(B, D)``."""
        return self._diffusion(self.time(s), y)

    def _ito_to_stratonovich(self, t: Tensor, y: Tensor) -> Tensor | None:
        """``1/2 g dg/dx`` (diagonal), or ``None`` when ``g`` does not depend on ``x``."""
        if self._additive:
            return None
        with autograd_enabled():
            yy = normal_tensor(y).requires_grad_(True)
            g = self._diffusion(normal_tensor(t), yy)
            if not g.requires_grad:
                self._additive = True
                return None
            self._additive = False
            (dg,) = torch.autograd.grad(g.sum(), yy)
        return 0.5 * g.detach() * dg

    def additive(self, s: Any, y: Tensor) -> bool:
        """Whether ``g`` does not depend on the state (checked once, by autograd; free)."""
        if self._additive is None:
            with autograd_enabled():
                yy = normal_tensor(y).requires_grad_(True)
                self._additive = not self._diffusion(normal_tensor(self.time(s)), yy).requires_grad
        return self._additive

    def clear_cache(self) -> None:
        self._cache = []


@dataclass(frozen=True)
class TorchSDESolver(WholeIntervalSDESolver):
    """The torchsde back-end: ``torchsde.sdeint`` on the flattened, time-flipped reverse SDE
    (see the module docstring). Subclasses fix the method; :class:`TorchSDEAdaptive` adds
    torchsde's adaptive stepping.

    Fixed-step use: one torchsde step per interval of the grid ``ts``.
    """

    method: ClassVar[TorchSDEMethod]
    default_grid = "logsnr"
    default_grid_vp = "uniform"

    def _method(self) -> str:
        return type(self).method

    def _setup(
        self, term: SDETermLike, x0: Tensor, ts: Tensor, noise: NoiseSource | None
    ) -> tuple[_TorchSDEFunction, Any, Tensor]:
        method = self._method()
        sde_type, levy = _METHOD_INFO[method]
        source = noise if noise is not None else GaussianNoise()
        ts = ts.to(device=x0.device, dtype=_F64)
        sign = 1.0 if float(ts[-1]) > float(ts[0]) else -1.0
        fn = _TorchSDEFunction(
            term,
            x0.shape,
            ts[0],
            sign,
            ts.min(),
            ts.max(),
            sde_type,
            getattr(self, "max_nfe", None),
        )
        size = (x0.shape[0], x0[0].numel())
        bm = source.brownian_motion(
            float(ts[0]), float(ts[-1]), size, x0.dtype, x0.device, levy_area=levy
        )
        return fn, bm, flip_time(ts, ts[0])

    def solve(
        self,
        term: SDETermLike,
        x0: Tensor,
        ts: Tensor,
        *,
        noise: NoiseSource | None = None,
        save_path: bool = False,
        progress: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """One torchsde step per grid interval, exactly from grid point to grid point."""
        import torchsde

        fn, bm, ss = self._setup(term, x0, ts, noise)
        y = x0.reshape(x0.shape[0], -1)
        path = [x0] if save_path else None
        extra = None
        bar: Any = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=ts.numel() - 1, desc=type(self).__name__, unit="step")
        try:
            for i in range(ts.numel() - 1):
                s0, s1 = ss[i], ss[i + 1]
                fn.grid_times = {float(s0): ts[i], float(s1): ts[i + 1]}
                fn.probe = True
                fn.clear_cache()
                # dt slightly above the interval: torchsde's step ends at min(s0 + dt, s1) = s1
                dt = float(s1 - s0) * (1.0 + 1e-9)
                ys, extra = torchsde.sdeint(
                    fn,
                    y,
                    torch.stack([s0, s1]),
                    bm=bm,
                    method=self._method(),
                    dt=dt,
                    extra=True,
                    extra_solver_state=extra,
                )
                y = ys[-1]
                if path is not None:
                    path.append(y.reshape(x0.shape))
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        x = y.reshape(x0.shape)
        return x, torch.stack(path) if path is not None else None


@dataclass(frozen=True)
class TorchSDEEuler(TorchSDESolver):
    """torchsde ``euler``: Euler-Maruyama (Ito), through the torchsde adapter.

    ``x1 = x0 + f dt + g dW``. On a :class:`~solvers.brownian.BrownianPath` it agrees with
    :class:`solvers.sde_fixed.EulerMaruyama` to rounding. SDE solver (Ito); strong order 1.0
    (additive noise; 0.5 otherwise), weak order 1.0; 1 drift evaluation per step. Default grid
    ``"uniform"`` for VP-type SDEs, ``"logsnr"`` for VE/EDM.
    """

    method = "euler"
    order = 1
    strong_order = 1.0
    weak_order = 1.0
    evals_per_step = 1


@dataclass(frozen=True)
class TorchSDEMilstein(TorchSDESolver):
    """torchsde ``milstein`` (Ito, diagonal noise; Milstein 1974): Euler-Maruyama plus
    ``1/2 g g' (dW^2 - dt)``. The correction vanishes for additive noise (every reverse
    diffusion SDE), where it equals Euler-Maruyama.

    SDE solver (Ito); strong order 1.0, weak order 1.0; 1 drift evaluation per step
    (``g'`` by autograd, free). Default grid as ``sde_euler``.
    """

    method = "milstein"
    order = 1
    strong_order = 1.0
    weak_order = 1.0
    evals_per_step = 1


@dataclass(frozen=True)
class TorchSDESRK(TorchSDESolver):
    """torchsde ``srk``: the stochastic Runge-Kutta method SRID2 of Rößler 2010 (Ito, diagonal
    noise), with space-time Levy area.

    SDE solver (Ito); strong order 1.5, weak order 1.5 (torchsde's declaration); 4 drift
    evaluations per step (the adapter caches the stage values torchsde re-evaluates; 10 calls
    without the cache). Default grid as ``sde_euler``.
    """

    method = "srk"
    order = 2
    strong_order = 1.5
    weak_order = 1.5
    evals_per_step = 4


@dataclass(frozen=True)
class TorchSDEReversibleHeun(TorchSDESolver):
    """torchsde ``reversible_heun`` (Kidger et al. 2021, "Efficient and Accurate Gradients for
    Neural SDEs"; Stratonovich): an algebraically reversible Heun method, one drift evaluation
    per step thanks to its extra state (carried across the grid intervals).

    The Ito drift is converted to Stratonovich (``f - 1/2 g dg/dx``; nothing to do for additive
    noise, where the two agree). SDE solver; strong order 1.0 (additive noise), weak order 1.0;
    ``nfe_for_steps(n) = n + 1`` (one evaluation at the start). Default grid as ``sde_euler``.
    """

    method = "reversible_heun"
    order = 2
    strong_order = 1.0
    weak_order = 1.0
    evals_per_step = 1

    def nfe_for_steps(self, n_steps: int) -> int:
        """``n + 1``: one drift evaluation per step plus one at the start."""
        return n_steps + 1 if n_steps > 0 else 0


@dataclass(frozen=True)
class _AdaptiveMixin:
    """Budget semantics of the adaptive whole-interval solvers: ``nfe`` is a cap."""

    max_nfe: int | None = None

    adaptive: ClassVar[bool] = True

    def nfe_for_steps(self, n_steps: int) -> int:
        """Not defined: an adaptive solve's cost is known only after the solve.

        Raises:
            TypeError: always; bound the cost with ``max_nfe`` (``for_budget``).
        """
        raise TypeError(
            f"{type(self).__name__} chooses its own steps: its cost is not a function of a step "
            f"count; bound it with max_nfe (for_budget(nfe)) and read Solution.nfe"
        )

    def for_budget(self, nfe: int) -> tuple[Any, int]:
        """This solver with ``max_nfe = nfe`` (the smaller if it has one) and one "step": the
        output grid is ``[t_start, t_end]``."""
        check_nfe(nfe)
        cap = nfe if self.max_nfe is None else min(nfe, self.max_nfe)
        return replace(self, max_nfe=cap), 1


@dataclass(frozen=True)
class TorchSDEAdaptive(_AdaptiveMixin, TorchSDESolver):
    """torchsde's adaptive stepping (``sdeint(adaptive=True)``): each attempt takes one full
    step and two half steps of ``method`` on the same Brownian path (a ``BrownianInterval``:
    rejected steps stay consistent), their difference is the error under ``rtol``/``atol``, and
    the step size follows a PI controller (torchsde ``adaptive_stepping``).

    ``ts`` are the output times. NFE: every drift call (three steps per attempt, rejected ones
    included). torchsde never fails on the minimum step ``dt_min``: it warns and accepts.

    SDE solver; orders of ``method``. Default grid ``"uniform"`` (``sd.sample``: just
    ``[T, t_min]``).

    Args:
        method_name: ``"srk"`` (default), ``"euler"``, ``"milstein"`` or
            ``"reversible_heun"``.
        rtol: relative tolerance (default 1e-3; torchsde's default 1e-5 is too tight for
            float32 sampling).
        atol: absolute tolerance (default 1e-3; torchsde's 1e-4 is too tight as well).
        first_step: the first step size, relative to ``|t_end - t_start|`` (default 0.01).
        dt_min: the smallest step, relative to ``|t_end - t_start|`` (default 1e-5).
        max_nfe: cap on the drift evaluations (``None``: no cap); reaching it raises
            :class:`solvers.AdaptiveStepError`. ``sd.sample`` sets it from ``nfe``.
    """

    method_name: TorchSDEMethod = "srk"
    rtol: float = 1e-3
    atol: float = 1e-3
    first_step: float = 0.01
    dt_min: float = 1e-5

    method: ClassVar[TorchSDEMethod] = "srk"
    order = 2
    strong_order = 1.5
    weak_order = 1.5
    evals_per_step = 12

    def __post_init__(self) -> None:
        if self.method_name not in _METHOD_INFO:
            raise ValueError(
                f"method_name must be one of {', '.join(_METHOD_INFO)}, got {self.method_name!r}"
            )
        _positive("rtol", self.rtol)
        _positive("atol", self.atol, allow_zero=True)
        for name in ("first_step", "dt_min"):
            if not 0 < _positive(name, getattr(self, name)) <= 1:
                raise ValueError(f"{name} must be in (0, 1] (relative to the interval)")
        _optional_count("max_nfe", self.max_nfe)

    def _method(self) -> str:
        return self.method_name

    def solve(
        self,
        term: SDETermLike,
        x0: Tensor,
        ts: Tensor,
        *,
        noise: NoiseSource | None = None,
        save_path: bool = False,
        progress: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """One adaptive ``sdeint`` over the output times ``ts``.

        Raises:
            AdaptiveStepError: ``max_nfe`` reached.
        """
        import torchsde

        fn, bm, ss = self._setup(term, x0, ts, noise)
        fn.grid_times = {float(s): ts[i] for i, s in enumerate(ss)}
        fn.probe = True
        length = float(ss[-1])
        y = x0.reshape(x0.shape[0], -1)
        additive = fn.additive(ss[0], y)
        try:
            with warnings.catch_warnings():
                if additive:  # torchsde's warning about adaptive Euler is for non-additive noise
                    warnings.filterwarnings("ignore", message="Numerical solution is not guar")
                ys = torchsde.sdeint(
                    fn,
                    y,
                    ss,
                    bm=bm,
                    method=self.method_name,
                    dt=self.first_step * length,
                    adaptive=True,
                    rtol=self.rtol,
                    atol=self.atol,
                    dt_min=self.dt_min * length,
                )
        except _Budget:
            raise AdaptiveStepError(
                f"{type(self).__name__} reached max_nfe={self.max_nfe} before the end of the "
                f"interval [{float(ts[0])}, {float(ts[-1])}]; raise nfe or loosen rtol/atol",
                t=float("nan"),
                nfe=fn.nfe,
                rtol=self.rtol,
                atol=self.atol,
            ) from None
        path = ys.reshape(ys.shape[0], *x0.shape)
        return path[-1], path if save_path else None


# =========================================================================== Gotta Go Fast


@dataclass
class _FutureIncrements:
    """Per-sample stacks of future Brownian increments (Rackauckas & Nie 2017, RSwM1): the
    parts of the path that a rejected step already drew, nearest first at ``depth - 1``.

    Attributes:
        length: ``(B, K)`` float64 interval lengths.
        dw: ``(B, K, *dims)`` increments ``W(end) - W(start)``.
        depth: ``(B,)`` int64 number of intervals on each stack.
    """

    length: Tensor
    dw: Tensor
    depth: Tensor

    @classmethod
    def empty(cls, x: Tensor) -> _FutureIncrements:
        b = x.shape[0]
        return cls(
            x.new_zeros((b, 4), dtype=_F64),
            x.new_zeros((b, 4, *x.shape[1:])),
            torch.zeros(b, dtype=torch.long, device=x.device),
        )

    def take(self, rows: Tensor, h: Tensor, xi: Tensor) -> tuple[Tensor, Tensor]:
        """The increments of the next attempted steps of the samples ``rows`` (wanted step
        ``h``, standard normals ``xi``): a fresh ``sqrt(h) xi`` on an empty stack; else the
        stack's nearest interval ``(L, dW_L)``, whole (step ``L``, popped) if ``h >= L`` (to
        within a relative 1e-6: no sliver of an interval is left on the stack), or
        its first part by the Brownian bridge, ``dW = (h/L) dW_L + sqrt(h (L - h) / L) xi``,
        the rest ``(L - h, dW_L - dW)`` staying on the stack.

        Returns:
            ``(h, dW)``: the step actually attempted (``<= h``) and its increment.
        """
        depth = self.depth[rows]
        has = depth > 0
        top = (depth - 1).clamp_min(0)
        big = torch.full_like(h, math.inf)
        length = torch.where(has, self.length[rows, top], big)
        dw_top = self.dw[rows, top]
        whole = has & (h >= length * (1.0 - 1e-6))  # no sliver left on the stack
        split = has & ~whole
        h_used = torch.where(whole, length, h)
        frac = torch.where(split, h_used / length, 0.0)
        bridge_sd = torch.where(split, (h_used * (length - h_used) / length).clamp_min(0), h_used)
        shape = (-1,) + (1,) * (xi.ndim - 1)
        dw = (
            frac.reshape(shape).to(xi.dtype) * dw_top
            + bridge_sd.sqrt().reshape(shape).to(xi.dtype) * xi
        )
        dw = torch.where(whole.reshape(shape), dw_top, dw)
        # update the stacks: pop the whole intervals, shorten the split ones
        self.depth[rows] = torch.where(whole, depth - 1, depth)
        srows, stop = rows[split], top[split]
        self.length[srows, stop] = length[split] - h_used[split]
        self.dw[srows, stop] = dw_top[split] - dw[split]
        return h_used, dw

    def push(self, rows: Tensor, h: Tensor, dw: Tensor) -> None:
        """Put the rejected intervals ``(h, dW)`` of ``rows`` back on top of their stacks."""
        if rows.numel() == 0:
            return
        depth = self.depth[rows]
        if int(depth.max()) >= self.length.shape[1]:  # grow the stacks
            k = self.length.shape[1]
            self.length = torch.cat([self.length, self.length.new_zeros(self.length.shape)], 1)
            self.dw = torch.cat([self.dw, self.dw.new_zeros(self.dw.shape)], 1)
            assert self.length.shape[1] == 2 * k
        self.length[rows, depth] = h
        self.dw[rows, depth] = dw
        self.depth[rows] = depth + 1


@dataclass(frozen=True)
class GottaGoFast(_AdaptiveMixin, WholeIntervalSDESolver):
    """Adaptive reverse-SDE solver with per-sample steps (Jolicoeur-Martineau et al. 2021,
    "Gotta Go Fast When Generating Data with Score-Based Models", Algorithm 1).

    Every sample ``b`` has its own time ``t_b`` and step ``h_b``. One iteration, for the active
    samples, with ``dt = -h`` when sampling and the Brownian increment ``dW`` of the step
    (``z = dW / sqrt(h)``):

        x'  = x + f(x, t) dt + g(t) dW                             (Euler-Maruyama)
        x~  = x + f(x', t + dt) dt + g(t + dt) dW
        x'' = (x' + x~) / 2                                        (improved Euler)
        E   = || (x'' - x') / delta ||_2 / sqrt(D),  delta = max(atol, rtol max(|x'|, |x'_prev|))

    (``x'_prev``: the previous accepted Euler-Maruyama proposal). If ``E <= 1`` the step is
    accepted: ``x <- x''`` (``extrapolate=True``, the paper's default; else ``x'``),
    ``t <- t + dt``. In all cases ``h <- min(remaining, safety h E^(-exponent))``, the remaining
    distance being to the sample's next output time.

    The noise of a rejected step (``brownian``):

    * ``"bridge"`` (default): kept. The rejected interval's increment stays part of the
      sample's Brownian path and the retried, shorter step takes its first part by the Brownian
      bridge (Rejection Sampling with Memory, Rackauckas & Nie 2017, RSwM1: a per-sample stack
      of future increments). Accepted steps are then increments of one Brownian path and the
      samples have the right distribution as the tolerances shrink.
    * ``"redraw"``: fresh noise at every attempt, as the paper's code does. Rejection depends on
      ``z`` (large draws give large errors), so the accepted noise is biased towards small
      draws; the bias does not shrink with the tolerances. It is negligible for images (the
      error norm averages over thousands of dimensions) but not in low dimension: on a 2-D
      Gaussian mixture the sliced Wasserstein distance to the exact distribution stays 3-15
      times its sampling noise at every tolerance (VP, VE, EDM), against ~1 with ``"bridge"``.

    NFE: one evaluation is one call of the drift on the batch of active samples (samples that
    have reached the end leave the batch): two per iteration, however many samples are active
    and whether their steps are accepted or not. This is the count of network calls; the paper
    counts one per iteration.

    SDE solver (adaptive); the accepted update is improved Euler: strong order 1.0 (additive
    noise), weak order 1.0. ``ts`` are the output times (every sample stops at each). Default
    grid ``"uniform"`` (``sd.sample``: ``[T, t_min]``).

    Args:
        rtol: relative tolerance ``eps_rel`` (paper: 0.01-0.05; default 0.01).
        atol: absolute tolerance ``eps_abs`` (paper: 0.0078 for images in [-1, 1], i.e. about
            one quantisation level; default 0.01).
        safety: ``theta`` (0.9).
        exponent: ``r`` of ``h E^(-r)`` (0.9).
        first_step: ``h_init`` relative to ``|t_end - t_start|`` (paper 0.01 with ``T = 1``).
        extrapolate: accept the improved-Euler value ``x''`` (``True``) or ``x'``.
        brownian: ``"bridge"`` (default) or ``"redraw"`` (see above).
        max_nfe: cap on the evaluations (``None``: no cap); the call that would exceed it is
            not made and the solve ends with :class:`solvers.AdaptiveStepError`.
        max_iterations: cap on the iterations (safety net).
        rel_min_step: a step size (as proposed by the controller) below ``rel_min_step *
            |t_end - t_start|`` ends the solve with :class:`solvers.AdaptiveStepError`.
    """

    rtol: float = 1e-2
    atol: float = 1e-2
    safety: float = 0.9
    exponent: float = 0.9
    first_step: float = 0.01
    extrapolate: bool = True
    brownian: Literal["bridge", "redraw"] = "bridge"
    max_iterations: int | None = 100_000
    rel_min_step: float = 1e-10

    order = 2
    strong_order = 1.0
    weak_order = 1.0
    evals_per_step = 2
    default_grid = "uniform"

    def __post_init__(self) -> None:
        _positive("rtol", self.rtol, allow_zero=True)
        _positive("atol", self.atol, allow_zero=True)
        if self.rtol == 0 and self.atol == 0:
            raise ValueError("rtol and atol cannot both be 0")
        if not 0 < _positive("safety", self.safety) <= 1:
            raise ValueError(f"safety must be in (0, 1], got {self.safety}")
        _positive("exponent", self.exponent)
        if not 0 < _positive("first_step", self.first_step) <= 1:
            raise ValueError(f"first_step must be in (0, 1] (relative), got {self.first_step}")
        if not 0 < _positive("rel_min_step", self.rel_min_step) < 1:
            raise ValueError(f"rel_min_step must be in (0, 1), got {self.rel_min_step}")
        _optional_count("max_nfe", self.max_nfe)
        _optional_count("max_iterations", self.max_iterations)
        if not isinstance(self.extrapolate, bool):
            raise TypeError(f"extrapolate must be a bool, got {self.extrapolate!r}")
        if self.brownian not in ("bridge", "redraw"):
            raise ValueError(f"brownian must be 'bridge' or 'redraw', got {self.brownian!r}")

    def _error(self, msg: str, t: float, nfe: int) -> AdaptiveStepError:
        return AdaptiveStepError(
            f"{type(self).__name__}: {msg} (rtol={self.rtol}, atol={self.atol}, nfe={nfe})",
            t=t,
            nfe=nfe,
            rtol=self.rtol,
            atol=self.atol,
        )

    def solve(
        self,
        term: SDETermLike,
        x0: Tensor,
        ts: Tensor,
        *,
        noise: NoiseSource | None = None,
        save_path: bool = False,
        progress: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Algorithm 1 from ``ts[0]`` to ``ts[-1]``, every sample stopping at each ``ts[k]``.

        Raises:
            AdaptiveStepError: ``max_nfe``, ``max_iterations`` or the minimum step reached.
        """
        source = noise if noise is not None else GaussianNoise()
        device, dtype = x0.device, x0.dtype
        ts = ts.to(device=device, dtype=_F64)
        m = ts.numel() - 1
        batch = x0.shape[0]
        direction = 1.0 if float(ts[-1]) > float(ts[0]) else -1.0
        length = abs(float(ts[-1]) - float(ts[0]))
        d = x0[0].numel()
        x = x0.clone()
        x_prev = x0.clone()  # previous accepted Euler-Maruyama proposal
        t = ts[0].expand(batch).clone()
        h = torch.full((batch,), self.first_step * length, dtype=_F64, device=device)
        k = torch.ones(batch, dtype=torch.long, device=device)  # next output index
        future = _FutureIncrements.empty(x0) if self.brownian == "bridge" else None
        path = x0.new_zeros((m + 1, *x0.shape)) if save_path else None
        if path is not None:
            path[0] = x0
        nfe = 0
        bar: Any = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=length, desc=type(self).__name__, unit="time")
        try:
            for _ in range(self.max_iterations or 2**62):
                active = torch.nonzero(k <= m).flatten()
                if active.numel() == 0:
                    break
                if self.max_nfe is not None and nfe + 2 > self.max_nfe:
                    slowest = float(t[active].max() if direction < 0 else t[active].min())
                    raise self._error(
                        f"max_nfe={self.max_nfe} reached with {active.numel()} samples short of "
                        f"t = {float(ts[-1])} (slowest at t = {slowest}); raise nfe or loosen "
                        f"rtol/atol",
                        slowest,
                        nfe,
                    )
                xa, ta = x[active], t[active]
                target = ts[k[active]]
                remaining = (target - ta).abs()
                if bool((h[active] < self.rel_min_step * length).any()):
                    raise self._error(
                        f"step size below the minimum {self.rel_min_step * length:.3g}",
                        float(ta[0]),
                        nfe,
                    )
                # a step within 0.1% of the remaining distance lands (no sliver left over)
                ha = torch.where(h[active] >= 0.999 * remaining, remaining, h[active])
                xi = source.normal(xa, active)
                if future is not None:  # Brownian path kept across rejections (RSwM1)
                    ha, dw = future.take(active, ha, xi)
                else:
                    dw = append_dims(ha.sqrt(), xa.ndim).to(dtype) * xi
                lands = ha >= remaining * (1.0 - 1e-9)  # rounding: land on the output time
                t_next = torch.where(lands, target, ta + direction * ha)
                dt = append_dims(direction * ha, xa.ndim).to(dtype)
                # Euler-Maruyama proposal and the improved-Euler (Heun) step
                f1 = term.drift(xa, ta)
                g1 = term.diffusion(xa, ta).to(dtype)
                x_em = xa + f1 * dt + g1 * dw
                f2 = term.drift(x_em, t_next)
                g2 = term.diffusion(x_em, t_next).to(dtype)
                x_heun = xa + 0.5 * (f1 + f2) * dt + 0.5 * (g1 + g2) * dw
                nfe += 2
                # mixed-tolerance error, per sample (scaled L2 norm)
                scale = torch.maximum(x_em.abs(), x_prev[active].abs()) * self.rtol
                delta = scale.clamp_min(self.atol) if self.atol > 0 else scale
                err = ((x_heun - x_em) / delta).flatten(1).pow(2).sum(1).div(d).sqrt().to(_F64)
                err = torch.nan_to_num(err, nan=math.inf)
                accept = err <= 1.0
                acc = append_dims(accept, xa.ndim)
                x[active] = torch.where(acc, x_heun if self.extrapolate else x_em, xa)
                x_prev[active] = torch.where(acc, x_em, x_prev[active])
                t[active] = torch.where(accept, t_next, ta)
                if future is not None:
                    future.push(active[~accept], ha[~accept], dw[~accept])
                # step-size update (also after a rejection)
                factor = self.safety * err.pow(-self.exponent)
                h[active] = torch.where(err > 0, ha * factor, torch.full_like(ha, length))
                # samples that reached their output time
                landed = accept & lands
                if bool(landed.any()):
                    rows = active[landed]
                    if path is not None:
                        path[k[rows], rows] = x[rows]
                    k[rows] += 1
                if bar is not None:
                    bar.update(float((t - ts[0]).abs().min()) - bar.n)
            else:
                raise self._error(
                    f"max_iterations={self.max_iterations} reached", float("nan"), nfe
                )
        finally:
            if bar is not None:
                bar.close()
        return x, path


BUILTINS: dict[str, type[Solver[Any, Any]]] = {
    "sde_euler": TorchSDEEuler,
    "sde_milstein": TorchSDEMilstein,
    "sde_srk": TorchSDESRK,
    "sde_reversible_heun": TorchSDEReversibleHeun,
    "sde_srk_adaptive": TorchSDEAdaptive,
    "adaptive_sde": GottaGoFast,
}
"""Registry names of this module's solvers (wired into :data:`solvers.SOLVERS` by
``solvers/registry.py``)."""
