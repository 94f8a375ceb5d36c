"""Predictor-corrector sampling: any predictor followed (or preceded) by Langevin MCMC
corrector steps at each noise level (Song et al. 2021, Algorithms 2-5; Song & Ermon 2019,
Algorithm 1).

The corrector needs the score ``grad log p_t``: it is read from a denoiser term,
``score = (alpha_t x0_hat - x) / sigma_t^2`` (Tweedie), so :class:`PredictorCorrector`
consumes a :class:`solvers.DenoiserTermLike`. The predictor may be any fixed-grid solver: one
that consumes the denoiser term directly (``reverse_diffusion``, ``ancestral``,
``dpmpp_2m_sde``, ``edm_stochastic``, ``ddim``, ...), or one that consumes the reverse SDE
(``euler_maruyama``) or the probability-flow ODE (``euler``, ``heun``, ...): those get the
term rebuilt from the denoiser and the schedule (:func:`reverse_sde_term`,
:func:`probability_flow_term`), with ``f = d log alpha / dt`` and
``g^2 = d sigma^2/dt - 2 f sigma^2 = -sigma^2 d log_snr / dt`` from the schedule by automatic
differentiation.

Where the corrector runs (``corrector_position``), for a grid ``T = t_0 > t_1 > ... > t_N =
t_min``:

* ``"after"`` (default; the paper's Algorithms 2 and 3): step ``i`` is the predictor
  ``t_i -> t_{i+1}`` followed by ``n_steps`` Langevin steps at the new level ``t_{i+1}``. The
  last corrector runs at ``t_min``; none runs at ``T`` (the prior sample is already exact).
* ``"before"`` (score_sde's ``pc_sampler`` code): step ``i`` is ``n_steps`` Langevin steps at
  ``t_i`` followed by the predictor ``t_i -> t_{i+1}``. The first corrector runs at ``T``; none
  runs at ``t_min``.

Each Langevin step at level ``t`` with ``z ~ N(0, I)``:

    s = score(x, t);   x <- x + eps s + sqrt(2 eps) z

with the step size (``corrector``):

* ``"langevin"`` (score_sde ``LangevinCorrector``; Song et al. 2021, Algorithms 4-5):
  ``eps = min(2 a_i (snr ||z|| / ||s||)^2, sigma_t^2)``. The cap is not in score_sde: it is half
  the stability limit of unadjusted Langevin on ``p_t`` (``-log p_t`` has a gradient with
  Lipschitz constant at most ``1 / sigma_t^2`` for any data, so steps above ``2 sigma_t^2``
  diverge); it never binds in the usual regime (``eps ~ 2 snr^2 sigma_t^2``) and keeps a
  vanishing score (``||s|| -> 0``, e.g. a state already at a mode at ``t_min``) from giving an
  infinite step. Norms are taken over all non-batch dimensions. The default, as score_sde,
  uses **batch means** of the per-sample norms (``norm="batch"``),
  ``eps = 2 a_i (snr mean_j ||z_j|| / mean_j ||s_j||)^2``, one step size for the whole batch (so
  sample ``j`` depends on the rest of the batch). ``norm="sample"`` takes them **per sample**
  (sample ``j``'s step depends on sample ``j`` only). The two agree in high dimension, where
  ``||z||`` and ``||s||`` concentrate. In low dimension the per-sample step depends on the
  sample's position (large near a mode, where ``||s||`` is small) and on its own noise draw,
  which biases the
  Langevin steps: 200 steps at one level of a standard Gaussian leave the variance too large
  by a factor 4.0 in 2-D, 1.30 in 16-D and 1.04 in 256-D, against 1.007 / 1.026 / 1.023 with
  batch norms (the ``snr^2`` bias of unadjusted Langevin): keep ``norm="batch"`` (or use
  ``corrector="ald"``) for low-dimensional data.
* ``"ald"`` (annealed Langevin dynamics; score_sde ``AnnealedLangevinDynamics``; Song & Ermon
  2019, Algorithm 1): ``eps = 2 a_i (snr sigma_t)^2``, proportional to the noise variance. In
  Song & Ermon's notation (``x <- x + (alpha_i/2) s + sqrt(alpha_i) z``, ``alpha_i = epsilon
  sigma_i^2 / sigma_L^2``) this is ``epsilon = 4 snr^2 sigma_L^2`` (their CIFAR-10 values
  ``epsilon = 2e-5``, ``sigma_L = 0.01`` are ``snr = 0.224``). Their sampler is
  ``PredictorCorrector(predictor="none", corrector="ald", n_steps=T)`` on the geometric
  (``"uniform"`` for VE) grid.

``a_i`` is score_sde's ``alpha_i``: 1 for VE/EDM, ``1 - beta_i`` for VP. For any schedule it is
taken as ``a_i = (alpha(t_i) / alpha(t_{i+1}))^2``, the ``1 - beta_i`` of the discrete VP chain
on the sampling grid, for the step ``i`` the corrector belongs to (on score_sde's 1000-step
uniform VP grid this is exactly its ``alphas[i]``; on coarse VP grids it is well below 1 at
large ``t``, shrinking the corrector there).

NFE: every corrector step is one denoiser evaluation; a PC step costs the predictor's
evaluations plus ``n_steps``, so ``nfe_for_steps(n) = predictor.nfe_for_steps(n) + n n_steps``
(``1 + n_steps`` per step for the one-evaluation predictors). With a budget, ``sd.sample``
takes the largest ``n`` that fits.

Noise: a PC step takes ``noise_draws = (predictor's draws) + n_steps`` standard-normal draws
(the predictor's Brownian increment first, then one per corrector step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from solvers.autograd import autograd_enabled, normal_tensor
from solvers.base import Solver
from solvers.broadcast import coef
from solvers.exponential import DDIM, log_snr_points
from solvers.protocols import DenoiserTermLike, ODETermLike, Schedule, SDETermLike
from solvers.sde_fixed import (
    Ancestral,
    DPMSolverPP2MSDE,
    DPMSolverPP3MSDE,
    EDMStochastic,
    EulerMaruyama,
    ReverseDiffusion,
    require_noise,
    score_from_x0,
)

__all__ = [
    "PredictorCorrector",
    "PCState",
    "PREDICTORS",
    "reverse_sde_term",
    "probability_flow_term",
    "drift_coefficients",
    "BUILTINS",
]

_F64 = torch.float64

PREDICTORS: dict[str, type[Solver[Any, Any]] | None] = {
    "reverse_diffusion": ReverseDiffusion,
    "euler_maruyama": EulerMaruyama,
    "ancestral": Ancestral,
    "edm_stochastic": EDMStochastic,
    "dpmpp_2m_sde": DPMSolverPP2MSDE,
    "dpmpp_3m_sde": DPMSolverPP3MSDE,
    "ddim": DDIM,
    "none": None,
}
"""Predictor names :class:`PredictorCorrector` accepts as strings (``"none"``: corrector
only, i.e. annealed Langevin dynamics). Any other fixed-grid solver can be passed as an
instance."""


def drift_coefficients(schedule: Schedule, t: Tensor) -> tuple[Tensor, Tensor]:
    """The forward SDE's ``f(t) = d log alpha / dt`` and ``g^2(t) = -sigma^2 d log_snr / dt``
    (``= d sigma^2/dt - 2 f sigma^2``) from the schedule, by automatic differentiation in
    float64 (no host synchronisation).

    Args:
        schedule: a differentiable :class:`solvers.Schedule`.
        t: times, shape ``()`` or ``(B,)``, float64.

    Returns:
        ``(f, g2)``, float64, shape of ``t``.

    Raises:
        TypeError: the schedule is not differentiable in ``t``.
    """
    with autograd_enabled():
        tt = normal_tensor(t.to(_F64)).requires_grad_(True)
        log_alpha = torch.log(schedule.alpha(tt).to(_F64))
        lam = schedule.log_snr(tt).to(_F64)
        sigma2 = schedule.sigma(tt).to(_F64) ** 2
        if not lam.requires_grad:
            raise TypeError(
                "the schedule is not differentiable in t (log_snr returned a tensor without a "
                "gradient); the reverse SDE / PF-ODE cannot be rebuilt from it"
            )
        (dlam,) = torch.autograd.grad(lam.sum(), tt)
        f: Tensor | None = None
        if log_alpha.requires_grad:  # else alpha is constant (VE, EDM): f = 0
            (f,) = torch.autograd.grad(log_alpha.sum(), tt, allow_unused=True)
    f = torch.zeros_like(dlam) if f is None else f
    return f.detach(), (-sigma2.detach() * dlam).detach()


def _score(term: DenoiserTermLike, x: Tensor, t: Tensor) -> Tensor:
    t64 = t.to(_F64)
    alpha = term.schedule.alpha(t64).to(_F64)
    sigma = term.schedule.sigma(t64).to(_F64)
    return score_from_x0(x, term.denoise(x, t), alpha, sigma)


@dataclass(frozen=True)
class _ReverseSDEFromDenoiser:
    """The reverse SDE ``dx = [f x - g^2 score] dt + g dw_bar`` of a denoiser term
    (:class:`solvers.SDETermLike`); one denoiser evaluation per ``drift``."""

    term: DenoiserTermLike

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        f, g2 = drift_coefficients(self.term.schedule, t)
        return coef(f, x) * x - coef(g2, x) * _score(self.term, x, t)

    def diffusion(self, x: Tensor, t: Tensor) -> Tensor:
        _, g2 = drift_coefficients(self.term.schedule, t)
        return coef(g2.clamp_min(0.0).sqrt(), x)


@dataclass(frozen=True)
class _ProbabilityFlowFromDenoiser:
    """The probability-flow ODE ``dx/dt = f x - g^2 score / 2`` of a denoiser term
    (:class:`solvers.ODETermLike`); one denoiser evaluation per ``velocity``."""

    term: DenoiserTermLike

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        f, g2 = drift_coefficients(self.term.schedule, t)
        return coef(f, x) * x - coef(0.5 * g2, x) * _score(self.term, x, t)


def reverse_sde_term(term: DenoiserTermLike) -> SDETermLike:
    """The reverse SDE of a denoiser term, as an :class:`solvers.SDETermLike`."""
    return _ReverseSDEFromDenoiser(term)


def probability_flow_term(term: DenoiserTermLike) -> ODETermLike:
    """The probability-flow ODE of a denoiser term, as an :class:`solvers.ODETermLike`."""
    return _ProbabilityFlowFromDenoiser(term)


def _adapt(term: DenoiserTermLike, term_type: type) -> Any:
    if term_type is DenoiserTermLike:
        return term
    if term_type is SDETermLike:
        return reverse_sde_term(term)
    if term_type is ODETermLike:
        return probability_flow_term(term)
    raise TypeError(f"a predictor consuming {term_type.__name__} cannot be driven by a denoiser")


@dataclass(frozen=True)
class _CorrectorTable:
    """Per-step corrector coefficients (float64, ``(N,)``): the level's time, alpha, sigma and
    score_sde's ``a_i``."""

    t: Tensor
    alpha: Tensor
    sigma: Tensor
    a: Tensor


