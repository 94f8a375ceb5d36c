"""The sampling loop on an accelerator: no host synchronisation per step, CUDA results equal
to the CPU ones; and the pieces of the hot loop that make that possible, checked on the CPU.

* CPU (always run): every fixed-grid solver under :func:`solvers.integrate` makes the same
  number of host synchronisations (``aten::_local_scalar_dense``: ``.item()``, ``bool(t)``,
  ...) for 10 and for 20 steps, i.e. none per step; the one-probe finiteness tracking of
  ``integrate`` reports the first non-finite step for every float dtype and never a finite
  state whose sum overflows; the per-step coefficient rows of the single-step exponential
  integrators are their tables' columns in the state's dtype.
* CUDA (marked ``gpu``, skipped without CUDA by ``conftest.py``): ``sd.sample`` with several
  methods runs with ``torch.cuda.set_sync_debug_mode("error")`` from the second step to the
  last, and its samples match the CPU's to float32 round-off.

Speed itself is measured in ``bench/speed.py``, never asserted here.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

import scoresde as sd
import solvers
from scoresde.models import MLP
from solvers.exponential import _PP2SRow, _SinglestepRow

F64 = torch.float64


class _SyncCounter(TorchDispatchMode):
    """Counts ``aten::_local_scalar_dense`` (every Tensor -> Python number conversion)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


class _CosineSchedule:
    """``alpha = cos(pi t / 2)``, ``sigma = sin(pi t / 2)`` in plain torch (no range checks)."""

    def alpha(self, t: Tensor) -> Tensor:
        return torch.cos(0.5 * math.pi * t)

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sin(0.5 * math.pi * t)

    def log_snr(self, t: Tensor) -> Tensor:
        return -2.0 * torch.log(torch.tan(0.5 * math.pi * t))

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        return (2.0 / math.pi) * torch.atan(torch.exp(-0.5 * lam))


_TERMS: dict[type, object] = {
    solvers.DenoiserTermLike: solvers.DenoiserTerm(lambda x, t: 0.5 * x, _CosineSchedule()),
    solvers.ODETermLike: solvers.ODETerm(lambda x, t: -0.5 * x),
    solvers.SDETermLike: solvers.SDETerm(
        lambda x, t: -0.5 * x, lambda x, t: torch.ones((), dtype=x.dtype, device=x.device)
    ),
}

FIXED_GRID = [
    name for name, cls in solvers.SOLVERS.items() if not cls.adaptive and not hasattr(cls, "solve")
]


def _syncs(fn: Callable[[], object]) -> int:
    counter = _SyncCounter()
    with counter:
        fn()
    return counter.count


@pytest.mark.parametrize("name", FIXED_GRID)
def test_integrate_makes_no_host_sync_per_step(name: str) -> None:
    """Doubling the steps leaves the count of host synchronisations unchanged: the loop and
    the solver synchronise only before and after the loop, never per step."""
    cls = solvers.SOLVERS[name]
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    counts = []
    for n in (10, 20):
        ts = torch.linspace(0.95, 0.05, n + 1, dtype=F64)
        g = torch.Generator().manual_seed(1)
        solve = functools.partial(
            solvers.integrate, cls(), _TERMS[cls.term_type], x, ts, generator=g
        )
        counts.append(_syncs(solve))
    assert counts[0] == counts[1], f"{name}: {counts[1] - counts[0]} syncs in 10 more steps"
    assert counts[0] <= 4, f"{name}: {counts[0]} host synchronisations around the loop"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_step_is_named_for_every_dtype(dtype: torch.dtype, bad: float) -> None:
    """The per-step probe of ``integrate`` finds the first non-finite state in any float
    dtype (here: step 2 of 5, one entry poisoned, the rest finite)."""

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        out = -x.clone()
        out[1, 0] = torch.where(t >= 0.4, torch.tensor(bad, dtype=x.dtype), out[1, 0])
        return out

    ts = torch.linspace(0.0, 1.0, 6, dtype=F64)
    with pytest.raises(solvers.NonFiniteError, match="step 2 of 5"):
        solvers.integrate(
            solvers.Euler(), solvers.ODETerm(velocity), torch.ones(3, 2, dtype=dtype), ts
        )


@pytest.mark.parametrize(
    ("dtype", "value"), [(torch.float64, 1e308), (torch.float32, 3e38), (torch.float16, 6e4)]
)
def test_finite_state_with_an_overflowing_sum_is_not_reported(
    dtype: torch.dtype, value: float
) -> None:
    """Entries near the dtype's largest finite value, whose plain sum overflows: finite, so
    no error (the probe sums float32/float16 in float64 and multiplies float64 by 0 first)."""
    x0 = torch.full((4, 8), value, dtype=dtype)
    assert not bool(torch.isfinite(x0.sum()))  # the naive probe would have raised
    ts = torch.linspace(0.0, 1.0, 4, dtype=F64)
    sol = solvers.integrate(
        solvers.Euler(), solvers.ODETerm(lambda x, t: torch.zeros_like(x)), x0, ts
    )
    assert torch.equal(sol.x, x0)


