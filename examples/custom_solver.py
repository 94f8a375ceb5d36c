"""Add a solver in one file: Ralston's second-order Runge-Kutta method, registered by name.

A solver is a small object with declared orders and a pure ``step`` (``docs/extending.md``);
``solvers.integrate`` owns the loop, the NFE count and the time grid, ``@solvers.register``
makes the name usable everywhere (``sd.sample(model, "ralston", nfe=...)``). This script
defines the method, measures its convergence order against the exact flow map of a Gaussian
(the slope of log error against log step must be about 2), and samples a Gaussian mixture
with it.

    python examples/custom_solver.py           # the order over 32..512 steps
    python examples/custom_solver.py --smoke   # fewer step counts (CI)
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import Tensor

import scoresde as sd
import solvers


# --8<-- [start:solver]
@solvers.register("ralston")
class Ralston(solvers.Solver[solvers.ODETermLike, None]):
    """Ralston's method (Ralston 1962, "Runge-Kutta methods with minimum error bounds"):
    the explicit two-stage Runge-Kutta method of order 2 with the smallest error bound,

        k1 = v(x, t0),  k2 = v(x + 2/3 h k1, t0 + 2/3 h),  x1 = x + h (k1 / 4 + 3 k2 / 4).

    ODE solver, order 2, two evaluations per step, stateless.
    """

    order = 2
    evals_per_step = 2
    term_type = solvers.ODETermLike

    def step(
        self,
        term: solvers.ODETermLike,
        t0: Tensor,
        t1: Tensor,
        x: Tensor,
        state: None,
        noise: Tensor | None,
    ) -> tuple[Tensor, None]:
        h = t1 - t0  # float64, negative when sampling (T -> t_min); never negated here
        k1 = term.velocity(x, t0)
        k2 = term.velocity(x + (2.0 / 3.0 * h).to(x.dtype) * k1, t0 + 2.0 / 3.0 * h)
        return x + h.to(x.dtype) * (0.25 * k1 + 0.75 * k2), None


# --8<-- [end:solver]


def measured_order(steps: list[int]) -> float:
    """Slope of log(error) against log(step size) for the PF-ODE of a Gaussian, from T down to
    t_min, against its closed-form flow map (VP SDE, D = 2, float64)."""
    sde = sd.VPSDE()
    gauss = sd.GaussianMixture(torch.ones(1), torch.tensor([[1.0, -0.5]]), torch.tensor([0.3]))
    oracle = gauss.score_model(sde)
    x_T = sde.prior_sample((64, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = oracle.flow_map(x_T, sde.T, sde.t_min)
    errors = []
    for n in steps:
        grid = solvers.uniform(sde.T, sde.t_min, n)
        x = sd.sample(oracle, "ralston", x_init=x_T, grid=grid).x
        errors.append(float((x - exact).abs().max()))
    for n, e in zip(steps, errors):
        print(f"  {n:4d} steps: max error {e:.3e}")
    # least-squares slope of log(error) against log(h), h = 1 / steps
    log_h = torch.tensor([-math.log(n) for n in steps], dtype=torch.float64)
    log_e = torch.tensor([math.log(e) for e in errors], dtype=torch.float64)
    log_h, log_e = log_h - log_h.mean(), log_e - log_e.mean()
    return float((log_h * log_e).sum() / (log_h * log_h).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="fewer step counts (CI)")
    args = parser.parse_args()

    info = next(s for s in sd.solvers_available() if s.name == "ralston")
    print(f"registered: {info}")
    # uniform grids in t; the order shows once the steps are small (pre-asymptotic below ~32)
    steps = [64, 128, 256] if args.smoke else [32, 64, 128, 256, 512]
    order = measured_order(steps)
    print(f"measured order {order:.2f} (declared {Ralston.order})")
    assert abs(order - Ralston.order) < 0.2, order

    # the new name works wherever a solver name does: here 20 evaluations on a mixture
    gmm = sd.GaussianMixture(
        torch.tensor([0.5, 0.5]), torch.tensor([[-2.0, 0.0], [2.0, 0.0]]), torch.tensor([0.1, 0.1])
    )
    g = torch.Generator().manual_seed(0)
    res = sd.sample(gmm.score_model(sd.VPSDE()), "ralston", nfe=20, shape=(2000, 2), generator=g)
    right = float((res.x[:, 0] > 0).double().mean())
    print(f"sd.sample(..., 'ralston', nfe=20): {res.nfe} evaluations, {right:.1%} right of 0")
    assert res.nfe == 20 and abs(right - 0.5) < 0.05


if __name__ == "__main__":
    main()