@dataclass(frozen=True)
class PCState:
    """State of :class:`PredictorCorrector`.

    Attributes:
        index: the next step (Python int).
        predictor: the predictor's own state.
        table: the corrector's per-step coefficients.
    """

    index: int
    predictor: Any
    table: _CorrectorTable


@dataclass(frozen=True)
class PredictorCorrector(Solver[DenoiserTermLike, PCState]):
    """Predictor-corrector sampler (Song et al. 2021, Algorithms 2-3 with the Langevin
    corrector of Algorithms 4-5; Song & Ermon 2019, Algorithm 1 as ``predictor="none"``,
    ``corrector="ald"``). See the module docstring for where the corrector runs and its step
    size.

    One step ``t_i -> t_{i+1}``: the predictor's step, and ``n_steps`` Langevin steps

        x <- x + eps s(x, t) + sqrt(2 eps) z,   s = (alpha_t D(x, t) - x) / sigma_t^2

    at ``t = t_{i+1}`` (``corrector_position="after"``) or at ``t = t_i`` before the
    predictor (``"before"``, score_sde's code).

    SDE solver; ``convergence_order`` and default grid: the predictor's order, grid
    ``"uniform"`` for VP-type SDEs (score_sde), ``"logsnr"`` for VE/EDM.
    ``weak_order`` is ``None``: the corrector's step size is set by
    ``snr``, not by the grid, so the samples do not converge to ``p_{t_min}`` as the steps grow
    (the unadjusted Langevin steps leave a bias of order ``snr^4``; score_sde's ``snr = 0.16``
    gives ~1e-3 relative on the variance of Gaussian data); with ``corrector="none"`` (or
    ``n_steps = 0``) the orders are the predictor's. NFE per step: the predictor's plus
    ``n_steps``.

    Args:
        predictor: a name of :data:`PREDICTORS` (default ``"reverse_diffusion"``) or a
            fixed-grid solver instance consuming a denoiser, SDE or ODE term.
        corrector: ``"langevin"`` (snr-adaptive step, default), ``"ald"`` (step proportional
            to ``sigma_t^2``) or ``"none"``.
        snr: the signal-to-noise ratio ``r`` of the step size (default 0.16, score_sde's).
        n_steps: corrector steps per noise level (default 1).
        corrector_position: ``"after"`` (default) or ``"before"`` the predictor.
        norm: ``"batch"`` (default; score_sde's norms over the whole batch) or ``"sample"``
            (per-sample norms) in the ``"langevin"`` step size. Per-sample norms are badly
            biased in low dimension (a 2-D Gaussian's variance comes out 4x too large after 200
            corrector steps; 1.3x in 16-D; 1.04x in 256-D), batch norms are not (<= 1.03x).
    """

    predictor: str | Solver[Any, Any] = "reverse_diffusion"
    corrector: Literal["langevin", "ald", "none"] = "langevin"
    snr: float = 0.16
    n_steps: int = 1
    corrector_position: Literal["after", "before"] = "after"
    norm: Literal["sample", "batch"] = "batch"
    _predictor: Solver[Any, Any] | None = field(init=False, repr=False, compare=False)

    order = 1
    stochastic = True
    term_type = DenoiserTermLike
    evals_per_step = 2
    default_grid = "logsnr"
    default_grid_vp = "uniform"
    tiny: ClassVar[float] = 1e-30
    """Floor of ``||s||`` in the ``"langevin"`` step size (a zero score would divide by 0)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "_predictor", self._resolve(self.predictor))
        if self.corrector not in ("langevin", "ald", "none"):
            raise ValueError(
                f"corrector must be 'langevin', 'ald' or 'none', got corrector={self.corrector!r}"
            )
        if self.corrector_position not in ("after", "before"):
            raise ValueError(
                f"corrector_position must be 'after' or 'before', got {self.corrector_position!r}"
            )
        if self.norm not in ("sample", "batch"):
            raise ValueError(f"norm must be 'sample' or 'batch', got norm={self.norm!r}")
        snr = self.snr
        if isinstance(snr, bool) or not isinstance(snr, int | float) or not math.isfinite(snr):
            raise ValueError(f"snr must be a finite real number > 0, got snr={snr!r}")
        if snr <= 0:
            raise ValueError(f"snr must be > 0, got snr={snr}")
        n = self.n_steps
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n_steps must be an int >= 0, got n_steps={n!r}")
        if self._predictor is None and self._corrector_steps == 0:
            raise ValueError("predictor='none' needs a corrector with n_steps >= 1")

    @staticmethod
    def _resolve(predictor: object) -> Solver[Any, Any] | None:
        if isinstance(predictor, str):
            try:
                cls = PREDICTORS[predictor]
            except KeyError:
                known = ", ".join(sorted(PREDICTORS))
                raise ValueError(
                    f"unknown predictor {predictor!r}; known predictors: {known} (or pass a "
                    f"solver instance)"
                ) from None
            return None if cls is None else cls()
        if isinstance(predictor, PredictorCorrector):
            raise TypeError("the predictor of a PredictorCorrector cannot be another one")
        if isinstance(predictor, Solver):
            if type(predictor).adaptive or hasattr(predictor, "solve"):
                raise TypeError(
                    f"the predictor must be a fixed-grid solver, got {type(predictor).__name__} "
                    f"(it integrates the whole interval itself)"
                )
            if type(predictor).term_type not in (DenoiserTermLike, SDETermLike, ODETermLike):
                raise TypeError(
                    f"predictor {type(predictor).__name__} consumes "
                    f"{type(predictor).term_type.__name__}, which cannot be built from a denoiser"
                )
            return predictor
        raise TypeError(
            f"predictor must be a name ({', '.join(sorted(PREDICTORS))}) or a solvers.Solver "
            f"instance, got {type(predictor).__name__}"
        )

    # ---------------------------------------------------------------- bookkeeping
    @property
    def _corrector_steps(self) -> int:
        return 0 if self.corrector == "none" else self.n_steps

    @property
    def _predictor_draws(self) -> int:
        p = self._predictor
        if p is None or not type(p).stochastic:
            return 0
        return int(getattr(p, "noise_draws", 1))

    @property
    def noise_draws(self) -> int:
        """Standard-normal draws per step: the predictor's, then one per corrector step."""
        return max(1, self._predictor_draws + self._corrector_steps)

    @property
    def convergence_order(self) -> int:
        """The predictor's order (1 without a predictor)."""
        return 1 if self._predictor is None else self._predictor.convergence_order

    def nfe_for_steps(self, n_steps: int) -> int:
        """``predictor.nfe_for_steps(n) + n * n_steps`` (each corrector step is one
        evaluation)."""
        pred = 0 if self._predictor is None else self._predictor.nfe_for_steps(n_steps)
        return pred + n_steps * self._corrector_steps

    # ---------------------------------------------------------------- solve
    def init(self, term: DenoiserTermLike, ts: Tensor, x: Tensor) -> PCState:
        """The predictor's state and, for every step, the corrector's level and ``a_i``."""
        pts = log_snr_points(term.schedule, ts)
        ratio = pts.alpha[:-1] / pts.alpha[1:]
        after = self.corrector_position == "after"
        sl = slice(1, None) if after else slice(None, -1)
        table = _CorrectorTable(
            t=pts.t[sl], alpha=pts.alpha[sl], sigma=pts.sigma[sl], a=ratio * ratio
        )
        p = self._predictor
        pstate = None if p is None else p.init(_adapt(term, type(p).term_type), ts, x)
        return PCState(0, pstate, table)

    def _correct(
        self, term: DenoiserTermLike, x: Tensor, i: int, tab: _CorrectorTable, zs: list[Tensor]
    ) -> Tensor:
        t, alpha, sigma, a = tab.t[i], tab.alpha[i], tab.sigma[i], tab.a[i]
        for z in zs:
            s = score_from_x0(x, term.denoise(x, t), alpha, sigma)
            if self.corrector == "ald":
                eps = coef(2.0 * a * (self.snr * sigma) ** 2, x)
            else:
                s_norm = s.flatten(1).norm(dim=1)
                z_norm = z.flatten(1).norm(dim=1)
                if self.norm == "batch":
                    s_norm, z_norm = s_norm.mean(), z_norm.mean()
                ratio = z_norm / s_norm.clamp_min(self.tiny)
                eps = coef(2.0 * a, x) * coef(self.snr * ratio, x) ** 2
                # cap: half the stability limit 2 sigma_t^2 of unadjusted Langevin on p_t
                eps = torch.minimum(eps, coef(sigma * sigma, x))
            x = x + eps * s + (2.0 * eps).sqrt() * z
        return x

    def step(
        self,
        term: DenoiserTermLike,
        t0: Tensor,
        t1: Tensor,
        x: Tensor,
        state: PCState,
        noise: Tensor | None,
    ) -> tuple[Tensor, PCState]:
        """One PC step: predictor ``t0 -> t1`` and ``n_steps`` Langevin steps after it (at
        ``t1``) or before it (at ``t0``)."""
        z = require_noise(noise, "PredictorCorrector")
        draws = self._predictor_draws + self._corrector_steps
        zs = list(z.unbind(0)) if draws > 1 else [z]
        k = self._predictor_draws
        pred_noise: Tensor | None = None
        if k == 1:
            pred_noise = zs[0]
        elif k > 1:
            pred_noise = torch.stack(zs[:k])
        corr = zs[k:] if self._corrector_steps else []
        i, tab = state.index, state.table
        if self.corrector_position == "before":
            x = self._correct(term, x, i, tab, corr)
        p, pstate = self._predictor, state.predictor
        if p is not None:
            x, pstate = p.step(_adapt(term, type(p).term_type), t0, t1, x, pstate, pred_noise)
        if self.corrector_position == "after":
            x = self._correct(term, x, i, tab, corr)
        return x, PCState(i + 1, pstate, tab)


BUILTINS: dict[str, type[Solver[Any, Any]]] = {"pc": PredictorCorrector}
"""Registry names of this module's solvers (wired into :data:`solvers.SOLVERS` by
``solvers/registry.py``)."""
