"""The one integration loop (diffrax ``diffeqsolve``; torchdiffeq/torchsde ``integrate``).

:func:`integrate` owns iteration over the grid, direction, dtype policy, noise, callbacks,
trajectory saving, progress, NFE accounting and the final finiteness check. Solvers only
implement one step (:class:`solvers.Solver`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from solvers.base import Solver, check_solver_class
from solvers.brownian import GaussianNoise, NoiseSource
from solvers.terms import count_evaluations, protocol_members
from solvers.time_grids import check_grid

__all__ = ["integrate", "Solution", "NonFiniteError", "standard_normal_noise", "Callback"]

Callback = Callable[[int, Tensor, Tensor], object]
"""``callback(i, t, x)``: called after step ``i`` (0-based) with ``t = ts[i + 1]`` (0-d
float64 tensor on ``x``'s device) and the new state ``x``; its return value is ignored."""


@dataclass(frozen=True)
class Solution:
    """Result of :func:`integrate`.

    Attributes:
        x: final state at ``ts[-1]``, shape/dtype/device of ``x0``.
        nfe: network function evaluations made (calls of ``velocity``/``drift``/``denoise``).
        ts: the grid used, ``(N + 1,)`` float64 on ``x``'s device.
        path: ``(N + 1, *x0.shape)`` states at every grid point (``path[0] = x0``), or ``None``
            unless ``save_path=True``.
    """

    x: Tensor
    nfe: int
    ts: Tensor
    path: Tensor | None = None


class NonFiniteError(FloatingPointError):
    """The integrated state became NaN or infinite."""


def standard_normal_noise(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """The per-step noise of stochastic solvers: ``z ~ N(0, I)`` with ``x``'s shape and dtype.

    Drawn with ``torch.randn(x.shape, generator=generator, dtype=x.dtype)`` on the generator's
    device (``x``'s device if ``generator`` is ``None``: the global RNG) and moved to ``x``'s
    device, so a CPU generator gives the same numbers whatever device the state is on. A solver
    turns it into the Brownian increment ``dW = sqrt(|t1 - t0|) z``.
    """
    if generator is None:
        return torch.randn(x.shape, dtype=x.dtype, device=x.device)
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device)
    return z.to(x.device)


def _finite_probe(x: Tensor) -> Tensor:
    """A 0-d tensor that is finite if and only if every entry of ``x`` is.

    One or two kernels instead of ``isfinite(x).all()`` (four to six, and a boolean temporary
    of ``x``'s size): the sum in float64 of a float32/float16/bfloat16 state cannot overflow
    (at most ``numel * 3.4e38``), so it is non-finite exactly when an entry is NaN or inf; a
    float64 state is multiplied by 0 first (0 for a finite entry, NaN for NaN/inf), so a
    finite float64 state whose sum would overflow is not reported either.
    """
    if x.dtype == torch.float64:
        return (x * 0.0).sum()
    return x.sum(dtype=torch.float64)


def _check_term(solver: Solver[Any, Any], term: object) -> None:
    protocol = type(solver).term_type
    if isinstance(term, protocol):
        return
    members = protocol_members(protocol)
    missing = [m for m in members if not hasattr(term, m)]
    hint = ""
    if callable(term) and missing:
        hint = (
            "; wrap a plain function in solvers.ODETerm(fn), solvers.SDETerm(f, g) or "
            "solvers.DenoiserTerm(fn, schedule)"
        )
    raise TypeError(
        f"solver {type(solver).__name__} expects a term satisfying {protocol.__name__} "
        f"(members: {', '.join(members)}), got {type(term).__name__} "
        f"(missing: {', '.join(missing) or 'none'}){hint}"
    )


def _check_inputs(
    solver: object, x0: object, ts: object, generator: object, callback: object, noise: object
) -> None:
    if not isinstance(solver, Solver):
        if isinstance(solver, type) and issubclass(solver, Solver):
            raise TypeError(
                f"solver must be a Solver instance, got the class {solver.__name__}; "
                f"pass {solver.__name__}() or solvers.get_solver(name)"
            )
        raise TypeError(f"solver must be a solvers.Solver instance, got {type(solver).__name__}")
    check_solver_class(type(solver))
    if not isinstance(x0, Tensor):
        raise TypeError(f"x0 must be a torch.Tensor, got {type(x0).__name__}")
    if not x0.dtype.is_floating_point:
        raise TypeError(f"x0 must have a floating dtype, got {x0.dtype}")
    if x0.ndim < 1:
        raise ValueError("x0 must have shape (B, *dims), got a 0-d tensor")
    if not isinstance(ts, Tensor):
        raise TypeError(
            f"ts must be a 1-D float64 torch.Tensor, got {type(ts).__name__}; "
            f"build one with solvers.as_grid(ts) or a solvers.time_grids function"
        )
    if ts.dtype != torch.float64:
        raise ValueError(
            f"ts must be float64, got {ts.dtype}; convert it with solvers.as_grid(ts) "
            f"(grids stay float64 whatever the state dtype)"
        )
    check_grid(ts, name="ts")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {generator!r}")
    if noise is not None:
        if not isinstance(noise, NoiseSource):
            raise TypeError(
                f"noise must be a solvers.brownian.NoiseSource (GaussianNoise, PerSampleNoise, "
                f"BrownianPath) or None, got {type(noise).__name__}"
            )
        if generator is not None:
            raise ValueError("give either generator or noise (a noise source), not both")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable (i, t, x) or None, got {callback!r}")


def integrate(
    solver: Solver[Any, Any],
    term: object,
    x0: Tensor,
    ts: Tensor,
    *,
    generator: torch.Generator | None = None,
    noise: NoiseSource | None = None,
    callback: Callback | None = None,
    save_path: bool = False,
    progress: bool = False,
) -> Solution:
    """Integrate ``term`` over the grid ``ts`` with ``solver``, starting from ``x0 = x(ts[0])``.

    Time flows in the direction of the grid: a decreasing ``ts`` integrates backwards
    (sampling from ``T`` down to ``t_min``); each step gets ``t0 = ts[i]``, ``t1 = ts[i + 1]``
    and the solver uses ``dt = t1 - t0`` as is.

    Conventions:

    * Grid: 1-D float64, >= 2 points, finite, strictly monotone; moved to ``x0``'s device.
      What a term receives as ``t`` is a 0-d float64 tensor on that device.
    * Dtype/device: the state keeps ``x0``'s dtype and device at every step (a step result in
      another dtype is cast back); the grid stays float64.
    * Noise (stochastic solvers only): before every step, in step order, one draw
      ``z = noise.increment(t0, t1, x)`` of ``x``'s shape (default source:
      :class:`solvers.brownian.GaussianNoise` on ``generator``, i.e. one
      :func:`standard_normal_noise` draw); the solver forms ``dW = sqrt(|dt|) z``. A solver
      needing ``k = solver.noise_draws > 1`` draws per step (the predictor-corrector sampler)
      gets them stacked, shape ``(k, *x.shape)``: the increment first, then ``k - 1`` draws
      ``noise.normal(x)``. Same generator seed, same result. Whole-interval stochastic solvers
      (torchsde, the adaptive SDE solver) get the source itself.
    * NFE: the term is wrapped in a counter (:func:`solvers.terms.count_evaluations`); every
      ``velocity``/``drift``/``denoise`` call is one evaluation, ``diffusion`` is free.
    * Gradients: the ambient grad mode is respected (integrate never changes it). Wrap a
      sampling call in ``torch.no_grad()``/``torch.inference_mode()``; call it with grad
      enabled to backpropagate through the solve.
    * Finiteness: tracked on the device without host synchronisation; a single check after the
      loop raises :class:`NonFiniteError` naming the first step whose result was NaN/inf.
    * Adaptive solvers (:class:`solvers.adaptive.AdaptiveSolver`: dopri5, rk45, ...) choose
      their own steps: ``ts`` are then the output times (``ts[0]`` start, ``ts[-1]`` end,
      the path is saved at every point), the callback runs once per output time after the
      solve, and the solve may end with ``AdaptiveStepError`` (minimum step, ``max_nfe``).

    Args:
        solver: a :class:`solvers.Solver` instance (e.g. ``solvers.Euler()``).
        term: a term satisfying ``solver.term_type`` (e.g. ``solvers.ODETerm(fn)``).
        x0: initial state ``(B, *dims)``, floating dtype, finite.
        ts: time grid ``(N + 1,)`` float64 (see :mod:`solvers.time_grids`).
        generator: source of the noise of stochastic solvers (``None``: global RNG).
        noise: a :class:`solvers.brownian.NoiseSource` instead of ``generator``: per-sample
            seeds (:class:`~solvers.brownian.PerSampleNoise`) or one Brownian path shared by
            several solves (:class:`~solvers.brownian.BrownianPath`).
        callback: ``callback(i, t, x)`` after each step ``i`` with ``t = ts[i + 1]``.
        save_path: also return the states at every grid point.
        progress: show a tqdm progress bar.

    Returns:
        :class:`Solution` with the final state, the NFE, the grid and the optional path.

    Raises:
        TypeError: wrong solver/term/tensor types; the message names the solver, the expected
            protocol and what was given.
        ValueError: invalid grid (naming the problem) or initial state.
        NonFiniteError: the state became NaN/inf (naming the step).
    """
    _check_inputs(solver, x0, ts, generator, callback, noise)
    _check_term(solver, term)
    if not bool(torch.isfinite(x0).all()):
        raise ValueError("x0 must be finite, got NaN or inf entries")
    from solvers.adaptive import AdaptiveSolver  # here: solvers.adaptive imports this module

    stochastic = type(solver).stochastic
    source = (noise if noise is not None else GaussianNoise(generator)) if stochastic else None
    if isinstance(solver, AdaptiveSolver) or (stochastic and hasattr(solver, "solve")):
        return _integrate_adaptive(solver, term, x0, ts, callback, save_path, progress, source)
    name = type(solver).__name__
    shape, dtype, device = x0.shape, x0.dtype, x0.device
    ts = ts.to(device)
    n_steps = ts.numel() - 1
    counted = count_evaluations(term, type(solver).term_type)
    draws = int(getattr(solver, "noise_draws", 1))

    bar: Any = None
    if progress:
        from tqdm import tqdm  # lazy: only needed for the bar

        bar = tqdm(total=n_steps, desc=name, unit="step")
    # one 0-d probe per step, finite iff that step's state is (kept on the device: no sync)
    probes: list[Tensor] = []
    path: list[Tensor] | None = [x0] if save_path else None
    points = ts.unbind(0)  # the grid's 0-d float64 views, made once (no per-step indexing)
    x = x0
    try:
        state = solver.init(counted, ts, x)
        for i in range(n_steps):
            t0, t1 = points[i], points[i + 1]
            z: Tensor | None = None
            if source is not None:
                z = source.increment(t0, t1, x)
                if draws > 1:
                    z = torch.stack([z, *(source.normal(x) for _ in range(draws - 1))])
            x, state = solver.step(counted, t0, t1, x, state, z)
            if x.shape != shape:
                raise RuntimeError(
                    f"solver {name} returned a state of shape {tuple(x.shape)} at step {i}, "
                    f"expected {tuple(shape)} (a coefficient not broadcast with append_dims?)"
                )
            if x.dtype != dtype or x.device != device:
                x = x.to(dtype=dtype, device=device)
            probes.append(_finite_probe(x))
            if path is not None:
                path.append(x)
            if callback is not None:
                callback(i, t1, x)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    bad_steps = ~torch.isfinite(torch.stack(probes))
    if bool(bad_steps.any()):  # the one host synchronisation of a finite solve
        bad = int(bad_steps.nonzero()[0, 0])
        t_a, t_b = ts[bad].item(), ts[bad + 1].item()
        raise NonFiniteError(
            f"integrate with solver {name}: the state became non-finite (NaN or inf) at step "
            f"{bad} of {n_steps} (t = {t_a!r} -> {t_b!r}); the term returned NaN/inf there or "
            f"the step is unstable (try more steps or another grid)"
        )
    return Solution(
        x=x,
        nfe=counted.nfe,
        ts=ts,
        path=torch.stack(path) if path is not None else None,
    )


def _integrate_adaptive(
    solver: Any,
    term: object,
    x0: Tensor,
    ts: Tensor,
    callback: Callback | None,
    save_path: bool,
    progress: bool,
    noise: NoiseSource | None = None,
) -> Solution:
    """:func:`integrate` for a whole-interval solver (``solvers.AdaptiveSolver``, and the
    stochastic solvers with a ``solve`` method: torchsde, the adaptive SDE solver): the solver
    runs over the whole grid itself (adaptive ones pick their own steps and ``ts`` are the
    output times). The callback runs once per point ``ts[1:]``, after the solve, with the saved
    state there. Stochastic ones get the noise source as ``solve(..., noise=source)``."""
    name = type(solver).__name__
    shape, dtype, device = x0.shape, x0.dtype, x0.device
    ts = ts.to(device)
    counted = count_evaluations(term, type(solver).term_type)
    extra: dict[str, Any] = {} if noise is None else {"noise": noise}
    x, path = solver.solve(
        counted, x0, ts, save_path=save_path or callback is not None, progress=progress, **extra
    )
    if x.shape != shape:
        raise RuntimeError(
            f"solver {name} returned a state of shape {tuple(x.shape)}, expected {tuple(shape)}"
        )
    x = x.to(dtype=dtype, device=device)
    if path is not None:
        path = path.to(dtype=dtype, device=device)
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteError(
            f"integrate with solver {name}: the final state at t = {ts[-1].item()!r} is "
            f"non-finite (NaN or inf)"
        )
    if callback is not None:
        assert path is not None
        for i in range(ts.numel() - 1):
            callback(i, ts[i + 1], path[i + 1])
    return Solution(x=x, nfe=counted.nfe, ts=ts, path=path if save_path else None)
