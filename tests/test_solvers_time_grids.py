"""Time grids: endpoints, direction, monotonicity, dtype (hypothesis), and each grid's
defining property (uniform in t / in log-SNR, quadratic, Karras eq. 5)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from solver_helpers import EDMSchedule
from torch import Tensor

import scoresde as sd
import solvers
from solvers import (
    GRIDS,
    Schedule,
    as_grid,
    karras,
    log_snr_uniform,
    make_grid,
    quadratic,
    schedule_kind,
    uniform,
)

F64 = torch.float64


class CosineVPSchedule:
    """VP with alpha = sqrt(sigmoid(lam)), sigma = sqrt(sigmoid(-lam)) and
    lam(t) = -2 log tan(pi t / 2) (the cosine schedule: alpha = cos(pi t / 2)), t in (0, 1)."""

    def log_snr(self, t: Tensor) -> Tensor:
        return -2.0 * torch.log(torch.tan(0.5 * math.pi * t))

    def alpha(self, t: Tensor) -> Tensor:
        return torch.sigmoid(self.log_snr(t)).sqrt()

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sigmoid(-self.log_snr(t)).sqrt()

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        return (2.0 / math.pi) * torch.atan(torch.exp(-lam / 2.0))


EDM, VP = EDMSchedule(), CosineVPSchedule()
# schedule and the range of t where its log-SNR is finite
SCHEDULES: dict[str, tuple[Schedule, float, float]] = {
    "edm": (EDM, 0.002, 80.0),
    "vp": (VP, 1e-3, 0.999),
}


def _t(v: float) -> Tensor:
    return torch.tensor(v, dtype=F64)


def assert_valid_grid(ts: Tensor, t_start: float, t_end: float, n: int) -> None:
    assert isinstance(ts, Tensor) and ts.dtype == F64 and ts.device.type == "cpu"
    assert ts.shape == (n + 1,)
    assert ts[0].item() == t_start and ts[-1].item() == t_end  # exact endpoints
    assert bool(torch.isfinite(ts).all())
    direction = 1.0 if t_end > t_start else -1.0
    assert bool((direction * ts.diff() > 0).all())


@st.composite
def endpoints(draw: st.DrawFn, lo: float, hi: float) -> tuple[float, float, int]:
    a = draw(st.floats(lo, hi, allow_nan=False, allow_infinity=False))
    b = draw(st.floats(lo, hi, allow_nan=False, allow_infinity=False))
    assume(abs(a - b) >= 1e-2 * (hi - lo))
    return a, b, draw(st.integers(1, 300))


# --------------------------------------------------------------------------- properties


@given(endpoints(-5.0, 5.0))
def test_uniform_and_quadratic_properties(args: tuple[float, float, int]) -> None:
    t_start, t_end, n = args
    for ts in (uniform(t_start, t_end, n), quadratic(t_start, t_end, n)):
        assert_valid_grid(ts, t_start, t_end, n)


@pytest.mark.parametrize("name", ["edm", "vp"])
@given(data=st.data())
def test_schedule_grids_properties(name: str, data: st.DataObject) -> None:
    schedule, lo, hi = SCHEDULES[name]
    t_start, t_end, n = data.draw(endpoints(lo, hi))
    rho = data.draw(st.floats(0.5, 10.0))
    for ts in (
        log_snr_uniform(schedule, t_start, t_end, n),
        karras(schedule, t_start, t_end, n, rho=rho),
    ):
        assert_valid_grid(ts, t_start, t_end, n)


@given(endpoints(0.002, 80.0), st.sampled_from(sorted(GRIDS)))
def test_make_grid_matches_the_builders(args: tuple[float, float, int], name: str) -> None:
    t_start, t_end, n = args
    direct = {
        "uniform": lambda: uniform(t_start, t_end, n),
        "quadratic": lambda: quadratic(t_start, t_end, n),
        "log_snr_uniform": lambda: log_snr_uniform(EDM, t_start, t_end, n),
        "logsnr": lambda: log_snr_uniform(EDM, t_start, t_end, n),
        "karras": lambda: karras(EDM, t_start, t_end, n),
    }
    ts = make_grid(name, EDM, t_start, t_end, n)
    assert_valid_grid(ts, t_start, t_end, n)
    assert torch.equal(ts, direct[name]())


@given(st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=40, unique=True))
def test_as_grid_accepts_monotone_and_rejects_swaps(values: list[float]) -> None:
    values = sorted(values)
    assume(all(b > a for a, b in zip(values, values[1:])))
    for seq in (values, values[::-1]):
        ts = as_grid(seq)
        assert ts.dtype == F64 and ts.tolist() == seq
        assert torch.equal(as_grid(torch.tensor(seq, dtype=F64)), ts)
    if len(values) > 2:  # swapping the first two points makes a 3+ point grid non-monotone
        swapped = values.copy()
        swapped[0], swapped[1] = swapped[1], swapped[0]
        with pytest.raises(ValueError, match="monotone"):
            as_grid(swapped)


# --------------------------------------------------------------------------- definitions


@pytest.mark.parametrize("t_start,t_end", [(0.0, 1.0), (1.0, 0.0), (3.0, -2.0)])
def test_uniform_is_uniform(t_start: float, t_end: float) -> None:
    ts = uniform(t_start, t_end, 10)
    torch.testing.assert_close(ts.diff(), torch.full((10,), (t_end - t_start) / 10, dtype=F64))


@pytest.mark.parametrize("t_start,t_end", [(0.01, 1.0), (1.0, 0.01)])
def test_quadratic_is_fine_near_the_smaller_time(t_start: float, t_end: float) -> None:
    n = 12
    ts = quadratic(t_start, t_end, n)
    lo, hi = min(t_start, t_end), max(t_start, t_end)
    reference = lo + (hi - lo) * (torch.arange(n + 1, dtype=F64) / n) ** 2
    if t_start > t_end:
        reference = reference.flip(0)
    torch.testing.assert_close(ts, reference)
    steps = ts.diff().abs()
    small_end_first = steps if t_start < t_end else steps.flip(0)
    assert bool((small_end_first.diff() > 0).all())  # steps grow away from the smaller time
    assert small_end_first[0] < small_end_first[-1] / (n - 1)


@pytest.mark.parametrize("name", ["edm", "vp"])
@pytest.mark.parametrize("decreasing", [True, False])
def test_log_snr_uniform_is_uniform_in_log_snr(name: str, decreasing: bool) -> None:
    schedule, lo, hi = SCHEDULES[name]
    t_start, t_end = (hi, lo) if decreasing else (lo, hi)
    n = 25
    ts = log_snr_uniform(schedule, t_start, t_end, n)
    lam = schedule.log_snr(ts)
    expected = torch.linspace(
        schedule.log_snr(_t(t_start)).item(), schedule.log_snr(_t(t_end)).item(), n + 1, dtype=F64
    )
    torch.testing.assert_close(lam, expected, rtol=0, atol=1e-9)
    assert not torch.allclose(ts.diff(), ts.diff()[0].expand(n))  # not uniform in t


def _karras_eq5(s_max: float, s_min: float, n_points: int, rho: float) -> Tensor:
    """EDM (Karras et al. 2022) eq. 5 / ``edm_sampler``'s ``t_steps`` without the final 0:
    sigma_i = (s_max^(1/rho) + i/(N-1) (s_min^(1/rho) - s_max^(1/rho)))^rho, i < N."""
    i = torch.arange(n_points, dtype=F64)
    return (
        s_max ** (1 / rho) + i / (n_points - 1) * (s_min ** (1 / rho) - s_max ** (1 / rho))
    ) ** rho


@pytest.mark.parametrize("rho", [7.0, 3.0, 1.0])
def test_karras_reduces_to_edm_when_sigma_is_t(rho: float) -> None:
    n = 18
    ts = karras(EDM, 80.0, 0.002, n, rho=rho)
    torch.testing.assert_close(ts, _karras_eq5(80.0, 0.002, n + 1, rho), rtol=1e-10, atol=0)
    # ascending direction: the same formula from the small end
    up = karras(EDM, 0.002, 80.0, n, rho=rho)
    torch.testing.assert_close(up, _karras_eq5(0.002, 80.0, n + 1, rho), rtol=1e-10, atol=0)


def test_karras_on_vp_applies_eq5_to_noise_to_signal_ratio() -> None:
    n, rho = 15, 7.0
    ts = karras(VP, 0.99, 0.01, n, rho=rho)
    s = VP.sigma(ts) / VP.alpha(ts)
    s_max = (VP.sigma(_t(0.99)) / VP.alpha(_t(0.99))).item()
    s_min = (VP.sigma(_t(0.01)) / VP.alpha(_t(0.01))).item()
    torch.testing.assert_close(s, _karras_eq5(s_max, s_min, n + 1, rho), rtol=1e-9, atol=0)


def test_karras_allows_zero_noise_at_the_end() -> None:
    """EDM's grid ends at sigma = 0 (log-SNR = +inf): the end is exact, the interior is eq. 5."""
    n = 8
    ts = karras(EDM, 80.0, 0.0, n)
    assert ts[-1].item() == 0.0
    torch.testing.assert_close(ts, _karras_eq5(80.0, 0.0, n + 1, 7.0), rtol=1e-10, atol=0)