@pytest.mark.parametrize(
    ("solver", "row_type", "times"),
    [
        (solvers.DPMSolver2(), _SinglestepRow, ("t1", "t2")),
        (solvers.DPMSolver3(), _SinglestepRow, ("t1", "t2")),
        (solvers.DPMSolverPP2S(), _PP2SRow, ("t1",)),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_step_rows_are_the_table_columns(
    solver: solvers.Solver[Any, Any], row_type: Any, times: tuple[str, ...], dtype: torch.dtype
) -> None:
    """Step ``i``'s precomputed row holds the table's entries ``i``: times in float64, the
    coefficients cast to the state's dtype (what each step used to cast itself)."""
    term = solvers.DenoiserTerm(lambda x, t: x, _CosineSchedule())
    solver_n, n_steps = solver.for_budget(14)  # DPM-Solver-2/3: the fast order schedule
    ts = torch.linspace(0.9, 0.1, n_steps + 1, dtype=F64)
    x = torch.zeros(2, 3, dtype=dtype)
    table = solver_n.init(term, ts, x).table
    assert len(table.rows) == ts.numel() - 1
    for i, row in enumerate(table.rows):
        assert isinstance(row, row_type)
        for name in row_type._fields:
            value = getattr(row, name)
            expected = getattr(table, name)[i]
            want = F64 if name in times else dtype
            assert value.dtype == want and value.shape == ()
            assert torch.equal(value, expected.to(want)), f"{name}[{i}]"


# --------------------------------------------------------------------------- CUDA

GPU_METHODS = [
    "ddim",
    "dpmpp_2m",
    "unipc",
    "dpm_solver_3",
    "heun",
    "ipndm_v",
    "euler_maruyama",
    "dpmpp_2m_sde",
]


def _model(device: str) -> sd.ScoreModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = MLP(2, width=64, depth=2).to(device).eval()
    return sd.ScoreModel(net, sd.VPSDE(), prediction="eps")


@pytest.mark.gpu
@pytest.mark.parametrize("method", GPU_METHODS)
def test_cuda_sampling_loop_makes_no_host_sync(method: str) -> None:
    """From the end of step 0 to the end of the last step (the model's evaluations, the
    solver's steps, the loop's bookkeeping), no host synchronisation: sync debug mode
    "error" turns any into an exception. (Before the loop, grid and tables are built; after
    it, the one finiteness check.)"""
    model = _model("cuda")
    x = torch.randn(64, 2, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    nfe = 12
    n_steps = len(sd.sample(model, method, nfe, x_init=x, generator=torch.Generator("cuda")).ts) - 1
    modes: list[str] = []

    def guard(i: int, t: Tensor, x: Tensor) -> None:
        if i == 0:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            modes.append("error")
        if i == n_steps - 1:
            torch.cuda.set_sync_debug_mode("default")
            modes.append("default")

    try:
        g = torch.Generator("cuda").manual_seed(1)
        sd.sample(model, method, nfe, x_init=x, generator=g, callback=guard)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert modes == ["error", "default"]


@pytest.mark.gpu
@pytest.mark.parametrize("method", GPU_METHODS)
def test_cuda_samples_match_cpu(method: str) -> None:
    """The same model, initial noise and (CPU-generated) solver noise on CUDA and on the CPU:
    equal to float32 round-off."""
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    out = {}
    for device in ("cpu", "cuda"):
        g = torch.Generator().manual_seed(1)  # CPU generator: the same noise on both devices
        res = sd.sample(_model(device), method, 10, x_init=x.to(device), generator=g)
        assert res.x.device.type == device and res.x.dtype == torch.float32
        out[device] = res.x.cpu()
    torch.testing.assert_close(out["cuda"], out["cpu"], rtol=1e-4, atol=1e-4)


def test_discrete_chain_schedule_reads_no_tensor_on_the_host() -> None:
    """``VPSDE.from_discrete`` looks up its knots with ``Tensor.take``: a 0-d time makes no more
    Tensor -> Python conversions than under ``VPSDE`` (a 0-d index tensor used as ``table[k]``
    is read on the host: one synchronisation per lookup on CUDA)."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    chain, vp = sd.VPSDE.from_discrete(betas), sd.VPSDE()
    t = torch.tensor(0.37, dtype=torch.float64)
    counts = []
    for sde in (chain, vp):
        with _SyncCounter() as c:
            for _ in range(3):
                sde._log_alpha(t), sde._f(t), sde._t_from_log_alpha(sde._log_alpha(t))
        counts.append(c.count)
    assert counts[0] <= counts[1], counts
