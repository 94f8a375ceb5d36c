"""Fixed-grid reverse-SDE samplers: Euler-Maruyama, reverse diffusion, ancestral sampling,
EDM's stochastic sampler and the SDE variants of DPM-Solver++(2M)/(3M).

All are ``stochastic``: :func:`solvers.integrate` hands every step one standard-normal draw
``z`` of the state's shape (``dW = sqrt(|dt|) z``; see :mod:`solvers.brownian` for the
sources: a generator, per-sample seeds, or one Brownian path shared between solves).

* :class:`EulerMaruyama` consumes an :class:`solvers.SDETermLike` (``scoresde`` builds the
  reverse SDE ``dx = [f x - g^2 score] dt + g dw_bar``, Song et al. 2021, eq. 6).
* The others consume a :class:`solvers.DenoiserTermLike` (an x0 prediction and the schedule
  ``x_t = alpha_t x0 + sigma_t eps``) and are written with ``(alpha, sigma)`` and the half
  log-SNR ``lambda = log(alpha / sigma)`` only (shared helpers of :mod:`solvers.exponential`),
  so one code serves VP, sub-VP, cosine, VE and EDM. Where a score is needed,
  ``score = (alpha x0 - x) / sigma^2``.

With ``s < t`` two grid times (``t = t_i`` the current, larger time; ``s = t_{i+1}``), the
exact forward transition of the diffusion between them is

    x_t | x_s ~ N(a x_s, G^2 I),   a = alpha_t / alpha_s,
    G^2 = sigma_t^2 - a^2 sigma_s^2 = sigma_t^2 (1 - e^{-2h}),   h = lambda_s - lambda_t > 0,

(``a = 1``, ``G^2 = sigma_t^2 - sigma_s^2`` for VE/EDM; ``a = sqrt(1 - beta_i)``,
``G^2 = beta_i`` for the discrete VP chain). Reverse diffusion and ancestral sampling are
built from it; their coefficients, like those of every method here, are computed for the
whole grid in ``init`` (float64, then cast to the state's dtype) and looked up by a Python-int
step index: ``step`` never synchronises with the device.

Sources: Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential
Equations" (ICLR; eq. 6, Appendix E eq. 45-47, Algorithms 2-3); Ho et al. 2020, "Denoising
Diffusion Probabilistic Models" (eq. 6-7); Song & Ermon 2019 (NCSN); Karras et al. 2022,
"Elucidating the Design Space of Diffusion-Based Generative Models" (Algorithm 2); Lu et al.
2022b, "DPM-Solver++" (arXiv:2211.01095, SDE-DPM-Solver++); Kloeden & Platen 1992,
"Numerical Solution of Stochastic Differential Equations" (Euler-Maruyama orders).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from solvers.base import Solver
from solvers.broadcast import coef
from solvers.exponential import (
    ExponentialState,
    LogSNRPoints,
    check_lower_order_final,
    log_snr_points,
    multistep_orders,
    phi,
)
from solvers.protocols import DenoiserTermLike, Schedule, SDETermLike

__all__ = [
    "EulerMaruyama",
    "ReverseDiffusion",
    "Ancestral",
    "EDMStochastic",
    "DPMSolverPP2MSDE",
    "DPMSolverPP3MSDE",
    "NoisyTable",
    "score_from_x0",
    "require_noise",
    "BUILTINS",
]

_F64 = torch.float64


def require_noise(noise: Tensor | None, owner: str) -> Tensor:
    """The step's standard-normal draw, or a ``TypeError`` naming the solver if it is missing
    (a stochastic solver's ``step`` called by hand without ``noise``)."""
    if noise is None:
        raise TypeError(
            f"{owner} is stochastic: step() needs noise = z ~ N(0, I) of the state's shape "
            f"(solvers.integrate draws it)"
        )
    return noise


def score_from_x0(x: Tensor, x0: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """The score from the x0 prediction (Tweedie): ``(alpha x0 - x) / sigma^2``.

    Args:
        x: state, shape ``(B, *dims)``.
        x0: x0 prediction at ``(x, t)``, shape of ``x``.
        alpha, sigma: ``alpha(t)``, ``sigma(t)``, shape ``()`` or ``(B,)`` (any float dtype).

    Returns:
        The score, shape and dtype of ``x``.
    """
    return (coef(alpha, x) * x0 - x) / coef(sigma * sigma, x)


# =========================================================================== Euler-Maruyama


@dataclass(frozen=True)
class EulerMaruyama(Solver[SDETermLike, None]):
    """Euler-Maruyama (Maruyama 1955; Kloeden & Platen 1992, sec. 10.2) on an Ito SDE term.

    With ``dt = t1 - t0`` (negative when sampling) and ``z ~ N(0, I)``:

        x1 = x0 + f(x0, t0) dt + g(x0, t0) sqrt(|dt|) z

    For the reverse SDE this is score_sde's ``EulerMaruyamaPredictor`` (Song et al. 2021,
    eq. 6 discretised). The last step adds noise too (the result is a sample of ``p_{t_min}``);
    use ``sd.sample(..., denoise_final=True)`` for the Tweedie estimate at ``t_min``.

    SDE solver (Ito); strong order 1.0 for additive noise ``g = g(t)`` (every reverse diffusion
    SDE; 0.5 if ``g`` depends on ``x``), weak order 1.0; 1 drift evaluation per step;
    stateless. Default grid (:meth:`~solvers.Solver.grid_for`): ``"uniform"`` for VP-type SDEs
    (score_sde), ``"logsnr"`` for VE/EDM (geometric noise levels;
    measured: ``bench/sampler_distribution.py``, ``tests/test_solvers_sde_fixed.py``).
    """

    order = 1
    strong_order = 1.0
    weak_order = 1.0
    stochastic = True
    term_type = SDETermLike
    evals_per_step = 1
    default_grid = "logsnr"
    default_grid_vp = "uniform"

    def step(
        self,
        term: SDETermLike,
        t0: Tensor,
        t1: Tensor,
        x: Tensor,
        state: None,
        noise: Tensor | None,
    ) -> tuple[Tensor, None]:
        """One Euler-Maruyama step ``t0 -> t1`` (one drift evaluation)."""
        z = require_noise(noise, "EulerMaruyama")
        dt = t1 - t0
        drift = term.drift(x, t0)
        g = term.diffusion(x, t0).to(x.dtype)
        return x + coef(dt, x) * drift + g * (coef(dt.abs().sqrt(), x) * z), None


# =========================================================================== x0-linear updates


@dataclass(frozen=True)
class NoisyTable:
    """Per-step coefficients of an update that is linear in the state, the x0 predictions and
    the noise (``N`` steps; tensors in the state's dtype and on its device):

        x_{i+1} = x_coef[i] x_i + sum_{j < orders[i]} weights[i, j] m_{i-j} + noise[i] z_i

    with ``m_k`` the x0 prediction at ``(x_k, t_k)``, newest first.

    Attributes:
        orders: per-step orders (how many predictions step ``i`` uses), Python ints.
        x_coef: ``(N,)``.
        weights: ``(N, K)``, ``K`` the method's largest order.
        noise: ``(N,)`` standard deviations of the added noise.
    """

    orders: tuple[int, ...]
    x_coef: Tensor
    weights: Tensor
    noise: Tensor

    @classmethod
    def build(
        cls,
        orders: tuple[int, ...],
        x_coef: Tensor,
        weights: Tensor,
        noise: Tensor,
        x: Tensor,
    ) -> NoisyTable:
        """Cast the float64 coefficients to ``x``'s dtype and device once."""

        def cast(c: Tensor) -> Tensor:
            return c.to(device=x.device, dtype=x.dtype)

        return cls(orders, cast(x_coef), cast(weights), cast(noise))


class _NoisyLinearStep(Solver[DenoiserTermLike, ExponentialState[NoisyTable]]):
    """Shared step of the methods whose update is a :class:`NoisyTable` row: one x0
    evaluation at ``(x_i, t_i)``, the previous ``K - 1`` kept in the state."""

    stochastic = True
    term_type = DenoiserTermLike
    evals_per_step = 1

    def _table(self, pts: LogSNRPoints, x: Tensor) -> NoisyTable:
        raise NotImplementedError

    def init(self, term: DenoiserTermLike, ts: Tensor, x: Tensor) -> ExponentialState[NoisyTable]:
        """The :class:`NoisyTable` of the whole grid ``ts`` ``(N + 1,)``, index 0."""
        return ExponentialState(0, self._table(log_snr_points(term.schedule, ts), x))

    def step(
        self,
        term: DenoiserTermLike,
        t0: Tensor,
        t1: Tensor,
        x: Tensor,
        state: ExponentialState[NoisyTable],
        noise: Tensor | None,
    ) -> tuple[Tensor, ExponentialState[NoisyTable]]:
        """One step ``t0 -> t1``: one x0 evaluation at ``(x, t0)`` and the table's update."""
        z = require_noise(noise, type(self).__name__)
        i, tab = state.index, state.table
        ms = (term.denoise(x, t0), *state.history)
        out = tab.x_coef[i] * x + tab.noise[i] * z
        for j in range(tab.orders[i]):
            out = out + tab.weights[i, j] * ms[j]
        history = ms[: int(tab.weights.shape[1]) - 1]
        return out, ExponentialState(i + 1, tab, history)


def _transition(pts: LogSNRPoints) -> tuple[Tensor, Tensor, Tensor]:
    """``(h, one_minus_e2h, ratio)`` of every step: ``h = lambda_{i+1} - lambda_i``,
    ``1 - e^{-2h}`` (= ``G^2 / sigma_i^2``, stable), ``alpha_i / alpha_{i+1}``."""
    h = pts.lam[1:] - pts.lam[:-1]
    return h, -torch.expm1(-2.0 * h), pts.alpha[:-1] / pts.alpha[1:]


@dataclass(frozen=True)
class ReverseDiffusion(_NoisyLinearStep):
    """Reverse-diffusion predictor (Song et al. 2021, Appendix E, eq. 46-47), for any
    ``(alpha, sigma)``.

    The forward SDE discretised on the grid is ``x_{i} = x_{i+1} + f_{i+1}(x_{i+1}) + G z``
    with the exact transition between the grid times (``t = t_i > s = t_{i+1}``; module
    docstring): ``f(x) = (a - 1) x``, ``a = alpha_t / alpha_s``, ``G^2 = sigma_t^2 (1 -
    e^{-2h})``. Its reverse discretisation is

        x_s = x_t - (a - 1) x_t + G^2 score(x_t, t) + G z
            = (2 - a - q) x_t + alpha_t q x0_hat + sigma_t sqrt(q) z,    q = 1 - e^{-2h}

    (``score = (alpha_t x0_hat - x_t) / sigma_t^2``).

    VE: ``x_s = x_t + (sigma_t^2 - sigma_s^2) score + sqrt(sigma_t^2 - sigma_s^2) z`` (score_sde's
    ``ReverseDiffusionPredictor`` for ``VESDE``, SMLD steps); VP on the 1000-step grid: score_sde's
    ``(2 - sqrt(1 - beta_i)) x + beta_i score + sqrt(beta_i) z``. Noise is added on the last step
    too (score_sde returns the noise-free mean there with ``noise_removal``; here use
    ``denoise_final=True``, the Tweedie estimate).

    SDE solver; strong order 1.0, weak order 1.0; 1 denoiser evaluation per step. Default grid
    ``"uniform"`` for VP-type SDEs (score_sde), ``"logsnr"`` for VE/EDM (geometric noise levels;
    measured: ``bench/sampler_distribution.py``).
    """

    order = 1
    strong_order = 1.0
    weak_order = 1.0
    default_grid = "logsnr"
    default_grid_vp = "uniform"

    def _table(self, pts: LogSNRPoints, x: Tensor) -> NoisyTable:
        _, q, a = _transition(pts)
        n = q.numel()
        return NoisyTable.build(
            (1,) * n,
            x_coef=2.0 - a - q,
            weights=(pts.alpha[:-1] * q)[:, None],
            noise=pts.sigma[:-1] * q.sqrt(),
            x=x,
        )


@dataclass(frozen=True)
class Ancestral(_NoisyLinearStep):
    """Ancestral sampling: the exact Gaussian posterior ``q(x_s | x_t, x0 = x0_hat)`` of the
    forward process between grid times (Ho et al. 2020, eq. 6-7; Song et al. 2021, Appendix F),
    for any ``(alpha, sigma)``.

    With ``h = lambda_s - lambda_t`` and the transition ``(a, G^2)`` from ``s`` to ``t``:

        mean = (a sigma_s^2 / sigma_t^2) x_t + (alpha_s G^2 / sigma_t^2) x0_hat
             = (sigma_s / sigma_t) e^{-h} x_t + alpha_s (1 - e^{-2h}) x0_hat
        var  = G^2 sigma_s^2 / sigma_t^2 = sigma_s^2 (1 - e^{-2h})
        x_s  = mean + sqrt(var) z.

    VP: DDPM's ancestral step with the posterior variance ``beta_tilde`` (Ho et al. eq. 7;
    score_sde's ``AncestralSamplingPredictor`` uses ``beta`` instead). VE/EDM: ``x_s = x0_hat +
    (sigma_s^2 / sigma_t^2)(x_t - x0_hat) + sigma_s sqrt(1 - sigma_s^2/sigma_t^2) z`` (score_sde's
    SMLD ancestral step; k-diffusion's ``sample_euler_ancestral`` with ``eta = 1``). The same
    update is DDIM with ``eta = 1`` and the first-order SDE-DPM-Solver++.

    SDE solver; strong order 1.0, weak order 1.0; 1 denoiser evaluation per step. Default grid
    ``"uniform"`` for VP-type SDEs (DDPM), ``"logsnr"`` for VE/EDM (geometric noise levels;
    measured: ``bench/sampler_distribution.py``).
    """

    order = 1
    strong_order = 1.0
    weak_order = 1.0
    default_grid = "logsnr"
    default_grid_vp = "uniform"

    def _table(self, pts: LogSNRPoints, x: Tensor) -> NoisyTable:
        h, q, _ = _transition(pts)
        n = q.numel()
        return NoisyTable.build(
            (1,) * n,
            x_coef=pts.sigma[1:] / pts.sigma[:-1] * torch.exp(-h),
            weights=(pts.alpha[1:] * q)[:, None],
            noise=pts.sigma[1:] * q.sqrt(),
            x=x,
        )


def _sde_multistep_table(
    pts: LogSNRPoints, orders: tuple[int, ...], width: int, midpoint: bool, x: Tensor
) -> NoisyTable:
    """Coefficients of SDE-DPM-Solver++ steps of orders 1-3 (float64, then cast).

    With ``h = h_i``, ``A = alpha_{i+1} (1 - e^{-2h}) = 2h alpha_{i+1} phi_1(-2h)``,
    ``B = 2h alpha_{i+1} phi_2(-2h)``, ``C = 4h alpha_{i+1} phi_3(-2h)`` and the divided
    differences of :func:`solvers.exponential`'s multistep table (``D1 ~ h p'``,
    ``D2 ~ h^2 p''/2``):

    * order 1: ``A m_i``;
    * order 2: ``A m_i + c2 (m_i - m_{i-1}) / r`` with ``c2 = A / 2`` (``midpoint``) or ``B``;
    * order 3: ``A m_i + B D1 + C D2``.
    """
    lam, alpha, sigma = pts.lam, pts.alpha, pts.sigma
    n = lam.numel() - 1
    h = lam[1:] - lam[:-1]
    alpha_t = alpha[1:]
    a = -alpha_t * torch.expm1(-2.0 * h)
    b = 2.0 * alpha_t * h * phi(2, -2.0 * h)
    c = 4.0 * alpha_t * h * phi(3, -2.0 * h)
    ones = torch.ones_like(h)
    h_prev1 = torch.cat([ones[:1], h[:-1]]) if n > 1 else ones
    h_prev2 = torch.cat([ones[:2], h[:-2]]) if n > 2 else ones
    r0, r1 = h_prev1 / h, h_prev2 / h
    zero = torch.zeros_like(a)
    c2 = 0.5 * a if midpoint else b
    w1 = torch.stack([a, zero, zero], dim=-1)
    w2 = torch.stack([a + c2 / r0, -c2 / r0, zero], dim=-1)
    p = (b * (1.0 + r0 / (r0 + r1)) + c / (r0 + r1)) / r0
    q = (b * r0 / (r0 + r1) + c / (r0 + r1)) / r1
    w3 = torch.stack([a + p, -p - q, q], dim=-1)
    order_t = torch.tensor(orders, device=h.device)[:, None]
    weights = torch.where(order_t == 1, w1, torch.where(order_t == 2, w2, w3))[:, :width]
    return NoisyTable.build(
        orders,
        x_coef=sigma[1:] / sigma[:-1] * torch.exp(-h),
        weights=weights,
        noise=sigma[1:] * (-torch.expm1(-2.0 * h)).sqrt(),
        x=x,
    )


@dataclass(frozen=True)
class _SDEMultistep(_NoisyLinearStep):
    lower_order_final: bool | None = None

    lower_order_final_steps: ClassVar[int] = 15
    default_grid = "logsnr"

    def __post_init__(self) -> None:
        check_lower_order_final(self.lower_order_final)

    def _midpoint(self) -> bool:
        return False

    def _table(self, pts: LogSNRPoints, x: Tensor) -> NoisyTable:
        order = type(self).order
        orders = multistep_orders(
            pts.lam.numel() - 1, order, self.lower_order_final, self.lower_order_final_steps
        )
        return _sde_multistep_table(pts, orders, order, self._midpoint(), x)


@dataclass(frozen=True)
class DPMSolverPP2MSDE(_SDEMultistep):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022b, Sec. 4 / Appendix; diffusers
    ``algorithm_type="sde-dpmsolver++"``, k-diffusion ``sample_dpmpp_2m_sde``): a multistep
    exponential integrator of the reverse SDE itself (not an ancestral approximation).

    In data prediction the reverse SDE's solution from ``s`` to ``t`` is (variation of
    constants; ``lambda = log(alpha/sigma)``, ``h = lambda_t - lambda_s``)

        x_t = (sigma_t/sigma_s) e^{-h} x_s + 2 alpha_t int_0^h e^{-2(h-u)} x0(lambda_s + u) du
              + sigma_t sqrt(1 - e^{-2h}) z

    (the noise integral is exact). With ``m_i`` the x0 prediction at grid point ``i``,
    ``r = h_{i-1}/h_i``, ``A = alpha_{i+1} (1 - e^{-2h})``:

        x_{i+1} = (sigma_{i+1}/sigma_i) e^{-h} x_i + A m_i + c (m_i - m_{i-1}) / r
                  + sigma_{i+1} sqrt(1 - e^{-2h}) z,

    ``c = A / 2`` (``solver_type="midpoint"``, the default of diffusers and k-diffusion) or
    ``c = 2h alpha_{i+1} phi_2(-2h)`` (``"heun"``: the linear interpolation of ``m`` integrated
    exactly). The first step (and the last with ``lower_order_final``) is first order: the
    exact posterior step of :class:`Ancestral`.

    SDE solver; order 2 in the drift (the noise-free part), weak order 1.0 (the x0 predictions
    along a Brownian path are not smooth: higher-order extrapolation does not raise the weak
    order in general); strong order 1.0; 1 denoiser evaluation per step. Default grid
    ``"logsnr"``.

    Args:
        lower_order_final: ``None`` (default: first-order final step for solves of fewer than
            15 steps), ``True`` or ``False`` (see :func:`solvers.exponential.multistep_orders`).
        solver_type: ``"midpoint"`` or ``"heun"`` (see above).
    """

    order = 2
    strong_order = 1.0
    weak_order = 1.0
    solver_type: Literal["midpoint", "heun"] = "midpoint"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.solver_type not in ("midpoint", "heun"):
            raise ValueError(
                f"solver_type must be 'midpoint' or 'heun', got solver_type={self.solver_type!r}"
            )

    def _midpoint(self) -> bool:
        return self.solver_type == "midpoint"


@dataclass(frozen=True)
class DPMSolverPP3MSDE(_SDEMultistep):
    """SDE-DPM-Solver++(3M) (k-diffusion ``sample_dpmpp_3m_sde``; the third-order multistep
    member of the SDE-DPM-Solver++ family of Lu et al. 2022b).

    The quadratic through ``m_{i-2}, m_{i-1}, m_i`` (in ``lambda``) integrated exactly against
    the SDE kernel ``2 e^{-2(h-u)}``: with ``r0 = h_{i-1}/h``, ``r1 = h_{i-2}/h``,
    ``D1_0 = (m_i - m_{i-1})/r0``, ``D1_1 = (m_{i-1} - m_{i-2})/r1``,
    ``D1 = D1_0 + r0/(r0+r1) (D1_0 - D1_1)``, ``D2 = (D1_0 - D1_1)/(r0+r1)``:

        x_{i+1} = (sigma_{i+1}/sigma_i) e^{-h} x_i
                  + 2h alpha_{i+1} [phi_1(-2h) m_i + phi_2(-2h) D1 + 2 phi_3(-2h) D2]
                  + sigma_{i+1} sqrt(1 - e^{-2h}) z.

    (k-diffusion weights ``D2`` by ``2h phi_3(-2h)``, half the exact integral, as dpm-solver
    does for the ODE; see the note of ``dpmpp_3m``.) Warm-up: step 0 first order, step 1 the
    2M step with ``solver_type="heun"``.

    SDE solver; order 3 in the drift, weak order 1.0, strong order 1.0; 1 denoiser evaluation
    per step. Default grid ``"logsnr"``.

    Args:
        lower_order_final: as for :class:`DPMSolverPP2MSDE`.
    """

    order = 3
    strong_order = 1.0
    weak_order = 1.0


# =========================================================================== EDM Algorithm 2


@dataclass(frozen=True)
class _EDMTable:
    """Per-step coefficients of :class:`EDMStochastic` (float64, ``(N,)`` each)."""

    n_steps: int
    alpha0: Tensor  # alpha(t_i)
    t_hat: Tensor  # time of the raised noise level
    alpha_hat: Tensor
    s_hat: Tensor  # noise-to-signal ratio sigma/alpha at t_hat
    churn: Tensor  # S_noise sqrt(s_hat^2 - s_i^2)
    alpha1: Tensor  # alpha(t_{i+1})
    s1: Tensor  # sigma/alpha at t_{i+1}


@dataclass(frozen=True)
class EDMStochastic(Solver[DenoiserTermLike, ExponentialState[_EDMTable]]):
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2), for any ``(alpha, sigma)``.

    Written in EDM's scaled variables (Karras et al. eq. 4 / Algorithm 1 with ``s(t) = alpha``):
    the noise level ``s_i = sigma_i / alpha_i`` (= ``t`` for EDM) and ``y = x / alpha``. Step
    ``i``, with ``gamma_i = min(S_churn / N, sqrt(2) - 1)`` if ``S_tmin <= s_i <= S_tmax`` else 0:

        s_hat = s_i (1 + gamma_i)                      (clamped to the grid's largest level)
        y_hat = y_i + sqrt(s_hat^2 - s_i^2) S_noise z   (churn: raise the noise level)
        d     = (y_hat - D(alpha_hat y_hat, t_hat)) / s_hat
        y_e   = y_hat + (s_{i+1} - s_hat) d             (Euler)
        d'    = (y_e - D(alpha_{i+1} y_e, t_{i+1})) / s_{i+1}
        y_{i+1} = y_hat + (s_{i+1} - s_hat) (d + d') / 2             (Heun)

    and ``x_{i+1} = alpha_{i+1} y_{i+1}``; ``t_hat`` is the time of noise level ``s_hat``
    (``t_from_log_snr(-2 log s_hat)``). As in EDM the last step is Euler (EDM's ends at
    ``sigma = 0``; here at ``t_min``, so the correction could be made, but the method is the
    paper's). ``S_tmin``/``S_tmax`` are in units of the noise level ``sigma / alpha``. The raised
    level never exceeds the grid's largest level (EDM keeps ``S_tmax = 50 < sigma_max = 80`` for
    the same reason: the model is not defined beyond ``T``). With ``S_churn = 0`` this is EDM's
    deterministic Heun sampler (Algorithm 1).

    SDE solver; order 2; weak order 2.0: the churn maps ``p_{s_i}`` exactly onto
    ``p_{s_hat}`` (adding Gaussian noise to a sample of the diffused data is the forward
    process), so the only error is the Heun step's, ``O(h^3)`` per step in distribution
    (measured 2.0 on Gaussian data once ``S_churn / N`` is below the ``sqrt(2) - 1`` cap);
    no strong order (the churn is not a discretisation of one Brownian path). 2 denoiser
    evaluations per step, 1 on the last (``nfe_for_steps(n) = 2n - 1``). Default grid
    ``"karras"`` (EDM, eq. 5, ``rho = 7``).

    Args:
        S_churn: total churn (EDM Table 5: 40 for ImageNet-64, 30 for the VP/VE models of
            CIFAR-10; default 40).
        S_tmin: smallest noise level ``sigma/alpha`` where churn is applied (default 0.05,
            EDM's ImageNet-64 value).
        S_tmax: largest noise level ``sigma/alpha`` where churn is applied (default 50).
        S_noise: noise inflation (EDM uses 1.003 to compensate imperfect denoisers; default
            1.0, exact for an exact denoiser).
    """

    S_churn: float = 40.0  # noqa: N815 - the paper's names
    S_tmin: float = 0.05  # noqa: N815
    S_tmax: float = 50.0  # noqa: N815
    S_noise: float = 1.0  # noqa: N815

    order = 2
    weak_order = 2.0
    stochastic = True
    term_type = DenoiserTermLike
    evals_per_step = 2
    default_grid = "karras"

    def __post_init__(self) -> None:
        for name in ("S_churn", "S_tmin", "S_tmax", "S_noise"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{name} must be a real number, got {value!r}")
            if math.isnan(value) or value < 0 or (name != "S_tmax" and math.isinf(value)):
                raise ValueError(f"{name} must be >= 0 (S_tmax may be inf), got {name}={value}")
        if self.S_tmin > self.S_tmax:
            raise ValueError(f"S_tmin must be <= S_tmax, got {self.S_tmin} > {self.S_tmax}")

    def nfe_for_steps(self, n_steps: int) -> int:
        """``2 n - 1``: two evaluations per step, one on the last (Euler) step."""
        return 2 * n_steps - 1 if n_steps > 0 else 0

    def init(self, term: DenoiserTermLike, ts: Tensor, x: Tensor) -> ExponentialState[_EDMTable]:
        """Noise levels, churn amounts and the raised times ``t_hat`` of every step."""
        schedule: Schedule = term.schedule
        pts = log_snr_points(schedule, ts)
        n = ts.numel() - 1
        s = torch.exp(-pts.lam)  # sigma / alpha
        s_i = s[:-1]
        in_range = (s_i >= self.S_tmin) & (s_i <= self.S_tmax)
        gamma = torch.where(
            in_range, s_i.new_tensor(min(self.S_churn / n, math.sqrt(2.0) - 1.0)), 0.0
        )
        s_raised = torch.minimum(s_i * (1.0 + gamma), s.max())
        raised = s_raised > s_i
        lam_hat = torch.where(raised, -torch.log(s_raised), pts.lam[:-1])
        t_hat = torch.where(raised, schedule.t_from_log_snr(2.0 * lam_hat).to(_F64), ts[:-1])
        hat = log_snr_points(schedule, t_hat)  # realised: consistent with the evaluated time
        s_hat = torch.where(raised, torch.exp(-hat.lam), s_i)
        alpha_hat = torch.where(raised, hat.alpha, pts.alpha[:-1])
        churn = self.S_noise * (s_hat * s_hat - s_i * s_i).clamp_min(0.0).sqrt()
        table = _EDMTable(
            n_steps=n,
            alpha0=pts.alpha[:-1],
            t_hat=t_hat,
            alpha_hat=alpha_hat,
            s_hat=s_hat,
            churn=churn,
            alpha1=pts.alpha[1:],
            s1=s[1:],
        )
        return ExponentialState(0, table)

    def step(
        self,
        term: DenoiserTermLike,
        t0: Tensor,
        t1: Tensor,
        x: Tensor,
        state: ExponentialState[_EDMTable],
        noise: Tensor | None,
    ) -> tuple[Tensor, ExponentialState[_EDMTable]]:
        """One step of Algorithm 2 (an Euler step without correction on the last step)."""
        z = require_noise(noise, "EDMStochastic")
        i, tab = state.index, state.table
        nxt = ExponentialState(i + 1, tab)
        # churn: raise the noise level from s_i to s_hat (lines 4-6)
        y_hat = x / coef(tab.alpha0[i], x) + coef(tab.churn[i], x) * z
        s_hat, s1 = tab.s_hat[i], tab.s1[i]
        x0 = term.denoise(coef(tab.alpha_hat[i], x) * y_hat, tab.t_hat[i])
        d = (y_hat - x0) / coef(s_hat, x)
        y1 = y_hat + coef(s1 - s_hat, x) * d  # Euler (line 8)
        if i == tab.n_steps - 1:
            return coef(tab.alpha1[i], x) * y1, nxt
        # second-order correction (lines 9-11)
        x0_1 = term.denoise(coef(tab.alpha1[i], x) * y1, t1)
        d1 = (y1 - x0_1) / coef(s1, x)
        y1 = y_hat + coef(0.5 * (s1 - s_hat), x) * (d + d1)
        return coef(tab.alpha1[i], x) * y1, nxt


BUILTINS: dict[str, type[Solver[Any, Any]]] = {
    "euler_maruyama": EulerMaruyama,
    "reverse_diffusion": ReverseDiffusion,
    "ancestral": Ancestral,
    "edm_stochastic": EDMStochastic,
    "dpmpp_2m_sde": DPMSolverPP2MSDE,
    "dpmpp_3m_sde": DPMSolverPP3MSDE,
}
"""Registry names of this module's solvers (wired into :data:`solvers.SOLVERS` by
``solvers/registry.py``)."""