# --------------------------------------------------------------------------- errors


def test_unknown_grid_lists_names() -> None:
    with pytest.raises(ValueError) as info:
        make_grid("cosine", EDM, 1.0, 0.0, 10)
    for name in GRIDS:
        assert name in str(info.value)


@pytest.mark.parametrize("n", [0, -3])
@pytest.mark.parametrize("name", sorted(GRIDS))
def test_n_below_one(name: str, n: int) -> None:
    with pytest.raises(ValueError, match=rf"n.*n={n}"):
        make_grid(name, EDM, 1.0, 0.5, n)


@pytest.mark.parametrize(
    "build",
    [
        lambda n: uniform(0.0, 1.0, n),
        lambda n: quadratic(0.0, 1.0, n),
        lambda n: log_snr_uniform(EDM, 1.0, 0.5, n),
        lambda n: karras(EDM, 1.0, 0.5, n),
    ],
)
def test_builders_validate_n(build) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="n=0"):
        build(0)
    with pytest.raises(TypeError, match="int"):
        build(2.5)


def test_schedule_grids_need_a_schedule() -> None:
    for name in ("log_snr_uniform", "karras"):
        with pytest.raises(ValueError, match="schedule"):
            make_grid(name, None, 1.0, 0.5, 4)
    assert make_grid("uniform", None, 1.0, 0.5, 4).shape == (5,)


