"""``sd.sample``: draw samples from a score model with any registered solver, on a budget.

Every method of :mod:`solvers` works with every SDE and every model: the model (anything with
the :class:`scoresde.ScoreModel` interface: ``sde``, ``score``, ``x0``) becomes the term the
solver declares (:func:`scoresde.reverse.solver_term`), the time grid runs from ``T`` down to
``t_min``, and :func:`solvers.integrate` does the one loop.

Budget semantics (``nfe``): a method never makes more than ``nfe`` network evaluations. Its
step count is the largest one whose cost fits (``solver.for_budget(nfe)``):

* single-evaluation methods (Euler, DDIM, the multistep methods DPM-Solver++ 2M/3M, UniPC,
  PLMS, iPNDM: one new evaluation per step, history reused): ``nfe`` steps;
* Heun (EDM Algorithm 1, Euler on the last step): ``2 n - 1`` evaluations for n steps;
* two-/three-stage single-step methods (midpoint, DPM-Solver-2, DPM-Solver++ 2S: 2 per step;
  DPM-Solver-3: 3; RK4: 4): ``nfe // k`` steps, except DPM-Solver-2/3, which lower the order
  of their last step so that the whole budget is used (Lu et al. 2022, "DPM-Solver-fast");
* adaptive methods: ``nfe`` is a cap (None: no cap); they stop with an error if they need more;
* ``denoise_final=True`` spends one evaluation of the budget on the final Tweedie step
  ``x0(x, t_min)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

import solvers
from scoresde.reverse import solver_term
from scoresde.sde import SDE
from solvers.brownian import PerSampleNoise

__all__ = ["sample", "SampleResult", "SamplerModel", "solvers_available", "resolve_solver"]


class SamplerModel(Protocol):
    """What :func:`sample` needs of a model: its SDE, the score and the x0 prediction."""

    sde: SDE

    def score(self, x: Tensor, t: Any) -> Tensor: ...

    def x0(self, x: Tensor, t: Any) -> Tensor: ...


@dataclass(frozen=True)
class SampleResult:
    """Result of :func:`sample`.

    Attributes:
        x: the samples at t_min (or their Tweedie denoising when ``denoise_final``),
            shape/dtype/device of the initial noise.
        nfe: network evaluations actually made.
        ts: the time grid used, float64, from T down to t_min.
        method: registry name of the solver (or its class name for a user instance).
        trajectory: ``(len(ts), *x.shape)`` states at every grid point when asked, else None.
    """

    x: Tensor
    nfe: int
    ts: Tensor
    method: str
    trajectory: Tensor | None = None


def solvers_available() -> list[solvers.SolverInfo]:
    """Every registered method: name, kind ("ode" | "sde"), order (and SDE orders)."""
    return solvers.solvers_available()


def resolve_solver(method: str | solvers.Solver[Any, Any]) -> tuple[solvers.Solver[Any, Any], str]:
    """A solver instance and its display name from a registry name or an instance."""
    if isinstance(method, solvers.Solver):
        names = [n for n, cls in solvers.SOLVERS.items() if cls is type(method)]
        return method, names[0] if names else type(method).__name__
    if isinstance(method, str):
        return solvers.get_solver(method), method
    raise TypeError(
        f"method must be a solver name (see sd.solvers_available()) or a solvers.Solver "
        f"instance, got {type(method).__name__}"
    )


def _initial_noise(
    sde: SDE,
    shape: Sequence[int] | None,
    x_init: Tensor | None,
    generator: torch.Generator | None,
    seeds: Sequence[int] | None,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
) -> tuple[Tensor, list[torch.Generator] | None]:
    """The initial state, and with ``seeds`` the per-sample generators it was drawn from
    (the solver's noise of sample i continues generator i's stream)."""
    if (shape is None) == (x_init is None):
        raise ValueError("give exactly one of shape (draw x_T from the prior) or x_init")
    if x_init is not None:
        if seeds is not None:
            raise ValueError("seeds draws the initial noise; it cannot be used with x_init")
        if not isinstance(x_init, Tensor) or not x_init.is_floating_point() or x_init.ndim < 1:
            raise TypeError("x_init must be a floating-point tensor of shape (B, ...)")
        return x_init, None
    assert shape is not None
    shape = tuple(shape)
    if seeds is None:
        return sde.prior_sample(shape, generator, device=device, dtype=dtype), None
    if generator is not None:
        raise ValueError("give either generator or seeds (one seed per sample), not both")
    if len(seeds) != shape[0]:
        raise ValueError(f"seeds must have one seed per sample: {shape[0]}, got {len(seeds)}")
    # sample i comes from its own generator: independent of the batch it is drawn in
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    rows = [sde.prior_sample((1, *shape[1:]), g, dtype=dtype) for g in gens]
    return torch.cat(rows).to(device if device is not None else rows[0].device), gens


def _grid(
    solver: solvers.Solver[Any, Any],
    sde: SDE,
    grid: str | Tensor | None,
    n_steps: int,
) -> Tensor:
    if isinstance(grid, Tensor):
        ts = solvers.as_grid(grid, name="grid")
        lo, hi = float(ts.min()), float(ts.max())
        if float(ts[0]) < float(ts[-1]):
            raise ValueError("grid must decrease: sampling integrates from T down to t_min")
        sde._time(torch.tensor([lo, hi], dtype=torch.float64), "grid")
        return ts
    name = solver.grid_for(sde, sde.T, sde.t_min) if grid is None else grid
    if not isinstance(name, str):
        raise TypeError(f"grid must be a name, a tensor or None, got {type(grid).__name__}")
    return solvers.make_grid(name, sde, sde.T, sde.t_min, n_steps)


def sample(
    model: SamplerModel,
    method: str | solvers.Solver[Any, Any] = "dpmpp_2m",
    nfe: int | None = None,
    *,
    shape: Sequence[int] | None = None,
    x_init: Tensor | None = None,
    grid: str | os.PathLike[str] | Tensor | None = None,
    generator: torch.Generator | None = None,
    seeds: Sequence[int] | None = None,
    denoise_final: bool = False,
    progress: bool = False,
    callback: Callable[[int, Tensor, Tensor], object] | None = None,
    return_trajectory: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> SampleResult:
    """Sample from ``model`` by solving its probability-flow ODE or reverse SDE.

    Args:
        model: a :class:`scoresde.ScoreModel` (or an oracle) with ``sde``, ``score``, ``x0``.
        method: a registry name (``sd.solvers_available()``) or a configured solver instance,
            e.g. ``solvers.get_solver("unipc", variant="bh2")``.
        nfe: the budget of network evaluations (see the module docstring); required unless
            ``grid`` is a tensor (then the grid fixes the steps) or the method is adaptive.
        shape: shape (B, ...) of the samples, drawn from the prior at T; or
        x_init: the initial state at T (its device and dtype are kept).
        grid: a grid name (``"uniform"``, ``"logsnr"``, ``"karras"``, ``"quadratic"``), a
            decreasing float64 tensor from T to t_min, the path of a grid file saved by
            ``sd.TunedGrid.save`` (``.json`` / ``.safetensors``, see ``sd.tune_grid``), or
            None for the method's default grid (``solver.grid_for(sde, T, t_min)``: one grid
            for VP-type SDEs, one for VE/EDM; docs/solvers.md). With a tensor and ``nfe``, a
            method whose budget configuration takes exactly the grid's steps (DPM-Solver-2/3
            lower their last orders to fit) runs in that configuration.
        generator: randomness for the initial noise (and the solver's noise, if stochastic).
        seeds: one seed per sample instead of ``generator``: sample i is then the same
            whatever the batch it is drawn in. For stochastic methods the solver's noise of
            sample i is drawn from the same per-sample stream, after its initial noise
            (``solvers.brownian.PerSampleNoise``); the batch-independence holds for the
            fixed-grid methods and the per-sample adaptive ``adaptive_sde``, not for
            ``sde_srk_adaptive`` (torchsde adapts one step size for the whole batch) nor for
            ``pc`` with ``norm="batch"``.
        denoise_final: replace the result by the Tweedie estimate ``x0(x, t_min)`` (one more
            evaluation, taken from the budget).
        progress: show a progress bar.
        callback: ``callback(i, t, x)`` after every step.
        return_trajectory: keep the state at every grid point.
        device: device of the initial noise when drawn from ``shape`` (default: the
            generator's device).
        dtype: dtype of the initial noise when drawn from ``shape`` (default: torch's default
            dtype).

    Returns:
        :class:`SampleResult` with ``x``, ``nfe``, ``ts``, ``method`` and ``trajectory``.
    """
    sde = model.sde
    solver, name = resolve_solver(method)
    if isinstance(grid, os.PathLike) or (
        isinstance(grid, str) and grid.endswith((".json", ".safetensors"))
    ):
        from scoresde.selection import load_grid

        grid = load_grid(os.fspath(grid))
    x, gens = _initial_noise(sde, shape, x_init, generator, seeds, device, dtype)
    # seeds: each sample's solver noise continues its own stream (stochastic methods)
    noise = PerSampleNoise(gens) if gens is not None and type(solver).stochastic else None
    final_cost = 1 if denoise_final else 0
    if nfe is not None and (isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1):
        raise ValueError(f"nfe must be an int >= 1 (the evaluation budget), got nfe={nfe!r}")
    if type(solver).adaptive:
        # adaptive methods choose their own steps: nfe is a cap (None: no cap) and the grid
        # holds the output times (a grid name: just [T, t_min])
        if nfe is not None:
            if nfe - final_cost < 1:
                raise ValueError(f"nfe={nfe} leaves nothing for the solver after denoise_final")
            solver, _ = solver.for_budget(nfe - final_cost)
        ts = _grid(solver, sde, grid, 1)
    elif isinstance(grid, Tensor):
        ts = _grid(solver, sde, grid, 0)
        n_steps = ts.numel() - 1
        if isinstance(method, str) and nfe is not None and nfe - final_cost >= n_steps:
            try:
                fitted, fitted_steps = solver.for_budget(nfe - final_cost)
            except ValueError:  # the budget is too small; the cost check below says so
                fitted_steps = -1
            if fitted_steps == n_steps:  # e.g. a grid tuned for this method and budget
                solver = fitted
        cost = solver.nfe_for_steps(n_steps) + final_cost
        if nfe is not None and cost > nfe:
            raise ValueError(
                f"the grid has {n_steps} steps, which cost {name} {cost} evaluations, over "
                f"the budget nfe={nfe}"
            )
    else:
        if nfe is None:
            raise ValueError(f"nfe (the evaluation budget) is required for method {name!r}")
        if nfe - final_cost < 1:
            raise ValueError(f"nfe={nfe} leaves nothing for the solver after denoise_final")
        solver, n_steps = solver.for_budget(nfe - final_cost)
        ts = _grid(solver, sde, grid, n_steps)
    if x_init is None and float(ts[0]) != float(sde.T):
        raise ValueError(
            f"the grid starts at t={float(ts[0])!r}, but shape= draws x from the prior at "
            f"T={sde.T!r}: start the grid at T, or pass the state at t={float(ts[0])!r} as "
            f"x_init"
        )
    term = solver_term(model, type(solver).term_type)
    with torch.no_grad():
        sol = solvers.integrate(
            solver,
            term,
            x,
            ts,
            generator=generator,
            noise=noise,
            callback=callback,
            save_path=return_trajectory,
            progress=progress,
        )
        out, used = sol.x, sol.nfe
        if denoise_final:
            out, used = model.x0(out, sol.ts[-1]), used + 1
    return SampleResult(x=out, nfe=used, ts=sol.ts, method=name, trajectory=sol.path)
