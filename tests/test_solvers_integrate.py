"""The integration loop: validation, shapes/dtypes/devices, callbacks, paths, NFE, noise,
gradients and the non-finite check."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

import solvers
from solvers import (
    Euler,
    NonFiniteError,
    ODETerm,
    SDETerm,
    SDETermLike,
    Solution,
    Solver,
    integrate,
    uniform,
)

F64 = torch.float64


@dataclass(frozen=True)
class EulerMaruyama(Solver[SDETermLike, None]):
    """Test-only Euler-Maruyama (Maruyama 1955): x1 = x0 + f dt + g sqrt(|dt|) z.

    SDE solver (Ito); strong order 0.5, weak order 1; 1 drift evaluation per step.
    """

    order = 1
    strong_order = 0.5
    weak_order = 1.0
    stochastic = True
    term_type = SDETermLike
    evals_per_step = 1

    def step(
        self,
        term: SDETermLike,
        t0: Tensor,
        t1: Tensor,
        x: Tensor,
        state: None,
        noise: Tensor | None,
    ) -> tuple[Tensor, None]:
        assert noise is not None
        dt = t1 - t0
        dw = dt.abs().sqrt() * noise
        return x + term.drift(x, t0) * dt + term.diffusion(x, t0) * dw, None


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _euler_by_hand(v, x: Tensor, ts: Tensor) -> list[Tensor]:
    xs = [x]
    for i in range(len(ts) - 1):
        x = x + (ts[i + 1] - ts[i]) * v(x, ts[i])
        xs.append(x)
    return xs


DECAY = ODETerm(lambda x, t: -x + torch.sin(3 * t))

# --------------------------------------------------------------------------- shapes, dtypes


@pytest.mark.parametrize("shape", [(6, 3), (2, 3, 4, 5)], ids=["2d", "4d"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("backwards", [False, True])
def test_shapes_dtypes_and_path(
    shape: tuple[int, ...], dtype: torch.dtype, backwards: bool, device: str
) -> None:
    x0 = torch.randn(shape, generator=_gen(0), dtype=dtype).to(device)
    ts = uniform(1.0, 0.1, 9) if backwards else uniform(0.1, 1.0, 9)
    sol = integrate(Euler(), DECAY, x0, ts, save_path=True)
    assert isinstance(sol, Solution)
    assert sol.x.shape == x0.shape and sol.x.dtype == dtype and sol.x.device == x0.device
    assert sol.ts.dtype == F64 and sol.ts.device == x0.device
    torch.testing.assert_close(sol.ts.cpu(), ts)
    assert sol.nfe == 9
    assert sol.path is not None and sol.path.shape == (10, *shape)
    assert sol.path.dtype == dtype
    expected = _euler_by_hand(DECAY.velocity, x0, ts.to(device))
    torch.testing.assert_close(sol.path, torch.stack(expected))
    assert torch.equal(sol.path[0], x0) and torch.equal(sol.path[-1], sol.x)


def test_no_path_by_default() -> None:
    sol = integrate(Euler(), DECAY, torch.zeros(2, 2), uniform(0.0, 1.0, 3))
    assert sol.path is None


def test_term_sees_grid_times_as_0d_float64() -> None:
    seen: list[Tensor] = []

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        seen.append(t)
        return -x

    ts = solvers.quadratic(2.0, 0.5, 6)
    integrate(Euler(), ODETerm(velocity), torch.ones(3, 2, dtype=torch.float32), ts)
    assert len(seen) == 6
    for i, t in enumerate(seen):
        assert t.shape == () and t.dtype == F64
        assert t.item() == ts[i].item()


def test_state_dtype_is_preserved_when_term_promotes() -> None:
    """A term returning float64 for a float32 state does not change the state dtype."""
    term = ODETerm(lambda x, t: (-x).to(F64) * t)
    sol = integrate(Euler(), term, torch.ones(4, 2), uniform(0.0, 1.0, 5), save_path=True)
    assert sol.x.dtype == torch.float32
    assert sol.path is not None and sol.path.dtype == torch.float32


def test_callback_once_per_step_with_right_t() -> None:
    calls: list[tuple[int, float, Tensor]] = []
    ts = solvers.as_grid([3.0, 2.5, 1.0, 0.7, 0.2])
    sol = integrate(
        Euler(),
        DECAY,
        torch.ones(2, 3, dtype=F64),
        ts,
        callback=lambda i, t, x: calls.append((i, t.item(), x.clone())),
        save_path=True,
    )
    assert [c[0] for c in calls] == [0, 1, 2, 3]
    assert [c[1] for c in calls] == ts[1:].tolist()
    assert sol.path is not None
    for i, _, x in calls:
        assert torch.equal(x, sol.path[i + 1])


def test_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    sol = integrate(Euler(), DECAY, torch.ones(2, 2), uniform(0.0, 1.0, 7), progress=True)
    assert sol.nfe == 7
    err = capsys.readouterr().err
    assert "Euler" in err and "7/7" in err


# --------------------------------------------------------------------------- NFE


@pytest.mark.parametrize("n", [1, 2, 17])
def test_euler_nfe_is_number_of_steps(n: int) -> None:
    sol = integrate(Euler(), DECAY, torch.ones(3, 1), uniform(0.0, 1.0, n))
    assert sol.nfe == n == n * Euler.evals_per_step


def test_nfe_counts_drift_not_diffusion() -> None:
    calls = {"drift": 0, "diffusion": 0}

    def drift(x: Tensor, t: Tensor) -> Tensor:
        calls["drift"] += 1
        return -x

    def diffusion(x: Tensor, t: Tensor) -> Tensor:
        calls["diffusion"] += 1
        return torch.ones(())

    sol = integrate(
        EulerMaruyama(), SDETerm(drift, diffusion), torch.ones(3, 2), uniform(1.0, 0.0, 11)
    )
    assert calls == {"drift": 11, "diffusion": 11}
    assert sol.nfe == 11


# --------------------------------------------------------------------------- noise


BROWNIAN = SDETerm(lambda x, t: torch.zeros_like(x), lambda x, t: torch.ones(()))


@pytest.mark.parametrize("backwards", [False, True])
def test_noise_convention(backwards: bool) -> None:
    """Noise = one torch.randn(x.shape, generator) per step in step order; dW = sqrt|dt| z."""
    ts = solvers.as_grid([0.0, 0.1, 0.5, 0.6, 1.4])
    if backwards:
        ts = ts.flip(0)
    x0 = torch.zeros(5, 2, 3, dtype=F64)
    sol = integrate(EulerMaruyama(), BROWNIAN, x0, ts, generator=_gen(7), save_path=True)
    g = _gen(7)
    expected = [x0]
    for i in range(len(ts) - 1):
        z = torch.randn(x0.shape, generator=g, dtype=F64)
        expected.append(expected[-1] + (ts[i + 1] - ts[i]).abs().sqrt() * z)
    assert sol.path is not None
    torch.testing.assert_close(sol.path, torch.stack(expected), rtol=0, atol=1e-14)


def test_same_seed_same_result_different_seed_different() -> None:
    term = SDETerm(lambda x, t: -x, lambda x, t: 0.5 * torch.ones(()))
    x0 = torch.ones(8, 4)
    ts = uniform(1.0, 0.0, 20)
    a = integrate(EulerMaruyama(), term, x0, ts, generator=_gen(1)).x
    b = integrate(EulerMaruyama(), term, x0, ts, generator=_gen(1)).x
    c = integrate(EulerMaruyama(), term, x0, ts, generator=_gen(2)).x
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_noise_has_brownian_statistics() -> None:
    """Pure Brownian motion over [0, 1] (either direction): x1 - x0 ~ N(0, I)."""
    x0 = torch.zeros(20_000, 1, dtype=F64)
    for ts in (uniform(0.0, 1.0, 8), uniform(1.0, 0.0, 8)):
        x1 = integrate(EulerMaruyama(), BROWNIAN, x0, ts, generator=_gen(3)).x
        n = x1.numel()
        # 5-sigma bands: sd(mean) = 1/sqrt(n), sd(var) ~ sqrt(2/n)
        assert abs(x1.mean().item()) < 5 / math.sqrt(n)
        assert abs(x1.var().item() - 1.0) < 5 * math.sqrt(2 / n)


def test_deterministic_solver_gets_no_noise_and_leaves_generator_alone() -> None:
    g = _gen(5)
    before = g.get_state()
    integrate(Euler(), DECAY, torch.ones(2, 2), uniform(0.0, 1.0, 4), generator=g)
    assert torch.equal(g.get_state(), before)


# --------------------------------------------------------------------------- gradients


def test_respects_no_grad() -> None:
    x0 = torch.ones(3, 2, requires_grad=True)
    with torch.no_grad():
        sol = integrate(Euler(), DECAY, x0, uniform(0.0, 1.0, 4))
    assert not sol.x.requires_grad


def test_backpropagates_with_grad_enabled() -> None:
    """Euler on dx/dt = lam x: x_n = (1 + lam h)^n x_0, so dx_n/dx_0 = (1 + lam h)^n."""
    lam, n = -0.8, 10
    x0 = torch.ones(3, 2, dtype=F64, requires_grad=True)
    with torch.enable_grad():
        sol = integrate(Euler(), ODETerm(lambda x, t: lam * x), x0, uniform(0.0, 1.0, n))
        sol.x.sum().backward()
    assert x0.grad is not None
    torch.testing.assert_close(x0.grad, torch.full_like(x0, (1 + lam / n) ** n))


# --------------------------------------------------------------------------- validation


def test_wrong_term_type() -> None:
    sde = SDETerm(lambda x, t: x, lambda x, t: torch.ones(()))
    with pytest.raises(TypeError, match=r"Euler.*ODETermLike.*SDETerm"):
        integrate(Euler(), sde, torch.ones(2, 2), uniform(0.0, 1.0, 2))
    with pytest.raises(TypeError, match=r"EulerMaruyama.*SDETermLike.*ODETerm"):
        integrate(EulerMaruyama(), DECAY, torch.ones(2, 2), uniform(0.0, 1.0, 2))


def test_plain_function_term_gets_a_hint() -> None:
    with pytest.raises(TypeError, match=r"solvers\.ODETerm\(fn\)"):
        integrate(Euler(), lambda x, t: -x, torch.ones(2, 2), uniform(0.0, 1.0, 2))


def test_solver_class_instead_of_instance() -> None:
    with pytest.raises(TypeError, match=r"Euler\(\)"):
        integrate(Euler, DECAY, torch.ones(2, 2), uniform(0.0, 1.0, 2))  # type: ignore[arg-type]


BAD_GRIDS = {
    "non-monotone": ([0.0, 0.5, 0.4, 1.0], "monotone"),
    "repeated": ([1.0, 0.5, 0.5, 0.0], "repeated"),
    "one point": ([0.5], "at least 2"),
    "empty": ([], "at least 2"),
    "nan": ([0.0, math.nan, 1.0], "finite"),
    "inf": ([0.0, 0.5, math.inf], "finite"),
    "2-D": ([[0.0, 0.5], [0.6, 1.0]], "1-D"),
}


@pytest.mark.parametrize("case", BAD_GRIDS, ids=list(BAD_GRIDS))
def test_bad_grids(case: str) -> None:
    values, message = BAD_GRIDS[case]
    with pytest.raises(ValueError, match=message):
        integrate(Euler(), DECAY, torch.ones(2, 2), torch.tensor(values, dtype=F64))


def test_grid_must_be_float64_tensor() -> None:
    with pytest.raises(ValueError, match="float64"):
        integrate(Euler(), DECAY, torch.ones(2, 2), torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="as_grid"):
        integrate(Euler(), DECAY, torch.ones(2, 2), [0.0, 1.0])  # type: ignore[arg-type]


def test_bad_states() -> None:
    ts = uniform(0.0, 1.0, 2)
    with pytest.raises(TypeError, match="floating"):
        integrate(Euler(), DECAY, torch.ones(2, 2, dtype=torch.int64), ts)
    with pytest.raises(ValueError, match="0-d"):
        integrate(Euler(), DECAY, torch.tensor(1.0), ts)
    with pytest.raises(ValueError, match="x0 must be finite"):
        integrate(Euler(), DECAY, torch.tensor([[1.0, math.nan]]), ts)


def test_bad_generator_and_callback() -> None:
    ts = uniform(0.0, 1.0, 2)
    with pytest.raises(TypeError, match="generator"):
        integrate(Euler(), DECAY, torch.ones(2, 2), ts, generator=0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callback"):
        integrate(Euler(), DECAY, torch.ones(2, 2), ts, callback=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("backwards", [False, True])
def test_non_finite_state_names_the_step(bad: float, backwards: bool) -> None:
    """The term returns NaN/inf once t0 is past 0.5: the error names that step."""

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        poisoned = t >= 0.5 if not backwards else t <= 0.5
        return torch.where(poisoned, torch.full_like(x, bad), -x)

    ts = uniform(0.0, 1.0, 4) if not backwards else uniform(1.0, 0.0, 4)
    with pytest.raises(NonFiniteError, match=r"Euler.*step 2 of 4") as info:
        integrate(Euler(), ODETerm(velocity), torch.ones(2, 3), ts)
    assert isinstance(info.value, FloatingPointError)
    assert "0.5" in str(info.value)


def test_non_finite_after_recovery_still_reports_first_step() -> None:
    """Only step 1 is poisoned and a later step overwrites the state: step 1 is reported."""

    @dataclass(frozen=True)
    class Reset(Solver[solvers.ODETermLike, None]):
        """Test-only: x1 = v(x0, t0) (ignores x0)."""

        order = 1
        term_type = solvers.ODETermLike
        evals_per_step = 1

        def step(self, term, t0, t1, x, state, noise):
            return term.velocity(x, t0), None

    term = ODETerm(lambda x, t: torch.where(t == 1.0, torch.full_like(x, math.nan), x * 0))
    with pytest.raises(NonFiniteError, match="step 1 of 3"):
        integrate(Reset(), term, torch.ones(2, 2), uniform(0.0, 3.0, 3))


def test_solver_changing_the_shape_is_caught() -> None:
    @dataclass(frozen=True)
    class Broken(Solver[solvers.ODETermLike, None]):
        """Test-only: reduces the state (a broadcasting bug)."""

        order = 1
        term_type = solvers.ODETermLike
        evals_per_step = 1

        def step(self, term, t0, t1, x, state, noise):
            return x.sum(-1), None

    with pytest.raises(RuntimeError, match=r"Broken.*shape \(2,\).*\(2, 3\)"):
        integrate(Broken(), DECAY, torch.ones(2, 3), uniform(0.0, 1.0, 2))


def test_multistep_state_is_threaded() -> None:
    """init's state reaches the first step, and each step's state reaches the next."""

    @dataclass(frozen=True)
    class Counting(Solver[solvers.ODETermLike, int]):
        """Test-only: state counts steps; x1 = x0 + state."""

        order = 1
        term_type = solvers.ODETermLike
        evals_per_step = 0

        def init(self, term, ts, x):
            return 10

        def step(self, term, t0, t1, x, state, noise):
            return x + state, state + 1

    sol = integrate(Counting(), DECAY, torch.zeros(1, 1), uniform(0.0, 1.0, 3))
    assert sol.x.item() == 10 + 11 + 12
    assert sol.nfe == 0