def test_bad_endpoints() -> None:
    with pytest.raises(ValueError, match="differ"):
        uniform(1.0, 1.0, 3)
    with pytest.raises(ValueError, match="t_end must be finite"):
        quadratic(0.0, math.inf, 3)
    with pytest.raises(ValueError, match="log_snr"):
        log_snr_uniform(EDM, 1.0, 0.0, 3)  # log-SNR(0) = inf
    with pytest.raises(ValueError, match="rho"):
        karras(EDM, 1.0, 0.5, 3, rho=0.0)


def test_as_grid_errors_and_conversion() -> None:
    ts = as_grid(torch.tensor([0.0, 0.25, 1.0], dtype=torch.float32))
    assert ts.dtype == F64 and ts.tolist() == [0.0, 0.25, 1.0]
    assert as_grid(torch.tensor([3, 2, 1])).dtype == F64
    cases: list[tuple[list[float] | list[list[float]], str]] = [
        ([0.0, 0.5, 0.4], "monotone"),
        ([1.0], "at least 2"),
        ([0.0, math.nan], "finite"),
        ([[0.0, 1.0]], "1-D"),
    ]
    for values, message in cases:
        with pytest.raises(ValueError, match=message):
            as_grid(values)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="real"):
        as_grid(torch.tensor([True, False]))


def test_too_fine_grid_is_reported() -> None:
    with pytest.raises(ValueError, match="strictly monotone"):
        uniform(1.0, 1.0 + 1e-15, 100)


