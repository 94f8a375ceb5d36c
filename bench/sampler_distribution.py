"""Stochastic samplers: distributional error against NFE, ours and peers.

Usage (from the repository root; docs/benchmarks.md has the results and the details)::

    python bench/sampler_distribution.py            # full run: VP and EDM, 2-D and 64-D
    python bench/sampler_distribution.py --quick    # 2-D only, NFE 10/50, 400 samples
    python bench/sampler_distribution.py --rerender bench/results/sampler_distribution.json
    python bench/sampler_distribution.py --check-3m  # diffusers' 3M SDE: coefficient or grid?

What is measured. For every stochastic method of ``sd.solvers_available()`` (and three
probability-flow ODE methods, ``dpmpp_2m``, ``unipc`` and ``plms``, for the ODE-vs-SDE
comparison) and for the peers' stochastic samplers (diffusers schedulers and k-diffusion
samplers, wrapped below), on the Gaussian-mixture problems of ``bench/sampler_accuracy.py``
(2-D and 64-D, under the discrete DDPM chain as a VP SDE and under EDM), at budgets NFE in
{10, 20, 50, 100, 200} (64-D: up to 50): the distance between the generated sample and an
*exact* sample of the same size, drawn independently of the samplers' noise:

* the target is the data distribution diffused to the samplers' end time ``t_min``,
  ``p_{t_min}``: ``alpha(t_min) x0 + sigma(t_min) eps`` with ``x0 = gmm.sample(n)`` (every
  sampler ends at ``t_min`` with a noisy step; none "denoises to zero");
* sliced 2-Wasserstein distance ``sd.sliced_wasserstein`` (256 directions, the same
  directions for every sampler of a repeat) and kernel MMD ``sd.mmd`` with one fixed length
  ``scale`` per problem (the median pairwise distance of a 2,000-point exact sample of
  ``p_{t_min}``; bandwidths 0.05, 0.2 and 1 times it: the narrow kernels see the shape of
  the mixture's components, the wide one the weights), so values are comparable across samplers;
* the **noise floor**: the same two distances between two independent exact samples of the
  same size (``--floor-pairs`` pairs); a sampler within the floor's spread is
  indistinguishable from exact sampling at this sample size;
* ``--repeats`` independent repeats (new initial noise ``x_T``, new sampler noise, new exact
  sample, new directions); tables give the mean and the standard deviation over repeats.

Within a repeat every sampler starts from the same ``x_T`` (VP: ``N(0, I)`` at ``t = T``;
EDM: ``N(0, 80^2 I)``), mapped into the peer's own variables where it holds another state
(``x / alpha`` for the sigma-space schedulers and k-diffusion under VP), and gets its noise
from a ``torch.Generator`` seeded with the same seed (common random numbers; the samplers
consume the stream differently, so their noise is not the same).

Our methods run through ``sd.sample(oracle, method, nfe, x_init=x_T, generator=g)`` on their
default grids (the library as a user gets it). Under EDM the methods whose default grid is
``"uniform"`` (uniform in sigma from 80 to 0.002: most steps at high noise) also run on the
``"karras"`` grid (rows ``<method>@karras``). The adaptive methods (``adaptive_sde``,
``sde_srk_adaptive``) run at a few tolerances (rows ``<method>(tol=...)``) and are plotted at
the NFE they used.

How the peers are wrapped (every peer gets the exact model output of its own
parametrisation for exactly the state it holds; NFE = model calls, counted here):

* **diffusers, VP** (the chain ``sd.VPSDE.from_discrete(alphas_cumprod=...)`` built from the
  scheduler's own table, as in ``bench/peer_samplers.py``; linear betas 1e-4..0.02, N = 1000,
  ``timestep_spacing="trailing"``: every scheduler starts at n = 999, t = T):

  - ``EulerAncestralDiscreteScheduler``: sigma-space (state ``x / alpha`` at ``sigma_d =
    sigma / alpha``; model input ``scale_model_input`` = the VP state; we return
    ``oracle.eps`` at the t of the scheduler's current ``sigma_d``). Its last sigma (0,
    which makes the last step a jump to the x0 prediction) is replaced by the chain's
    ``sigma_d`` at n = 0, so the last step is an ancestral step to ``t_min`` with noise.
    Starts from ``x_T sqrt(1 + sigma_d,0^2)``, the result is divided by ``sqrt(1 +
    sigma_d,min^2)``. Noise: ``step(..., generator=g)``. n steps for NFE n.
  - ``DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=2 or 3,
    final_sigmas_type="sigma_min")``: VP-space (state x, model eps at the integer timestep n,
    ``t = (n + 1) / N``); ends at n = 0 (t_min) with a noisy first-order step (and a
    lower-order final step below 15 steps, diffusers' default ``lower_order_final``); noise
    ``step(..., generator=g)``. n steps for NFE n.
  - ``DPMSolverSDEScheduler`` (k-diffusion's ``sample_dpmpp_sde`` ported: two-stage
    DPM-Solver++ SDE with a midpoint in ``-log sigma``, 2 calls per step): sigma-space like
    EulerAncestral. diffusers lays out ``[s_0, s_1, s_1, ..., s_{n-1}, s_{n-1}, 0]`` and ends
    with one Euler step to sigma = 0; the wrapper lays out the same table over the n-step
    trailing grid *plus* the chain's ``sigma_d`` at n = 0, ``[s_0, s_1, s_1, ..., s_{n-1},
    s_{n-1}, s_min]``, so its n two-stage steps end at ``t_min`` with noise (no Euler step to
    0). Its noise: :class:`BrownianNoise` on ``g`` set as its ``noise_sampler`` (the two
    stages of a step query overlapping intervals of one Brownian path, as with its own
    ``BrownianTreeNoiseSampler``, which would cost ~10x the whole solve in 64-D). n = NFE // 2
    steps.

* **diffusers, EDM**: ``EDMDPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++",
  solver_order=2 or 3)``, sigma in [0.002, 80], Karras rho = 7, sigma_data = 0.5, the n-step
  Karras grid from 80 to 0.002 (``set_timesteps(n + 1)`` with ``final_sigmas_type="sigma_min"``
  truncated to n steps, as in ``bench/peer_samplers.py``); model output ``F = (D - c_skip x) /
  c_out`` with ``D = oracle.x0``; noise ``step(..., generator=g)``. (Order 3 has no
  ``sde-dpmsolver++`` branch in diffusers' third-order update: it fails, and is reported as
  failed.) diffusers has no EDM ancestral or DPMSolverSDE scheduler: ``EulerAncestral`` and
  ``DPMSolverSDE`` are defined on a DDPM beta table.

* **k-diffusion** (``k_diffusion/sampling.py`` loaded as in ``bench/sampler_accuracy.py``):
  ``sample_euler_ancestral(eta=1)``, ``sample_dpmpp_2m_sde(eta=1, solver_type="midpoint")``,
  ``sample_dpmpp_3m_sde(eta=1)``, ``sample_dpmpp_sde(eta=1, r=1/2)`` and ``sample_heun`` with
  ``s_churn=40, s_tmin=0.05, s_tmax=50`` (EDM Algorithm 2, our ``edm_stochastic`` defaults).
  Denoiser ``D(x, sigma)``: EDM ``oracle.x0(x, sigma)``; VP in EDM variables (``x / alpha``
  at ``sigma / alpha``, like its ``DiscreteEpsDDPMDenoiser``) at the exact continuous t. Grid:
  ``get_sigmas_karras(n + 1, s(t_min), s(T))`` *without* the appended 0, so no sampler takes
  its "denoise to 0" branch: every step, the last included, is a noisy step ending at
  ``t_min``. Noise: ``noise_sampler=BrownianNoise(g)``, a Brownian path in sigma sampled
  lazily and exactly from ``g`` (the draws of ``torch.randn(x.shape, generator=g)``, one per
  step, for the one-query-per-step samplers; overlapping queries of ``sample_dpmpp_sde`` see
  one path: the same law as their default torchsde ``BrownianTreeNoiseSampler``, at a
  fraction of its cost).
  ``sample_heun`` draws from the global RNG (``torch.randn_like``; no ``noise_sampler``
  argument), so it runs inside ``torch.random.fork_rng()`` after ``torch.manual_seed`` of an
  integer drawn from ``g``. NFE: n for n steps (euler_ancestral, 2m/3m_sde), 2n (dpmpp_sde,
  heun: every step is two-stage because the grid never reaches 0).

Sizes (full run): 2-D: 1,000 samples, 3 repeats, NFE {10, 20, 50, 100, 200}; 64-D: 400
samples, 2 repeats, NFE {10, 20, 50} (the 64-D oracle costs ~10 ms per call; in a trial run
to 200 NFE every sampler that converges read an MMD of 0 at 100 and 200), and in 64-D
``sde_milstein`` (identical to ``sde_euler`` for the additive noise of every reverse
diffusion) and ``sde_reversible_heun`` (unstable on these stiff problems: diverges in 2-D at
every budget) are left out, the EDM uniform-grid methods run on ``"karras"`` only, and the adaptive
methods at one tolerance. ``--quick``: 2-D, 400 samples, 2 repeats, NFE {10, 50}, one
tolerance per adaptive method.

Outputs (``--out``, default ``bench/results``): ``sampler_distribution.csv`` (one row per
setting, method and budget: means and spreads over repeats), ``.json`` (every repeat, the
floors, the set-up) and ``.md`` (tables); one plot per setting (``--img``, default
``docs/img``): ``sampler_distribution_<vp|edm>_<2d|64d>.png``, log-log distance against NFE
with the noise floor drawn. ``--quick`` writes ``sampler_distribution_quick.*`` and its plots
into ``--out``; ``--check-3m`` writes ``sampler_distribution_3m_check.md`` (see
:func:`check_3m`).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import time
import types
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

# run from a checkout: the repository root (scoresde, solvers) and bench/ (shared set-up)
_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE.parent), str(_HERE)]

import peer_samplers as peers  # noqa: E402
from sampler_accuracy import environment, make_gmm  # noqa: E402

import scoresde as sd  # noqa: E402
import solvers  # noqa: E402
from solvers import append_dims  # noqa: E402

_F64 = torch.float64
FULL_NFES = (10, 20, 50, 100, 200)
NFES_64D = (10, 20, 50)
QUICK_NFES = (10, 50)
ODE_METHODS = ("dpmpp_2m", "unipc", "plms")
# tolerances (rtol = atol) of the adaptive methods, loosest first: 2-D, 64-D
ADAPTIVE_TOLS: dict[str, tuple[float, ...]] = {
    "adaptive_sde": (0.2, 0.1, 0.05),
    "sde_srk_adaptive": (0.1, 0.03, 0.01),
}
ADAPTIVE_TOLS_SMALL: dict[str, tuple[float, ...]] = {  # 64-D and --quick
    "adaptive_sde": (0.1,),
    "sde_srk_adaptive": (0.1,),
}
SKIP_64D = ("sde_milstein", "sde_reversible_heun")  # = sde_euler here; diverges
ADAPTIVE_CAP = 2000  # NFE cap of an adaptive solve (AdaptiveStepError above it)
N_PROJECTIONS = 256
MMD_BANDWIDTHS = (0.05, 0.2, 1.0)
EDM_CHURN = {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0}


# =========================================================================== problems


@dataclass
class Setting:
    """One problem: a mixture, an SDE and its oracle, the sample size and the MMD scale."""

    name: str  # e.g. "vp_2d"
    kind: str  # "vp" | "edm"
    dim: int
    n: int
    gmm: sd.GaussianMixture
    sde: Any
    oracle: Any
    mmd_scale: float = 1.0

    def _at(self, t: float) -> tuple[float, float]:
        tt = torch.tensor(t, dtype=_F64)
        return float(self.sde.alpha(tt)), float(self.sde.sigma(tt))

    @property
    def alpha_t(self) -> float:
        return self._at(self.sde.T)[0]

    @property
    def alpha_min(self) -> float:
        return self._at(self.sde.t_min)[0]

    def exact(self, n: int, generator: torch.Generator) -> Tensor:
        """n exact samples of ``p_{t_min}``: ``alpha x0 + sigma eps``, ``x0 = gmm.sample``."""
        alpha, sigma = self._at(self.sde.t_min)
        x0 = self.gmm.sample(n, generator, dtype=_F64)
        return alpha * x0 + sigma * torch.randn(x0.shape, generator=generator, dtype=_F64)

    def prior(self, n: int, generator: torch.Generator) -> Tensor:
        return self.sde.prior_sample((n, self.dim), generator, dtype=_F64)


def make_setting(kind: str, dim: int, n: int, seed: int) -> Setting:
    """The mixture of ``bench/sampler_accuracy.py`` (same seed) under VP or EDM."""
    gmm = make_gmm(dim, seed)
    sde = peers.diffusers_chain_sde() if kind == "vp" else sd.EDMSDE()
    s = Setting(f"{kind}_{dim}d", kind, dim, n, gmm, sde, gmm.score_model(sde))
    # one kernel length per problem: the median pairwise distance of an exact sample
    y = s.exact(2000, torch.Generator().manual_seed(10_000 + seed))
    s.mmd_scale = sd.metrics.median_distance(y)
    return s


# =========================================================================== samplers

Run = Callable[[Setting, Tensor, int, torch.Generator], tuple[Tensor, int]]


@dataclass(frozen=True)
class Sampler:
    """A sampler to benchmark.

    Attributes:
        name: display name (our registry name, ``<name>@karras``, ``<name>(tol=...)`` or
            ``library:sampler``).
        family: ``"ours"``, ``"diffusers"`` or ``"k-diffusion"``.
        kind: ``"sde"`` or ``"ode"``.
        shared: our registry name of the same algorithm (``""`` if none).
        note: how it differs from ours, or how it is configured.
        run: ``(setting, x_T, budget, generator) -> (x at t_min, NFE used)``.
        tol: rtol = atol of an adaptive method (then ``budget`` is ignored: one run per
            repeat), else None.
    """

    name: str
    family: str
    kind: str
    shared: str
    note: str
    run: Run
    tol: float | None = None


def _ours(
    method: str, grid: str | Tensor | None, s: Setting, x_t: Tensor, nfe: int, g: torch.Generator
):
    res = sd.sample(s.oracle, method, nfe, x_init=x_t, grid=grid, generator=g)
    return res.x, res.nfe


def _ours_adaptive(name: str, tol: float, s: Setting, x_t: Tensor, nfe: int, g: torch.Generator):
    solver = solvers.get_solver(name, rtol=tol, atol=tol)
    res = sd.sample(s.oracle, solver, ADAPTIVE_CAP, x_init=x_t, generator=g)
    return res.x, res.nfe


def our_samplers(setting: Setting, quick: bool = False) -> list[Sampler]:
    """Every stochastic method of the registry (adaptive ones at several tolerances), the
    ODE methods of ``ODE_METHODS``, and under EDM the uniform-grid methods on ``karras`` too
    (64-D: ``karras`` only, without ``SKIP_64D``; 64-D and ``quick``: one tolerance)."""
    out: list[Sampler] = []
    big = setting.dim > 2
    tols = ADAPTIVE_TOLS_SMALL if big or quick else ADAPTIVE_TOLS
    for info in sd.solvers_available():
        name = info.name
        if info.kind != "sde" or (big and name in SKIP_64D):
            continue
        cls = solvers.SOLVERS[name]
        if cls.adaptive:
            for tol in tols.get(name, ()):
                out.append(
                    Sampler(
                        f"{name}(tol={tol:g})",
                        "ours",
                        "sde",
                        name,
                        f"rtol = atol = {tol:g}, NFE cap {ADAPTIVE_CAP}",
                        partial(_ours_adaptive, name, tol),
                        tol,
                    )
                )
            continue
        uniform_on_edm = setting.kind == "edm" and cls.default_grid == "uniform"
        if not (uniform_on_edm and big):
            out.append(Sampler(name, "ours", "sde", name, "", partial(_ours, name, None)))
        if uniform_on_edm:
            out.append(
                Sampler(
                    f"{name}@karras",
                    "ours",
                    "sde",
                    name,
                    'grid="karras" instead of the default "uniform"',
                    partial(_ours, name, "karras"),
                )
            )
    for name in ODE_METHODS:
        out.append(Sampler(name, "ours", "ode", name, "PF-ODE", partial(_ours, name, None)))
    return out


# --------------------------------------------------------------------------- diffusers, VP


def _vp_config() -> dict[str, Any]:
    return {
        "num_train_timesteps": peers.N_TRAIN,
        "beta_start": peers.BETA_START,
        "beta_end": peers.BETA_END,
        "beta_schedule": "linear",
        "timestep_spacing": "trailing",
    }


def _t_of_sigma_d(sde: Any, sigma_d: float | Tensor) -> Tensor:
    """Our time t at which ``sigma / alpha == sigma_d``."""
    s = torch.as_tensor(sigma_d, dtype=_F64)
    return sde.t_from_log_snr(-2.0 * torch.log(s)).to(_F64)


def _sigma_d_min(sched: Any) -> Tensor:
    """The chain's ``sigma / alpha`` at n = 0 (our t_min), in the scheduler's float32."""
    ac0 = sched.alphas_cumprod[0]
    return ((1 - ac0) / ac0) ** 0.5


def _third_order_sde_half_weight(
    self: Any, model_output_list: list[Tensor], *args: Any, sample: Tensor, noise: Tensor, **kw: Any
) -> Tensor:
    """diffusers' third-order ``sde-dpmsolver++`` update with the second-difference
    coefficient ``(1 - e^{-2h} - 2h) / (2h)^2 + 1/2`` (-> h/3, k-diffusion's ``phi_3`` weight)
    instead of diffusers' ``... - 1/2`` (-> -1): for ``--check-3m`` only. Everything else as
    diffusers computes it (its float32 sigmas, its D1/D2)."""
    i = self.step_index
    sig = [self.sigmas[i + 1], self.sigmas[i], self.sigmas[i - 1], self.sigmas[i - 2]]
    a_s = [self._sigma_to_alpha_sigma_t(v) for v in sig]
    lam = [torch.log(a) - torch.log(v) for a, v in a_s]
    m0, m1, m2 = model_output_list[-1], model_output_list[-2], model_output_list[-3]
    h, h_0, h_1 = lam[0] - lam[1], lam[1] - lam[2], lam[2] - lam[3]
    r0, r1 = h_0 / h, h_1 / h
    d1_0, d1_1 = (m0 - m1) / r0, (m1 - m2) / r1
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    (alpha_t, sigma_t), sigma_s0 = a_s[0], a_s[1][1]
    em = torch.exp(-2.0 * h)
    return (
        (sigma_t / sigma_s0 * torch.exp(-h)) * sample
        + (alpha_t * (1.0 - em)) * m0
        + (alpha_t * ((1.0 - em) / (-2.0 * h) + 1.0)) * d1
        + (alpha_t * ((1.0 - em - 2.0 * h) / (2.0 * h) ** 2 + 0.5)) * d2
        + sigma_t * torch.sqrt(1.0 - em) * noise
    )


def _diffusers_vp_space(order: int, half_weight_d2: bool = False) -> Run:
    """DPMSolverMultistep with sde-dpmsolver++: VP state, eps at integer timesteps
    (``half_weight_d2``: the third-order update of :func:`_third_order_sde_half_weight`)."""

    def run(s: Setting, x_t: Tensor, nfe: int, g: torch.Generator) -> tuple[Tensor, int]:
        from diffusers import DPMSolverMultistepScheduler

        sched = DPMSolverMultistepScheduler(
            **_vp_config(),
            algorithm_type="sde-dpmsolver++",
            solver_order=order,
            final_sigmas_type="sigma_min",
        )
        if half_weight_d2:
            sched.multistep_dpm_solver_third_order_update = types.MethodType(
                _third_order_sde_half_weight, sched
            )
        sched.set_timesteps(nfe)
        x, calls = x_t.clone(), 0
        for step_t in sched.timesteps:
            n = int(step_t)
            eps = s.oracle.eps(sched.scale_model_input(x, step_t), (n + 1) / peers.N_TRAIN)
            calls += 1
            x = sched.step(eps, step_t, x, generator=g).prev_sample
        return x, calls

    return run


def _diffusers_trailing_grid(nfe: int) -> Tensor:
    """The times t = (n + 1) / N of DPMSolverMultistep's trailing timesteps, then t_min."""
    from diffusers import DPMSolverMultistepScheduler

    sched = DPMSolverMultistepScheduler(**_vp_config(), final_sigmas_type="sigma_min")
    sched.set_timesteps(nfe)
    n_train = peers.N_TRAIN
    return torch.tensor(
        [(float(n) + 1) / n_train for n in sched.timesteps] + [1.0 / n_train], dtype=_F64
    )


def check_3m(seed: int, nfes: tuple[int, ...], repeats: int, log: Callable[[str], None]) -> str:
    """``--check-3m``: is diffusers' DPMSolverMultistep(sde-dpmsolver++, 3) off because of its
    second-difference coefficient or because of its grid? VP 2-D problem, 1,000 samples:
    diffusers as is, diffusers with the ``+ 1/2`` coefficient, our ``dpmpp_3m_sde`` and
    ``dpmpp_2m_sde`` on diffusers' trailing grid and on their default ``logsnr`` grid.
    Returns a markdown table (mean ± std of the MMD and sliced W2 over ``repeats``)."""
    s = make_setting("vp", 2, 1000, seed + 2)
    runs: dict[str, Callable[[Tensor, int, torch.Generator], tuple[Tensor, int]]] = {
        "diffusers 3M SDE, as is": lambda x, n, g: _diffusers_vp_space(3)(s, x, n, g),
        "diffusers 3M SDE, D2 coefficient + 1/2": lambda x, n, g: _diffusers_vp_space(3, True)(
            s, x, n, g
        ),
    }
    for m in ("dpmpp_3m_sde", "dpmpp_2m_sde"):
        runs[f"ours {m}, diffusers' grid"] = partial(_ours_on_trailing, s, m)
        runs[f"ours {m}, logsnr grid"] = lambda x, n, g, m=m: _ours(m, None, s, x, n, g)
    cells: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for r in range(repeats):
        seeds = _seeds(seed, s.dim, r)
        x_t = s.prior(s.n, torch.Generator().manual_seed(seeds["x_t"]))
        y = s.exact(s.n, torch.Generator().manual_seed(seeds["ref"]))
        for label, fn in runs.items():
            for n in nfes:
                x, _ = fn(x_t, n, torch.Generator().manual_seed(seeds["noise"]))
                cells.setdefault((label, n), []).append(_distances(s, x, y, seeds["proj"]))
        log(f"check-3m: repeat {r + 1}/{repeats} done")

    def cell(vals: list[tuple[float, float]], k: int) -> str:
        v = [p[k] for p in vals]
        sd_ = f" ± {_fmt(statistics.stdev(v))}" if len(v) > 1 else ""
        return _fmt(statistics.fmean(v)) + sd_

    out = []
    for k, metric in ((1, "MMD"), (0, "sliced W2")):
        out += [
            f"{metric} (VP, 2-D, 1,000 samples, {repeats} repeats):",
            "",
            "| sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
            "|---|" + "---:|" * len(nfes),
        ]
        out += [
            f"| {label} | " + " | ".join(cell(cells[(label, n)], k) for n in nfes) + " |"
            for label in runs
        ]
        out.append("")
    return "\n".join(out)


def _ours_on_trailing(s: Setting, method: str, x_t: Tensor, nfe: int, g: torch.Generator):
    return _ours(method, _diffusers_trailing_grid(nfe), s, x_t, nfe, g)


def _diffusers_euler_ancestral(s: Setting, x_t: Tensor, nfe: int, g: torch.Generator):
    """EulerAncestralDiscrete in (x / alpha, sigma / alpha), last sigma = the chain's t_min."""
    from diffusers import EulerAncestralDiscreteScheduler

    sched = EulerAncestralDiscreteScheduler(**_vp_config())
    sched.set_timesteps(nfe)
    sched.sigmas[-1] = _sigma_d_min(sched)  # noisy step to t_min instead of a jump to x0
    sched.set_begin_index(0)
    sig = sched.sigmas.to(_F64)
    x, calls = x_t * math.sqrt(1.0 + float(sig[0]) ** 2), 0
    for step_t in sched.timesteps:
        inp = sched.scale_model_input(x, step_t)
        t = _t_of_sigma_d(s.sde, sched.sigmas[sched.step_index])
        calls += 1
        x = sched.step(s.oracle.eps(inp, t), step_t, x, generator=g).prev_sample
    return x / math.sqrt(1.0 + float(sig[-1]) ** 2), calls


def _diffusers_dpmsolver_sde(s: Setting, x_t: Tensor, nfe: int, g: torch.Generator):
    """DPMSolverSDE on the n-step trailing grid + t_min, n two-stage steps, no step to 0."""
    from diffusers import DPMSolverSDEScheduler

    n = nfe // 2
    sched = DPMSolverSDEScheduler(**_vp_config())
    sched.set_timesteps(n)
    # diffusers' table is [s_0, s_1, s_1, ..., s_{n-1}, s_{n-1}, 0] (the last pair: one Euler
    # call to sigma = 0); ours is the same layout over the points s_0..s_{n-1}, s_min
    pts = torch.cat([sched.sigmas[0::2][:n], _sigma_d_min(sched).reshape(1)])
    sched.sigmas = torch.cat(
        [pts[:1], pts[1:-1].repeat_interleave(2), pts[-1:], torch.zeros(1, dtype=pts.dtype)]
    )
    # the timesteps only drive the loop (2 calls per step); the model time comes from sigma
    ts = sched.timesteps
    sched.timesteps = torch.cat([ts[:1], ts[1:], ts[-1:]])[: 2 * n]
    assert len(sched.timesteps) == 2 * n
    sched.set_begin_index(0)
    x, calls = x_t * math.sqrt(1.0 + float(pts[0]) ** 2), 0
    sched.noise_sampler = BrownianNoise(x.shape, g, x.dtype)  # instead of its torchsde tree
    for step_t in sched.timesteps:
        inp = sched.scale_model_input(x, step_t)
        sig = (
            sched.sigmas[sched.step_index] if sched.state_in_first_order else sched.mid_point_sigma
        )
        calls += 1
        x = sched.step(s.oracle.eps(inp, _t_of_sigma_d(s.sde, sig)), step_t, x).prev_sample
    return x / math.sqrt(1.0 + float(pts[-1]) ** 2), calls


def diffusers_samplers(setting: Setting) -> list[Sampler]:
    if setting.kind == "vp":
        return [
            Sampler(
                "diffusers:EulerAncestral",
                "diffusers",
                "sde",
                "ancestral",
                "same algorithm (Euler ancestral in x / alpha, sigma / alpha = our ancestral "
                "step); trailing grid; the state is rounded to float32 in every step.",
                _diffusers_euler_ancestral,
            ),
            Sampler(
                "diffusers:DPMSolverMultistep(sde-dpmsolver++, 2)",
                "diffusers",
                "sde",
                "dpmpp_2m_sde",
                "same algorithm (midpoint, first-order last step below 15 steps); trailing "
                "grid; float32 state in every step.",
                _diffusers_vp_space(2),
            ),
            Sampler(
                "diffusers:DPMSolverMultistep(sde-dpmsolver++, 3)",
                "diffusers",
                "sde",
                "dpmpp_3m_sde",
                "NOT the same: diffusers' second-difference coefficient "
                "(1 - e^{-2h} - 2h)/(2h)^2 - 1/2 tends to -1 as h -> 0, ours (2h 2 phi_3(-2h)) "
                "to 0; trailing grid; float32 state.",
                _diffusers_vp_space(3),
            ),
            Sampler(
                "diffusers:DPMSolverSDE",
                "diffusers",
                "sde",
                "",
                "SDE-DPM-Solver++ 2S: two stages (r = 1/2) per step on one Brownian path "
                "(BrownianNoise); no counterpart among ours.",
                _diffusers_dpmsolver_sde,
            ),
        ]
    return [
        Sampler(
            f"diffusers:EDMDPMSolverMultistep(sde-dpmsolver++, {k})",
            "diffusers",
            "sde",
            f"dpmpp_{k}m_sde",
            "same algorithm as ours on the Karras grid"
            if k == 2
            else "diffusers' third-order update has no sde-dpmsolver++ branch",
            _diffusers_edm(k),
        )
        for k in (2, 3)
    ]


def _diffusers_edm(order: int) -> Run:
    def run(s: Setting, x_t: Tensor, nfe: int, g: torch.Generator) -> tuple[Tensor, int]:
        from diffusers import EDMDPMSolverMultistepScheduler

        sched = EDMDPMSolverMultistepScheduler(
            sigma_min=s.sde.t_min,
            sigma_max=s.sde.T,
            sigma_data=peers.EDM_SIGMA_DATA,
            final_sigmas_type="sigma_min",
            algorithm_type="sde-dpmsolver++",
            solver_order=order,
        )
        sched.set_timesteps(nfe + 1)
        # the Karras grid of nfe steps from sigma_max to sigma_min, no wasted last call
        sched.timesteps = sched.timesteps[:nfe]
        sched.sigmas = sched.sigmas[: nfe + 1]
        sched.num_inference_steps = nfe
        x, calls = x_t.clone(), 0
        for step_t in sched.timesteps:
            sched.scale_model_input(x, step_t)  # sets the step index; we use the raw state
            sigma = sched.sigmas[sched.step_index]
            den = s.oracle.x0(x, float(sigma))
            skip_x = sched.precondition_outputs(x, torch.zeros_like(x), sigma)
            c_out = sched.precondition_outputs(torch.zeros_like(x), torch.ones_like(x), sigma)
            calls += 1
            x = sched.step((den - skip_x) / c_out, step_t, x, generator=g).prev_sample
        return x, calls

    return run


# --------------------------------------------------------------------------- noise


class BrownianNoise:
    """A Brownian path in sigma, sampled lazily and exactly from a generator: the
    ``noise_sampler(sigma, sigma_next)`` of k-diffusion and diffusers' DPMSolverSDE.

    Returns ``(W(sigma_next) - W(sigma)) / sqrt(|sigma_next - sigma|)``. The path is known at
    the times queried so far; a new time beyond them gets an independent Gaussian increment, a
    time between two known ones a Brownian-bridge draw (Levy's construction), so overlapping
    queries (the two stages of ``sample_dpmpp_sde``) see one path, as with their
    ``BrownianTreeNoiseSampler``. Queries on disjoint consecutive intervals (one per step)
    return ``torch.randn(shape, generator=g)``, draw after draw (up to rounding). The
    torchsde tree they use by default costs ~10x a whole 64-D solve here; this costs one
    draw per new time.
    """

    def __init__(self, shape: torch.Size, generator: torch.Generator, dtype: torch.dtype) -> None:
        self.shape, self.g, self.dtype = shape, generator, dtype
        self.known: dict[float, Tensor] = {}

    def _z(self) -> Tensor:
        return torch.randn(self.shape, generator=self.g, dtype=self.dtype)

    def _at(self, u: float) -> Tensor:
        if u in self.known:
            return self.known[u]
        if not self.known:
            w = torch.zeros(self.shape, dtype=self.dtype)
        else:
            lo = [v for v in self.known if v < u]
            hi = [v for v in self.known if v > u]
            if not lo or not hi:  # outside the known range: an independent increment
                v = max(lo) if lo else min(hi)
                w = self.known[v] + math.sqrt(abs(u - v)) * self._z()
            else:  # between two known times: the Brownian bridge
                a, b = max(lo), min(hi)
                wa, wb = self.known[a], self.known[b]
                mean = wa + (u - a) / (b - a) * (wb - wa)
                w = mean + math.sqrt((u - a) * (b - u) / (b - a)) * self._z()
        self.known[u] = w
        return w

    def __call__(self, sigma: float | Tensor, sigma_next: float | Tensor) -> Tensor:
        a, b = float(sigma), float(sigma_next)
        w0 = self._at(a)
        return (self._at(b) - w0) / math.sqrt(abs(b - a))


# --------------------------------------------------------------------------- k-diffusion


class _Denoiser:
    """``D(x, sigma)`` in EDM variables: EDM ``oracle.x0(x, sigma)``; VP ``x = x_VP / alpha``,
    ``sigma = sigma_VP / alpha`` at the exact continuous t; counts its calls."""

    def __init__(self, s: Setting) -> None:
        self.s, self.calls = s, 0

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        self.calls += 1
        sig = sigma.to(_F64)
        if self.s.kind != "vp":
            return self.s.oracle.x0(x, sig)
        t = _t_of_sigma_d(self.s.sde, sig)
        alpha = (1.0 / torch.sqrt(1.0 + sig**2)).to(x.dtype)
        return self.s.oracle.x0(x * append_dims(alpha, x.ndim), t)


def _k_sigmas(kd: Any, s: Setting, n: int) -> Tensor:
    """The n-step Karras grid from s(T) to s(t_min), s = sigma / alpha (no appended 0)."""
    s_min, s_max = peers.edm_variables(s.sde)
    return kd.get_sigmas_karras(n + 1, s_min, s_max, device="cpu").to(_F64)[:-1]


def _k_run(kd: Any, fn: str, two_stage: bool, *, global_rng: bool = False, **kw: Any) -> Run:
    """A k-diffusion sampler on the Karras grid; noise from :class:`BrownianNoise` on ``g``
    (``global_rng``: the sampler draws from the global RNG, seeded from ``g``)."""

    def run(s: Setting, x_t: Tensor, nfe: int, g: torch.Generator) -> tuple[Tensor, int]:
        n = nfe // 2 if two_stage else nfe
        sigmas = _k_sigmas(kd, s, n)
        x = x_t / s.alpha_t
        den = _Denoiser(s)
        if global_rng:
            seed = int(torch.randint(0, 2**62, (1,), generator=g))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                out = getattr(kd, fn)(den, x, sigmas, disable=True, **kw)
        else:
            noise = BrownianNoise(x.shape, g, x.dtype)
            out = getattr(kd, fn)(den, x, sigmas, disable=True, noise_sampler=noise, **kw)
        return out * s.alpha_min, den.calls

    return run


def k_diffusion_samplers(kd: Any | None) -> list[Sampler]:
    if kd is None:
        return []
    return [
        Sampler(
            "k-diffusion:euler_ancestral",
            "k-diffusion",
            "sde",
            "ancestral",
            "same algorithm as our ancestral (eta = 1); Karras grid.",
            _k_run(kd, "sample_euler_ancestral", False, eta=1.0),
        ),
        Sampler(
            "k-diffusion:dpmpp_2m_sde",
            "k-diffusion",
            "sde",
            "dpmpp_2m_sde",
            "same algorithm (eta = 1, midpoint) without the first-order last step; Karras grid.",
            _k_run(kd, "sample_dpmpp_2m_sde", False, eta=1.0),
        ),
        Sampler(
            "k-diffusion:dpmpp_3m_sde",
            "k-diffusion",
            "sde",
            "dpmpp_3m_sde",
            "eta = 1; weights the second difference by half of ours (h phi_3 form); no "
            "lower-order last steps; Karras grid.",
            _k_run(kd, "sample_dpmpp_3m_sde", False, eta=1.0),
        ),
        Sampler(
            "k-diffusion:dpmpp_sde",
            "k-diffusion",
            "sde",
            "",
            "SDE-DPM-Solver++ 2S: two stages (r = 1/2) per step on one Brownian path "
            "(BrownianNoise; = diffusers' DPMSolverSDE); Karras grid.",
            _k_run(kd, "sample_dpmpp_sde", True, eta=1.0),
        ),
        Sampler(
            "k-diffusion:heun(churn)",
            "k-diffusion",
            "sde",
            "edm_stochastic",
            "EDM Algorithm 2 (S_churn 40, S_tmin 0.05, S_tmax 50), every step Heun (2n calls; "
            "ours: Euler last step, 2n - 1); Karras grid.",
            _k_run(kd, "sample_heun", True, global_rng=True, **EDM_CHURN),
        ),
    ]


# =========================================================================== measuring


@dataclass(frozen=True)
class Measurement:
    """One sampler at one budget in one repeat."""

    setting: str
    method: str
    family: str
    kind: str
    shared: str
    budget: int  # 0 for adaptive methods (their NFE is chosen by the tolerance)
    tol: float  # NaN unless adaptive
    repeat: int
    nfe: int
    sw2: float
    mmd: float
    seconds: float
    note: str = ""


@dataclass(frozen=True)
class Summary:
    """One sampler at one budget: mean and standard deviation over the repeats."""

    setting: str
    method: str
    family: str
    kind: str
    shared: str
    budget: int
    tol: float
    repeats: int  # successful repeats
    nfe: float  # mean NFE used
    sw2_mean: float
    sw2_std: float
    mmd_mean: float
    mmd_std: float
    sw2_at_floor: bool  # mean <= floor mean + 2 floor std / sqrt(repeats)
    mmd_at_floor: bool
    seconds: float  # median wall time of one solve
    note: str = ""


@dataclass(frozen=True)
class Floor:
    """The distances between two independent exact samples of size n."""

    setting: str
    n: int
    pairs: int
    sw2_mean: float
    sw2_std: float
    mmd_mean: float
    mmd_std: float
    mmd_scale: float


def _distances(s: Setting, x: Tensor, y: Tensor, proj_seed: int) -> tuple[float, float]:
    g = torch.Generator().manual_seed(proj_seed)
    sw = sd.sliced_wasserstein(x, y, n_projections=N_PROJECTIONS, generator=g)
    return sw, sd.mmd(x, y, bandwidths=MMD_BANDWIDTHS, scale=s.mmd_scale)


def _seeds(seed: int, dim: int, r: int) -> dict[str, int]:
    base = 1_000_000 * seed + 10_000 * dim + r
    return {"x_t": base + 1000, "noise": base + 2000, "ref": base + 3000, "proj": base + 4000}


def floor(s: Setting, pairs: int, seed: int) -> Floor:
    """Distances between pairs of independent exact samples; pair r < repeats uses the same
    reference sample and directions as repeat r of the samplers."""
    sw, mm = [], []
    for r in range(pairs):
        sd_ = _seeds(seed, s.dim, r)
        y = s.exact(s.n, torch.Generator().manual_seed(sd_["ref"]))
        y2 = s.exact(s.n, torch.Generator().manual_seed(sd_["ref"] + 500))
        a, b = _distances(s, y2, y, sd_["proj"])
        sw.append(a)
        mm.append(b)
    return Floor(
        s.name,
        s.n,
        pairs,
        statistics.fmean(sw),
        statistics.stdev(sw) if pairs > 1 else math.nan,
        statistics.fmean(mm),
        statistics.stdev(mm) if pairs > 1 else math.nan,
        s.mmd_scale,
    )


def run_setting(
    s: Setting,
    samplers: list[Sampler],
    nfes: tuple[int, ...],
    repeats: int,
    seed: int,
    log: Callable[[str], None],
    progress: bool = True,
) -> list[Measurement]:
    """Every sampler at every budget (adaptive: once per tolerance) in every repeat."""
    from tqdm.auto import tqdm

    out: list[Measurement] = []
    jobs = [(sp, b) for sp in samplers for b in ((0,) if sp.tol is not None else nfes)]
    bar = tqdm(total=repeats * len(jobs), desc=s.name, disable=not progress, leave=False)
    for r in range(repeats):
        seeds = _seeds(seed, s.dim, r)
        x_t = s.prior(s.n, torch.Generator().manual_seed(seeds["x_t"]))
        y = s.exact(s.n, torch.Generator().manual_seed(seeds["ref"]))
        for sp, budget in jobs:
            g = torch.Generator().manual_seed(seeds["noise"])
            t0 = time.perf_counter()
            try:
                x, nfe = sp.run(s, x_t, budget, g)
                secs = time.perf_counter() - t0
                if sp.tol is None and nfe > budget:
                    raise AssertionError(f"{sp.name} used {nfe} > {budget} evaluations")
                if not bool(torch.isfinite(x).all()):
                    raise FloatingPointError("non-finite samples")
                sw, mm = _distances(s, x.to(_F64), y, seeds["proj"])
                note = ""
            except Exception as err:  # noqa: BLE001 - a failing sampler is a result
                secs, nfe, sw, mm = time.perf_counter() - t0, 0, math.nan, math.nan
                note = f"failed: {type(err).__name__}: {err}"[:160]
            out.append(
                Measurement(
                    s.name,
                    sp.name,
                    sp.family,
                    sp.kind,
                    sp.shared,
                    budget,
                    math.nan if sp.tol is None else sp.tol,
                    r,
                    nfe,
                    sw,
                    mm,
                    secs,
                    note,
                )
            )
            bar.update()
        log(f"  {s.name}: repeat {r + 1}/{repeats} done")
    bar.close()
    return out


def summarise(
    ms: list[Measurement], floors: dict[str, Floor], notes: dict[str, str]
) -> list[Summary]:
    groups: dict[tuple[str, str, int, float], list[Measurement]] = {}
    for m in ms:
        key = (m.setting, m.method, m.budget, m.tol)
        groups.setdefault(key, []).append(m)
    out = []
    for (setting, method, budget, tol), grp in groups.items():
        ok = [m for m in grp if math.isfinite(m.sw2)]
        first = grp[0]
        fl = floors[setting]
        fails = sorted({m.note for m in grp if m.note})
        note = "; ".join([notes.get(method, "")] + fails).strip("; ")

        def mean_std(vals: list[float]) -> tuple[float, float]:
            if not vals:
                return math.nan, math.nan
            return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else math.nan

        sw_m, sw_s = mean_std([m.sw2 for m in ok])
        mm_m, mm_s = mean_std([m.mmd for m in ok])
        k = max(len(ok), 1)
        out.append(
            Summary(
                setting,
                method,
                first.family,
                first.kind,
                first.shared,
                budget,
                tol,
                len(ok),
                statistics.fmean([m.nfe for m in ok]) if ok else math.nan,
                sw_m,
                sw_s,
                mm_m,
                mm_s,
                bool(sw_m <= fl.sw2_mean + 2 * fl.sw2_std / math.sqrt(k)),
                bool(mm_m <= fl.mmd_mean + 2 * fl.mmd_std / math.sqrt(k)),
                statistics.median([m.seconds for m in ok]) if ok else math.nan,
                note,
            )
        )
    return out


# =========================================================================== reporting


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return "–"
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def table(rows: list[Summary], setting: str, nfes: tuple[int, ...], metric: str) -> str:
    """Rows = samplers, columns = budgets; cells ``mean ± std`` (``*``: within the floor)."""
    sel = [r for r in rows if r.setting == setting and r.budget > 0]
    methods: list[str] = []
    for r in sel:
        if r.method not in methods:
            methods.append(r.method)
    cell = {(r.method, r.budget): r for r in sel}
    out = [
        "| sampler | kind | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
        "|---|---|" + "---:|" * len(nfes),
    ]
    for m in methods:
        cells = []
        for n in nfes:
            r = cell.get((m, n))
            if r is None or r.repeats == 0:
                cells.append("failed" if r is not None else "–")
                continue
            mean, std = getattr(r, f"{metric}_mean"), getattr(r, f"{metric}_std")
            txt = _fmt(mean) + (f" ± {_fmt(std)}" if math.isfinite(std) else "")
            if getattr(r, f"{metric}_at_floor"):
                txt += " *"
            if round(r.nfe) < n:
                txt += f" ({round(r.nfe)})"
            cells.append(txt)
        kind = next(r for r in sel if r.method == m)
        lib = "" if kind.family == "ours" else f"{kind.family}, "
        out.append(f"| {m} | {lib}{kind.kind} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def adaptive_table(rows: list[Summary], setting: str) -> str:
    sel = [r for r in rows if r.setting == setting and r.budget == 0]
    out = ["| sampler | NFE used | sliced W2 | MMD |", "|---|---:|---:|---:|"]
    for r in sel:
        if r.repeats == 0:
            out.append(f"| {r.method} | failed | – | – |")
            continue
        out.append(
            f"| {r.method} | {r.nfe:.0f} | {_fmt(r.sw2_mean)} ± {_fmt(r.sw2_std)}"
            f"{' *' if r.sw2_at_floor else ''} | {_fmt(r.mmd_mean)} ± {_fmt(r.mmd_std)}"
            f"{' *' if r.mmd_at_floor else ''} |"
        )
    return "\n".join(out)


_GROUPS: dict[str, Callable[[Summary], bool]] = {
    "ode": lambda r: r.family == "ours" and r.kind == "ode",
    "sde": lambda r: r.family == "ours" and r.kind == "sde",
    "peer_sde": lambda r: r.family != "ours" and r.kind == "sde",
}


def _best(rows: list[Summary], group: str, metric: str) -> dict[str, Any] | None:
    """The row of ``group`` with the lowest mean of ``metric`` (None if there is none)."""
    sel = [r for r in rows if _GROUPS[group](r) and math.isfinite(getattr(r, f"{metric}_mean"))]
    if not sel:
        return None
    b = min(sel, key=lambda r: getattr(r, f"{metric}_mean"))
    return {
        "method": b.method,
        "mean": getattr(b, f"{metric}_mean"),
        "std": getattr(b, f"{metric}_std"),
        "at_floor": getattr(b, f"{metric}_at_floor"),
    }


def ode_vs_sde(rows: list[Summary], settings: dict[str, tuple[int, ...]]) -> list[dict]:
    """Best (lowest mean) ODE method of ours, best SDE method of ours and best peer SDE
    sampler at each budget (``settings``: name -> budgets), on both metrics."""
    out = []
    for s, nfes in settings.items():
        for n in nfes:
            at = [r for r in rows if r.setting == s and r.budget == n]
            for metric in ("sw2", "mmd"):
                entry: dict[str, Any] = {"setting": s, "budget": n, "metric": metric}
                for group in _GROUPS:
                    entry[group] = _best(at, group, metric)
                out.append(entry)
    return out


def ode_vs_sde_table(comp: list[dict], metric: str) -> str:
    out = [
        "| setting | NFE | best PF-ODE (ours) | best SDE (ours) | best SDE (peers) | SDE / ODE |",
        "|---|---:|---|---|---|---:|",
    ]

    def cell(e: dict | None) -> str:
        if e is None:
            return "–"
        std = f" ± {_fmt(e['std'])}" if math.isfinite(e["std"]) else ""
        return f"`{e['method']}` {_fmt(e['mean'])}{std}{' *' if e['at_floor'] else ''}"

    for e in comp:
        if e["metric"] != metric:
            continue
        # a ratio of two values within the floor is noise: shown only when one is above it
        ratio = (
            e["sde"]["mean"] / e["ode"]["mean"]
            if e["sde"] is not None
            and e["ode"] is not None
            and e["ode"]["mean"] > 0
            and not (e["sde"]["at_floor"] and e["ode"]["at_floor"])
            else math.nan
        )
        out.append(
            f"| {e['setting']} | {e['budget']} | {cell(e['ode'])} | {cell(e['sde'])} | "
            f"{cell(e['peer_sde'])} | {_fmt(ratio)} |"
        )
    return "\n".join(out)


_STYLE = {"ours": "-", "diffusers": "--", "k-diffusion": "-."}


def plot(rows: list[Summary], fl: Floor, path: Path, title: str) -> None:
    """Log-log distance vs NFE: sliced W2 (left) and MMD (right); top row our methods, bottom
    row the peers with our methods of the same algorithm and one PF-ODE method for reference.
    The noise floor is a grey band (mean ± 2 std, the mean as a line). Colour = algorithm (a
    peer takes the colour of our method with the same algorithm); line style: ours solid
    (``@karras`` variants thin), PF-ODE thick dotted, diffusers dashed, k-diffusion
    dash-dotted; adaptive methods are stars at the NFE they used. Values below the axis (an
    MMD estimate of 0: no difference detected) are drawn on its lower edge; values far above
    the floor (diverged samplers) are off the scale: see the tables."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = [r for r in rows if r.setting == fl.setting and r.repeats > 0]
    methods: list[str] = []
    for r in sel:
        if r.method not in methods:
            methods.append(r.method)
    first = {m: next(r for r in sel if r.method == m) for m in methods}
    keys: list[str] = []
    for m in methods:
        k = first[m].shared or m
        if k not in keys:
            keys.append(k)
    cmap = plt.get_cmap("tab20")
    colours = {k: cmap(i % 20) for i, k in enumerate(keys)}
    markers = "os^vD<>pPhX"
    peer_shared = {first[m].shared for m in methods if first[m].family != "ours"}
    top = [m for m in methods if first[m].family == "ours"]
    bottom = [m for m in methods if first[m].family != "ours"] + [
        m
        for m in methods
        if first[m].family == "ours"
        and first[m].budget > 0
        and (first[m].shared in peer_shared or m == ODE_METHODS[0])
    ]
    fig, axes = plt.subplots(2, 2, figsize=(18, 14), sharex=True)
    for row, names in ((0, top), (1, bottom)):
        for col, metric, label, fm, fs in (
            (0, "sw2", "sliced W2 to an exact sample", fl.sw2_mean, fl.sw2_std),
            (1, "mmd", f"MMD (scale {fl.mmd_scale:.3g})", fl.mmd_mean, fl.mmd_std),
        ):
            ax = axes[row, col]
            lo, hi = max(fm - 2 * fs, fm / 5), fm + 2 * fs
            edge = lo / 1.5  # values below (an MMD estimate of 0) are drawn on the edge
            for i, m in enumerate(names):
                r0 = first[m]
                pts = sorted(
                    (r.nfe, max(getattr(r, f"{metric}_mean"), edge))
                    for r in sel
                    if r.method == m and math.isfinite(getattr(r, f"{metric}_mean"))
                )
                if not pts:
                    continue
                colour = colours[r0.shared or m]
                xs, ys = [p[0] for p in pts], [p[1] for p in pts]
                if r0.budget == 0:  # adaptive: stars at the NFE used
                    ax.plot(xs, ys, "*", markersize=11, color=colour, label=m)
                    continue
                ode = r0.kind == "ode"
                ax.plot(
                    xs,
                    ys,
                    linestyle=":" if ode else _STYLE[r0.family],
                    linewidth=2.8 if ode else (0.8 if "@" in m else 1.5),
                    marker=markers[i % len(markers)],
                    markersize=4,
                    color=colour,
                    label=m + (" (PF-ODE)" if ode else ""),
                )
            ax.axhspan(lo, hi, color="grey", alpha=0.25, label="floor, mean ± 2 std")
            ax.axhline(fm, color="grey", linewidth=1.0)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_ylim(edge / 1.05, 30 * fm if metric == "sw2" else 1.5)
            ax.set_ylabel(label)
            ax.grid(True, which="both", alpha=0.3)
            if row == 1:
                ax.set_xlabel("NFE (model evaluations used)")
        axes[row, 1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    axes[0, 0].set_title("ours")
    axes[1, 0].set_title("peers, with our method of the same algorithm (solid)")
    fig.suptitle(
        title + '\nsolid: ours (thin: grid "karras"), thick dotted: ours PF-ODE, dashed: '
        "diffusers, dash-dot: k-diffusion, stars: adaptive; colour = algorithm; grey: noise "
        "floor\nvalues below the axis (MMD estimate 0) are drawn on its lower edge; off-scale "
        "values (diverged samplers) are in the tables",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
    plt.close(fig)


def write_outputs(
    ms: list[Measurement],
    floors: list[Floor],
    infos: list[dict[str, Any]],
    notes: dict[str, str],
    meta: dict[str, Any],
    out: Path,
    stem: str,
    img: Path,
) -> list[Summary]:
    fdict = {f.setting: f for f in floors}
    rows = summarise(ms, fdict, notes)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        w.writeheader()
        for r in rows:
            w.writerow(asdict(r))
    comp = ode_vs_sde(rows, {i["name"]: tuple(i["nfes"]) for i in infos})
    md = [
        f"# Stochastic samplers: distributional error ({'quick' if 'quick' in stem else 'full'}"
        " run)",
        "",
        f"Command: `{meta['command'].strip()}`",
        "",
        f"Environment: {json.dumps(meta['environment'])}; k-diffusion: {meta['k_diffusion']}; "
        f"wall time of the run: {meta.get('wall_seconds', math.nan):.0f} s"
        + (f" (CPU time: {meta['cpu_seconds']:.0f} s)." if "cpu_seconds" in meta else "."),
        "",
        "Distances from the generated sample to an independent exact sample of p_{t_min} of the "
        f"same size: sliced W2 ({N_PROJECTIONS} directions) and MMD (Gaussian kernels, "
        f"bandwidths {MMD_BANDWIDTHS} times a fixed scale per problem). Cells: mean ± standard "
        "deviation over the repeats; `*`: the mean is within the noise floor (below floor mean "
        "+ 2 floor std / sqrt(repeats)); actual NFE in brackets where below the budget.",
        "",
        "## ODE or SDE at a given budget",
        "",
        "### sliced W2",
        "",
        ode_vs_sde_table(comp, "sw2"),
        "",
        "### MMD",
        "",
        ode_vs_sde_table(comp, "mmd"),
        "",
    ]
    for info in infos:
        name, nfes = info["name"], tuple(info["nfes"])
        fl = fdict[name]
        md += [
            f"## {name}",
            "",
            f"{info['n']} samples per sampler, {info['repeats']} repeats. Noise floor ({fl.pairs} "
            f"pairs of exact samples): sliced W2 {_fmt(fl.sw2_mean)} ± {_fmt(fl.sw2_std)}, MMD "
            f"{_fmt(fl.mmd_mean)} ± {_fmt(fl.mmd_std)} (MMD scale {fl.mmd_scale:.4g}).",
            "",
            f"### {name}: sliced W2",
            "",
            table(rows, name, nfes, "sw2"),
            "",
            f"### {name}: MMD",
            "",
            table(rows, name, nfes, "mmd"),
            "",
            f"### {name}: adaptive methods",
            "",
            adaptive_table(rows, name),
            "",
        ]
        title = (
            f"{'VP (diffusers DDPM chain, N=1000)' if info['kind'] == 'vp' else 'EDM'}, "
            f"{info['dim']}-D Gaussian mixture, {info['n']} samples, {info['repeats']} repeats"
        )
        plot(rows, fl, img / f"sampler_distribution_{name}.png", title)
    failures = sorted({(r.setting, r.method, r.note) for r in rows if r.repeats == 0})
    if failures:
        md += ["## Failures", ""] + [f"* {s} {m}: {n}" for s, m, n in failures] + [""]
    md += ["## Sampler notes", ""] + [f"* `{k}`: {v}" for k, v in notes.items() if v] + [""]
    summary = {
        **meta,
        "settings": infos,
        "floors": [asdict(f) for f in floors],
        "notes": notes,
        "ode_vs_sde": comp,
        "summary": [asdict(r) for r in rows],
        "measurements": [asdict(m) for m in ms],
    }
    (out / f"{stem}.json").write_text(json.dumps(summary, default=str) + "\n")
    (out / f"{stem}.md").write_text("\n".join(md))
    return rows


def rerender(path: Path, img: Path) -> None:
    """Re-write the tables and plots from a previous run's JSON (no sampling)."""
    data = json.loads(path.read_text())
    ms = [Measurement(**m) for m in data["measurements"]]
    floors = [Floor(**f) for f in data["floors"]]
    keys = ("command", "environment", "k_diffusion", "wall_seconds", "cpu_seconds")
    meta = {k: data[k] for k in keys if k in data}
    write_outputs(
        ms,
        floors,
        data["settings"],
        data["notes"],
        meta,
        path.parent,
        path.stem,
        img,
    )


# =========================================================================== main


def _version(package: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2-D only, NFE 10/50, 400 samples")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument(
        "--img", type=Path, default=None, help="plots (default docs/img; --quick: --out)"
    )
    p.add_argument(
        "--repeats", type=int, default=None, help="repeats (default 3 in 2-D, 2 in 64-D; quick 2)"
    )
    p.add_argument("--floor-pairs", type=int, default=None, help="floor pairs (default 10)")
    p.add_argument("--n2d", type=int, default=None, help="samples in 2-D (default 1000; quick 400)")
    p.add_argument("--n64d", type=int, default=None, help="samples in 64-D (default 400)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--rerender", type=Path, default=None, help="re-write outputs from a JSON")
    p.add_argument(
        "--check-3m",
        action="store_true",
        help="only the diffusers 3M SDE diagnostic (coefficient or grid?), ~1-2 min",
    )
    args = p.parse_args(argv)
    if args.rerender is not None:
        rerender(args.rerender, args.img or Path("docs/img"))
        return 0
    torch.set_num_threads(args.threads)
    quick = args.quick
    pairs = args.floor_pairs or 10
    img = args.img or (args.out if quick else Path("docs/img"))
    start, cpu_start = time.perf_counter(), time.process_time()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f} s] {msg}", flush=True)

    if args.check_3m:
        text = check_3m(args.seed, (20, 50, 100, 200), args.repeats or 3, log)
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "sampler_distribution_3m_check.md"
        path.write_text(
            "# diffusers DPMSolverMultistep(sde-dpmsolver++, 3): coefficient or grid?\n\n"
            f"Command: `python bench/sampler_distribution.py --check-3m`; "
            f"{json.dumps(environment())}.\n\n" + text
        )
        print(text)
        log(f"wrote {path}")
        return 0
    kd = peers.load_k_diffusion()
    log(f"k-diffusion: {kd.version} ({kd.reason})")
    # (kind, dim, samples, budgets, repeats)
    n2d = args.n2d or (400 if quick else 1000)
    r2d = args.repeats or (2 if quick else 3)
    nfe2d = QUICK_NFES if quick else FULL_NFES
    plan = [("vp", 2, n2d, nfe2d, r2d), ("edm", 2, n2d, nfe2d, r2d)]
    if not quick:
        n64, r64 = args.n64d or 400, args.repeats or 2
        plan += [("vp", 64, n64, NFES_64D, r64), ("edm", 64, n64, NFES_64D, r64)]
    ms: list[Measurement] = []
    floors: list[Floor] = []
    infos: list[dict[str, Any]] = []
    notes: dict[str, str] = {}
    for kind, dim, n, nfes, repeats in plan:
        s = make_setting(kind, dim, n, args.seed + dim)
        fl = floor(s, pairs, args.seed)
        floors.append(fl)
        log(
            f"{s.name}: n = {n}, floor sliced W2 {fl.sw2_mean:.4g} ± {fl.sw2_std:.2g}, MMD "
            f"{fl.mmd_mean:.4g} ± {fl.mmd_std:.2g} (scale {s.mmd_scale:.4g})"
        )
        samplers = (
            our_samplers(s, quick) + diffusers_samplers(s) + k_diffusion_samplers(kd.sampling)
        )
        notes.update({sp.name: sp.note for sp in samplers if sp.note})
        ms += run_setting(s, samplers, nfes, repeats, args.seed, log, not args.no_progress)
        infos.append(
            {
                "name": s.name,
                "kind": kind,
                "dim": dim,
                "n": n,
                "repeats": repeats,
                "nfes": list(nfes),
            }
        )
        log(f"{s.name}: done")
    meta = {
        "command": "python bench/sampler_distribution.py " + " ".join(argv or sys.argv[1:]),
        "environment": {**environment(), "torchsde": _version("torchsde")},
        "k_diffusion": kd.reason,
        "wall_seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu_start,
    }
    stem = "sampler_distribution" + ("_quick" if quick else "")
    rows = write_outputs(ms, floors, infos, notes, meta, args.out, stem, img)
    failed = sorted({(r.setting, r.method) for r in rows if r.repeats == 0})
    if failed:
        log(f"failed (every repeat): {failed}")
    log(f"wrote {args.out / stem}.{{csv,json,md}} and plots in {img}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