# --------------------------------------------------------------------------- default grids
def test_schedule_kind_tells_decaying_signal_from_pure_noise() -> None:
    """alpha varies (VP-type) or is constant (VE-type), read at the two ends of the interval."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=F64)
    for sde in (sd.VPSDE(), sd.SubVPSDE(), sd.CosineVPSDE(), sd.VPSDE.from_discrete(betas)):
        assert schedule_kind(sde, sde.T, sde.t_min) == "vp"
        assert schedule_kind(sde, sde.t_min, sde.T) == "vp"  # either direction
    for sde in (sd.VESDE(), sd.EDMSDE()):
        assert schedule_kind(sde, sde.T, sde.t_min) == "ve"
    assert schedule_kind(VP, 0.99, 0.01) == "vp" and schedule_kind(EDM, 80.0, 0.002) == "ve"


# The defaults chosen by bench/grid_sweep.py (docs/solvers.md, "Default time grids"):
# method -> (grid under a VP-type schedule, grid under a VE-type schedule).
DEFAULT_GRIDS = {
    "euler": ("quadratic", "karras"),
    "heun": ("quadratic", "karras"),
    "midpoint": ("quadratic", "karras"),
    "rk4": ("quadratic", "karras"),
    "ipndm": ("quadratic", "logsnr"),
    "ipndm_v": ("quadratic", "karras"),
    "ddim": ("quadratic", "karras"),
    "dpm_solver_2": ("quadratic", "karras"),
    "dpm_solver_3": ("quadratic", "logsnr"),
    "dpmpp_2s": ("quadratic", "logsnr"),
    "dpmpp_2m": ("quadratic", "logsnr"),
    "dpmpp_3m": ("quadratic", "logsnr"),
    "unipc": ("quadratic", "logsnr"),
    "plms": ("quadratic", "logsnr"),
    "deis": ("logsnr", "logsnr"),
}


# the Runge-Kutta / Adams methods in EDM variables (solvers.EDMVariables)
EDM_VARIABLES_GRIDS = {
    "euler": ("quadratic", "karras"),
    "heun": ("uniform", "karras"),
    "midpoint": ("quadratic", "karras"),
    "rk4": ("karras", "karras"),
    "ipndm": ("quadratic", "logsnr"),
    "ipndm_v": ("quadratic", "karras"),
}


@pytest.mark.parametrize("method", sorted(DEFAULT_GRIDS))
def test_default_grids_depend_on_the_kind_of_schedule(method: str) -> None:
    solver = solvers.get_solver(method)
    vp_grid, ve_grid = DEFAULT_GRIDS[method]
    for sde in (sd.VPSDE(), sd.CosineVPSDE()):
        assert solver.grid_for(sde, sde.T, sde.t_min) == vp_grid
    for sde in (sd.VESDE(), sd.EDMSDE()):
        assert solver.grid_for(sde, sde.T, sde.t_min) == ve_grid
    assert solver.grid_for(None, 1.0, 0.0) == ve_grid == type(solver).default_grid
    if method in EDM_VARIABLES_GRIDS:  # the same method in EDM variables: measured separately
        wrapped = solvers.EDMVariables(solver)
        vp_grid, ve_grid = EDM_VARIABLES_GRIDS[method]
        assert wrapped.grid_for(sd.VPSDE(), 1.0, 1e-5) == vp_grid
        assert wrapped.grid_for(sd.EDMSDE(), 80.0, 0.002) == ve_grid
    else:
        assert type(solver).term_type is solvers.DenoiserTermLike


@pytest.mark.parametrize("method", sorted(EDM_VARIABLES_GRIDS))
def test_the_same_solve_gets_the_same_default_grid_under_edm(method: str) -> None:
    # under EDM (alpha = 1, sigma = t) stepping in t and in EDM variables is one solve
    solver = solvers.get_solver(method)
    wrapped = solvers.EDMVariables(solver)
    for sde in (sd.EDMSDE(), sd.EDMSDE(sigma_min=0.01, sigma_max=20.0)):
        assert solver.grid_for(sde, sde.T, sde.t_min) == wrapped.grid_for(sde, sde.T, sde.t_min)
    sde = sd.EDMSDE()
    x_t = 80.0 * torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gmm = sd.GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [1.0, -0.5]], [0.04, 0.09])
    oracle = gmm.score_model(sde)
    a = sd.sample(oracle, solver, 8, x_init=x_t).x
    b = sd.sample(oracle, wrapped, 8, x_init=x_t).x
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_edm_variables_of_a_user_solver_use_its_own_defaults() -> None:
    class Custom(solvers.Euler):
        edm_variables_grids = None
        default_grid_vp = "uniform"

    wrapped = solvers.EDMVariables(Custom())
    assert wrapped.grid_for(sd.VPSDE(), 1.0, 1e-5) == "uniform"
    assert wrapped.grid_for(sd.EDMSDE(), 80.0, 0.002) == "karras"


def test_every_fixed_step_ode_method_has_a_documented_default() -> None:
    fixed_odes = {
        name for name, cls in solvers.SOLVERS.items() if not cls.stochastic and not cls.adaptive
    }
    assert fixed_odes == set(DEFAULT_GRIDS)
