"""Peer samplers (diffusers schedulers, k-diffusion samplers) driven by an exact oracle.

Used by ``bench/sampler_accuracy.py``. Every peer is given the *exact* model output of its own
parametrisation, for exactly the state it holds, so that the only differences between a peer
and our solvers are the algorithm, its time grid and its floating-point tables:

* **diffusers, VP** (``DDIMScheduler``, ``DPMSolverMultistepScheduler``,
  ``UniPCMultistepScheduler``, ``DEISMultistepScheduler``, ``EulerDiscreteScheduler``,
  ``HeunDiscreteScheduler``; linear betas 1e-4..0.02, ``N = 1000``). Our SDE is the scheduler's
  own chain, ``sd.VPSDE.from_discrete(alphas_cumprod=scheduler.alphas_cumprod)`` (the float32
  table diffusers computes with, promoted to float64), so diffusers' 0-based timestep ``n`` is
  our ``t = (n + 1) / N`` and ``alphas_cumprod[n] == sde.alpha(t)^2`` (asserted).
  The model is the oracle's eps:

  - VP-space schedulers (DDIM, DPM-Solver++, UniPC, DEIS) hold the VP state ``x``
    (``init_noise_sigma == 1``, ``scale_model_input`` is the identity, both asserted) and call
    the model at integer timesteps ``n``: we return ``oracle.eps(x, (n + 1) / N)``.
  - sigma-space schedulers (Euler, Heun) hold ``x / alpha`` at ``sigma_d = sigma / alpha``
    (their float32 ``sigmas``) and feed the model ``scale_model_input(x_d) = x_d /
    sqrt(sigma_d^2 + 1)``, the VP state. We return ``oracle.eps`` of that input at the ``t``
    whose ``sigma / alpha`` is the scheduler's current ``sigma_d`` (which agrees with
    ``(n + 1) / N`` to float32 round-off, asserted). They start from ``x_T sqrt(1 +
    sigma_d,0^2)``, not ``x_T * init_noise_sigma`` (with trailing spacing diffusers returns
    ``sigma_max`` there instead of ``sqrt(sigma_max^2 + 1)``), and their result is mapped back
    to the VP state by ``x_d / sqrt(1 + sigma_d,last^2)``.

  Every scheduler starts at ``n = N - 1`` (``t = T = 1``) and ends at ``n = 0`` (``t = t_min =
  1 / N``, where our reference ends): ``timestep_spacing="trailing"`` for all (the default
  "leading" spacing of DDIM starts at ``n = 901`` for 10 steps; "linspace" makes Euler/Heun
  waste their last call on a zero-length step), ``set_alpha_to_one=False`` (DDIM),
  ``final_sigmas_type="sigma_min"`` (DPM-Solver++, UniPC, Euler; DEIS does this always), and
  for ``HeunDiscreteScheduler``, which has no such option and ends at ``sigma = 0``, the final
  entry of ``scheduler.sigmas`` is replaced by the chain's ``sigma_d`` at ``n = 0`` (the value
  ``final_sigmas_type="sigma_min"`` gives the other schedulers). ``clip_sample=False``
  (DDIM clips x0 to [-1, 1] by default); no thresholding.

* **diffusers, EDM** (``EDMEulerScheduler``, ``EDMDPMSolverMultistepScheduler``; sigma in
  [0.002, 80], Karras rho = 7, sigma_data = 0.5). Their model output is the EDM-preconditioned
  network ``F`` with ``D = c_skip x + c_out F``; we return ``F = (D - c_skip x) / c_out`` with
  ``D = oracle.x0(x, sigma)`` at the scheduler's state ``x`` and current ``sigma``, the
  coefficients taken from the scheduler's own ``precondition_outputs``. To end at ``sigma =
  0.002`` (our ``t_min``) without a wasted call, ``set_timesteps(n + 1)`` with
  ``final_sigmas_type="sigma_min"`` is truncated to its first ``n`` timesteps and ``n + 1``
  sigmas (the Karras grid of ``n`` steps from 80 to 0.002); diffusers' own options either
  end at 0 or repeat 0.002 (a zero-length last step that costs one call).

* **k-diffusion** (``sample_euler``, ``sample_heun``, ``sample_dpm_2``, ``sample_lms``,
  ``sample_dpmpp_2s_ancestral(eta=0)``, ``sample_dpmpp_2m``, ``sample_dpmpp_3m_sde(eta=0)``,
  ``sample_dpm_fast(eta=0)``), deterministic samplers only. They take a denoiser
  ``D(x, sigma)`` in EDM variables. Under EDM that is ``oracle.x0(x, sigma)`` (``t = sigma``);
  under VP the state is ``x / alpha`` at ``sigma_d = sigma / alpha`` (what k-diffusion's
  ``DiscreteEpsDDPMDenoiser`` does with a DDPM model), ``D = oracle.x0(x_d alpha, t(sigma_d))``
  with the exact continuous ``t(sigma_d)`` (no timestep quantisation). Their sigma grid is
  the Karras grid of ``n`` steps between our ``T`` and ``t_min`` (``get_sigmas_karras(n + 1,
  ...)`` without the appended 0: every sampler then ends at ``t_min``; none takes its
  "denoise to 0" branch), ``sample_dpm_fast`` builds its own log-SNR-uniform grid.
  ``sample_dpmpp_3m_sde`` gets a no-op ``noise_sampler`` (with ``eta = 0`` it is never used;
  the default would build a torchsde Brownian tree for nothing).
  ``k_diffusion/__init__.py`` imports torchvision, scikit-image and more at import time, so
  :func:`load_k_diffusion` loads only ``k_diffusion/sampling.py`` from the installed package
  with importlib, with a stand-in ``utils`` module holding k-diffusion's own ``append_dims``
  (the one function ``sampling.py`` uses from ``utils``, extracted from ``utils.py`` with
  ``ast``).

Peers' NFE is the number of model calls, counted here.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import math
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import scoresde as sd
from solvers import append_dims

N_TRAIN = 1000
BETA_START, BETA_END = 1e-4, 0.02
EDM_SIGMA_DATA = 0.5

_F64 = torch.float64


@dataclass(frozen=True)
class PeerResult:
    """One peer solve.

    Attributes:
        x: the result in our state variable at our ``t_min`` (VP state for VP runs).
        nfe: model calls made.
        ts: the grid the peer visited, in our time ``t`` (float64, decreasing), for running
            our solvers on the same grid.
        sigmas: for peers that integrate in EDM variables, the same grid as ``sigma / alpha``
            exactly as the peer held it (None otherwise).
    """

    x: Tensor
    nfe: int
    ts: Tensor
    sigmas: Tensor | None = None


@dataclass(frozen=True)
class PeerSpec:
    """A peer sampler: its display name, the family it comes from and our shared method.

    Attributes:
        name: display name, e.g. ``"diffusers:DPMSolverMultistep(2M)"``.
        library: ``"diffusers"`` or ``"k-diffusion"``.
        shared: the registry name of our method with the same algorithm (or None).
        note: how the algorithm differs from ours, if it does.
        steps_for_budget: ``nfe -> steps`` (steps whose cost fits the budget).
        run: ``(oracle, x_T, n_steps) -> PeerResult``.
        options: the options of our ``shared`` method (``solvers.get_solver(shared,
            **options)``) that configure it as the peer, with the peer's grid and variables:
            its final-step rule (``lower_order_final``; ``euler_last`` for Heun). Empty where
            our default already is the peer's rule.
    """

    name: str
    library: str
    shared: str | None
    note: str
    steps_for_budget: Callable[[int], int]
    run: Callable[[Any, Tensor, int], PeerResult]
    options: dict[str, Any] = field(default_factory=dict)


# our final-step options that reproduce a peer's rule (PeerSpec.options)
BELOW_15_STEPS = {"lower_order_final": None}
"""diffusers' DPMSolverMultistep / EDMDPMSolverMultistep / DEISMultistep rule (lower the last
orders in solves of fewer than 15 steps): our ``lower_order_final=None``, whose threshold
(``lower_order_final_steps``) is 15 for DPM-Solver++ and DEIS."""
NEVER = {"lower_order_final": False}
"""k-diffusion's multistep samplers: no lower-order last steps."""


def _one_per_step(nfe: int) -> int:
    return nfe


def _heun_like(nfe: int) -> int:  # 2 n - 1 calls for n steps (last step first order)
    return (nfe + 1) // 2


def _two_per_step(nfe: int) -> int:
    return nfe // 2


# =========================================================================== VP chain


def diffusers_chain_sde() -> sd.DiscreteVPSDE:
    """Our SDE for diffusers' default chain (linear betas 1e-4..0.02, N = 1000), built from the
    ``alphas_cumprod`` table diffusers itself uses (float32, promoted), with the index map
    ``alphas_cumprod[n] == alpha((n + 1) / N)^2`` checked."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=N_TRAIN, beta_start=BETA_START, beta_end=BETA_END)
    ac = sched.alphas_cumprod.to(_F64)
    sde = sd.VPSDE.from_discrete(alphas_cumprod=ac)
    n = torch.arange(N_TRAIN, dtype=_F64)
    alpha2 = sde.alpha((n + 1) / N_TRAIN).to(_F64) ** 2
    assert torch.allclose(alpha2, ac, rtol=1e-12, atol=0), "diffusers index map broken"
    # and the same chain as our own float64 one, to float32 round-off
    ref = sd.VPSDE.from_discrete(torch.linspace(BETA_START, BETA_END, N_TRAIN, dtype=_F64))
    assert torch.allclose(ref.alpha((n + 1) / N_TRAIN).to(_F64) ** 2, ac, rtol=1e-5)
    return sde


def _t_of_sigma_d(sde: Any, sigma_d: float) -> Tensor:
    """Our time t at which ``sigma / alpha == sigma_d`` (log-SNR ``-2 log sigma_d``)."""
    return sde.t_from_log_snr(torch.tensor(-2.0 * math.log(sigma_d), dtype=_F64)).to(_F64)


def _common_vp() -> dict[str, Any]:
    return {
        "num_train_timesteps": N_TRAIN,
        "beta_start": BETA_START,
        "beta_end": BETA_END,
        "beta_schedule": "linear",
        "timestep_spacing": "trailing",
    }


def _run_diffusers_vp_space(make: Callable[[], Any]) -> Callable[[Any, Tensor, int], PeerResult]:
    """DDIM / DPM-Solver++ / UniPC / DEIS: the state is the VP x, the model eps at integer n."""

    def run(oracle: Any, x_t: Tensor, n_steps: int) -> PeerResult:
        sched = make()
        sched.set_timesteps(n_steps)
        assert float(sched.init_noise_sigma) == 1.0
        x = x_t.clone()
        nfe = 0
        seen: list[int] = []
        for step_t in sched.timesteps:
            n = int(step_t)
            assert float(step_t) == n, "a VP-space scheduler must call the model at integer n"
            inp = sched.scale_model_input(x, step_t)
            assert inp is x or torch.equal(inp, x)
            eps = oracle.eps(inp, (n + 1) / N_TRAIN)
            nfe += 1
            seen.append(n)
            x = sched.step(eps, step_t, x).prev_sample
        ts = torch.tensor([(n + 1) / N_TRAIN for n in seen] + [1.0 / N_TRAIN], dtype=_F64)
        return PeerResult(x, nfe, ts)

    return run


def _run_diffusers_sigma_space(
    make: Callable[[], Any], *, final_sigma_patch: bool
) -> Callable[[Any, Tensor, int], PeerResult]:
    """Euler / Heun discrete: the state is x / alpha at sigma_d = sigma / alpha."""

    def run(oracle: Any, x_t: Tensor, n_steps: int) -> PeerResult:
        sde = oracle.sde
        sched = make()
        sched.set_timesteps(n_steps)
        ac0 = sched.alphas_cumprod[0]
        if final_sigma_patch:  # Heun ends at sigma = 0; end at the chain's n = 0 instead
            sched.sigmas[-1] = ((1 - ac0) / ac0) ** 0.5
        sigmas = sched.sigmas.to(_F64)
        x = x_t * math.sqrt(1.0 + float(sigmas[0]) ** 2)
        nfe = 0
        seen: list[float] = []  # sigma_d of the grid points, in order
        for step_t in sched.timesteps:
            inp = sched.scale_model_input(x, step_t)
            sigma_d = float(sched.sigmas[sched.step_index])
            t = _t_of_sigma_d(sde, sigma_d)
            assert abs(float(t) - (float(step_t) + 1) / N_TRAIN) < 1e-5, "index map broken"
            eps = oracle.eps(inp, t)
            nfe += 1
            if not seen or seen[-1] != sigma_d:
                seen.append(sigma_d)
            x = sched.step(eps, step_t, x).prev_sample
        s_last = float(sigmas[-1])
        grid_s = torch.tensor([*seen, s_last], dtype=_F64)
        ts = torch.stack([_t_of_sigma_d(sde, v) for v in grid_s.tolist()])
        return PeerResult(x / math.sqrt(1.0 + s_last**2), nfe, ts, grid_s)

    return run


def diffusers_vp_peers() -> list[PeerSpec]:
    """The diffusers schedulers on the VP chain (see the module docstring)."""
    from diffusers import (
        DDIMScheduler,
        DEISMultistepScheduler,
        DPMSolverMultistepScheduler,
        EulerDiscreteScheduler,
        HeunDiscreteScheduler,
        UniPCMultistepScheduler,
    )

    c = _common_vp
    return [
        PeerSpec(
            "diffusers:DDIM",
            "diffusers",
            "ddim",
            "eta = 0; same algorithm. For NFE 15 its step goes to n - N // 15 (e.g. 999 -> 933) "
            "while the next model call is at the listed timestep (932): a diffusers quirk.",
            _one_per_step,
            _run_diffusers_vp_space(
                lambda: DDIMScheduler(**c(), clip_sample=False, set_alpha_to_one=False)
            ),
        ),
        PeerSpec(
            "diffusers:DPMSolverMultistep(2M)",
            "diffusers",
            "dpmpp_2m",
            "dpmsolver++, midpoint (= DPM-Solver++(2M)); diffusers lowers the order of the "
            "last step below 15 steps, ours always (lower_order_final=True by default).",
            _one_per_step,
            _run_diffusers_vp_space(
                lambda: DPMSolverMultistepScheduler(
                    **c(), solver_order=2, final_sigmas_type="sigma_min"
                )
            ),
            BELOW_15_STEPS,
        ),
        PeerSpec(
            "diffusers:DPMSolverMultistep(3M)",
            "diffusers",
            "dpmpp_3m",
            "the update of our default dpmpp_3m (coefficient='lu': h phi_3 weight on the "
            "second difference, second order); diffusers lowers the last two orders below 15 "
            "steps, ours always.",
            _one_per_step,
            _run_diffusers_vp_space(
                lambda: DPMSolverMultistepScheduler(
                    **c(), solver_order=3, final_sigmas_type="sigma_min"
                )
            ),
            BELOW_15_STEPS,
        ),
        PeerSpec(
            "diffusers:UniPCMultistep",
            "diffusers",
            "unipc",
            "bh2, order 2 as ours; both lower the order of the last step always (ours: "
            "lower_order_final=True by default).",
            _one_per_step,
            _run_diffusers_vp_space(
                lambda: UniPCMultistepScheduler(
                    **c(), solver_order=2, solver_type="bh2", final_sigmas_type="sigma_min"
                )
            ),
        ),
        PeerSpec(
            "diffusers:DEISMultistep(3)",
            "diffusers",
            "deis",
            "logrho (polynomial in lambda), order 3 as ours; diffusers lowers the last two "
            "orders below 15 steps, ours never.",
            _one_per_step,
            _run_diffusers_vp_space(lambda: DEISMultistepScheduler(**c(), solver_order=3)),
            BELOW_15_STEPS,
        ),
        PeerSpec(
            "diffusers:EulerDiscrete",
            "diffusers",
            "euler",
            "Euler in (x / alpha, sigma / alpha), which is DDIM exactly; our `euler` is Euler "
            "in the VP time t (a different method). `euler[edm-vars]` is ours in the same "
            "variables (solvers.EDMVariables).",
            _one_per_step,
            _run_diffusers_sigma_space(
                lambda: EulerDiscreteScheduler(**c(), final_sigmas_type="sigma_min"),
                final_sigma_patch=False,
            ),
        ),
        PeerSpec(
            "diffusers:HeunDiscrete",
            "diffusers",
            "heun",
            "EDM Heun (Euler last step) in (x / alpha, sigma / alpha); our `heun` integrates in "
            "the VP time t. `heun[edm-vars]` is ours in the same variables "
            "(solvers.EDMVariables).",
            _heun_like,
            _run_diffusers_sigma_space(
                lambda: HeunDiscreteScheduler(**c()), final_sigma_patch=True
            ),
        ),
    ]


# =========================================================================== EDM


def _run_diffusers_edm(make: Callable[[], Any]) -> Callable[[Any, Tensor, int], PeerResult]:
    def run(oracle: Any, x_t: Tensor, n_steps: int) -> PeerResult:
        sched = make()
        sched.set_timesteps(n_steps + 1)
        # Karras grid of n_steps steps from sigma_max to sigma_min, no wasted last call
        sched.timesteps = sched.timesteps[:n_steps]
        sched.sigmas = sched.sigmas[: n_steps + 1]
        sched.num_inference_steps = n_steps
        x = x_t.clone()
        nfe = 0
        for step_t in sched.timesteps:
            sched.scale_model_input(x, step_t)  # sets the step index; we use the raw state
            sigma = sched.sigmas[sched.step_index]
            den = oracle.x0(x, float(sigma))
            skip_x = sched.precondition_outputs(x, torch.zeros_like(x), sigma)
            c_out = sched.precondition_outputs(torch.zeros_like(x), torch.ones_like(x), sigma)
            nfe += 1
            x = sched.step((den - skip_x) / c_out, step_t, x).prev_sample
        return PeerResult(x, nfe, sched.sigmas.to(_F64))

    return run


def diffusers_edm_peers(sigma_min: float, sigma_max: float) -> list[PeerSpec]:
    """diffusers' EDM schedulers (Euler and DPM-Solver++ 2M/3M)."""
    from diffusers import EDMDPMSolverMultistepScheduler, EDMEulerScheduler

    kw = {
        "sigma_min": sigma_min,
        "sigma_max": sigma_max,
        "sigma_data": EDM_SIGMA_DATA,
        "final_sigmas_type": "sigma_min",
    }
    return [
        PeerSpec(
            "diffusers:EDMEuler",
            "diffusers",
            "euler",
            "same algorithm (Euler in sigma), Karras grid as ours.",
            _one_per_step,
            _run_diffusers_edm(lambda: EDMEulerScheduler(**kw)),
        ),
        PeerSpec(
            "diffusers:EDMDPMSolverMultistep(2M)",
            "diffusers",
            "dpmpp_2m",
            "same algorithm on the Karras grid (ours: log-SNR-uniform grid by default); "
            "diffusers lowers the last order below 15 steps, ours always.",
            _one_per_step,
            _run_diffusers_edm(lambda: EDMDPMSolverMultistepScheduler(**kw, solver_order=2)),
            BELOW_15_STEPS,
        ),
        PeerSpec(
            "diffusers:EDMDPMSolverMultistep(3M)",
            "diffusers",
            "dpmpp_3m",
            "the update of our default dpmpp_3m (coefficient='lu', see the VP note) on the "
            "Karras grid (ours: log-SNR-uniform); diffusers lowers the last two orders below 15 "
            "steps, ours always.",
            _one_per_step,
            _run_diffusers_edm(lambda: EDMDPMSolverMultistepScheduler(**kw, solver_order=3)),
            BELOW_15_STEPS,
        ),
    ]


# =========================================================================== k-diffusion


@dataclass(frozen=True)
class KDiffusion:
    """The loaded ``k_diffusion.sampling`` module (or why it could not be loaded)."""

    sampling: types.ModuleType | None
    version: str | None
    reason: str


def load_k_diffusion() -> KDiffusion:
    """Load ``k_diffusion/sampling.py`` from the installed package without importing the
    package itself (whose ``__init__`` imports torchvision, scikit-image, ...).

    ``sampling.py`` does ``from . import utils`` and uses only ``utils.append_dims``; the
    package's ``utils.py`` imports torchvision at its top, so a stand-in ``utils`` module is
    given k-diffusion's own ``append_dims``, extracted from ``utils.py`` with ``ast``.
    """
    try:
        version = importlib.metadata.version("k-diffusion")
        spec = importlib.util.find_spec("k_diffusion")
    except (importlib.metadata.PackageNotFoundError, ModuleNotFoundError, ValueError):
        return KDiffusion(None, None, "k-diffusion is not installed")
    if spec is None or not spec.submodule_search_locations:
        return KDiffusion(None, None, "k-diffusion is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    pkg_name = "_kdiffusion_sampling_only"
    pkg = types.ModuleType(pkg_name)
    pkg.__path__ = []  # a namespace for the relative import only
    utils = types.ModuleType(f"{pkg_name}.utils")
    tree = ast.parse((root / "utils.py").read_text())
    fn = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "append_dims"]
    if not fn:
        return KDiffusion(None, version, "k_diffusion/utils.py has no append_dims")
    exec(
        compile(ast.Module(body=fn, type_ignores=[]), str(root / "utils.py"), "exec"),
        utils.__dict__,
    )  # noqa: S102
    pkg.utils = utils  # type: ignore[attr-defined]
    sys.modules[pkg_name] = pkg
    sys.modules[f"{pkg_name}.utils"] = utils
    try:
        mod_spec = importlib.util.spec_from_file_location(
            f"{pkg_name}.sampling", root / "sampling.py"
        )
        assert mod_spec is not None and mod_spec.loader is not None
        sampling = importlib.util.module_from_spec(mod_spec)
        sys.modules[mod_spec.name] = sampling
        mod_spec.loader.exec_module(sampling)
    except Exception as err:  # noqa: BLE001 - report any import failure as "not available"
        return KDiffusion(None, version, f"loading k_diffusion/sampling.py failed: {err!r}")
    return KDiffusion(sampling, version, "loaded k_diffusion/sampling.py only (see docstring)")


class _EDMDenoiser:
    """``D(x, sigma)`` in EDM variables for an oracle under EDM (``t = sigma``) or VP
    (``x = x_VP / alpha``, ``sigma = sigma_VP / alpha``)."""

    def __init__(self, oracle: Any, vp: bool) -> None:
        self.oracle, self.vp, self.calls = oracle, vp, 0

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        self.calls += 1
        s = sigma.to(_F64)
        if not self.vp:
            return self.oracle.x0(x, s)
        t = self.oracle.sde.t_from_log_snr(-2.0 * torch.log(s)).to(_F64)
        alpha = (1.0 / torch.sqrt(1.0 + s**2)).to(x.dtype)
        return self.oracle.x0(x * append_dims(alpha, x.ndim), t)


def edm_variables(sde: Any) -> tuple[float, float]:
    """``sigma / alpha`` at our ``t_min`` and ``T``."""
    lo = math.exp(-0.5 * float(sde.log_snr(torch.tensor(sde.t_min, dtype=_F64))))
    hi = math.exp(-0.5 * float(sde.log_snr(torch.tensor(sde.T, dtype=_F64))))
    return lo, hi


def k_diffusion_peers(kd: types.ModuleType, vp: bool) -> list[PeerSpec]:
    """k-diffusion's deterministic samplers (see the module docstring)."""

    def karras_sigmas(oracle: Any, n: int) -> Tensor:
        s_min, s_max = edm_variables(oracle.sde)
        return kd.get_sigmas_karras(n + 1, s_min, s_max, device="cpu").to(_F64)[:-1]

    def wrap(fn_name: str, **kwargs: Any) -> Callable[[Any, Tensor, int], PeerResult]:
        def run(oracle: Any, x_t: Tensor, n_steps: int) -> PeerResult:
            den = _EDMDenoiser(oracle, vp)
            sigmas = karras_sigmas(oracle, n_steps)
            x = _to_edm(oracle, x_t, vp)
            extra = {"noise_sampler": lambda s, t: None} if "3m_sde" in fn_name else {}
            out = getattr(kd, fn_name)(den, x, sigmas, disable=True, **kwargs, **extra)
            ts = _ts_of(oracle, sigmas, vp)
            return PeerResult(_from_edm(oracle, out, vp), den.calls, ts, sigmas if vp else None)

        return run

    def run_fast(oracle: Any, x_t: Tensor, nfe: int) -> PeerResult:
        den = _EDMDenoiser(oracle, vp)
        s_min, s_max = edm_variables(oracle.sde)
        x = _to_edm(oracle, x_t, vp)
        out = kd.sample_dpm_fast(den, x, s_min, s_max, nfe, disable=True)
        # its grid: nfe // 3 + 1 steps uniform in -log(sigma), from float32 end points
        t_ends = -torch.log(torch.tensor([s_max, s_min]))
        m = nfe // 3 + 1
        sigmas = torch.exp(-torch.linspace(float(t_ends[0]), float(t_ends[1]), m + 1)).to(_F64)
        ts = _ts_of(oracle, sigmas, vp)
        return PeerResult(_from_edm(oracle, out, vp), den.calls, ts, sigmas if vp else None)

    note_vars = " (in x / alpha, sigma / alpha under VP)" if vp else ""
    return [
        PeerSpec(
            "k-diffusion:euler",
            "k-diffusion",
            "euler",
            "Euler in sigma" + note_vars + ".",
            _one_per_step,
            wrap("sample_euler"),
        ),
        PeerSpec(
            "k-diffusion:heun",
            "k-diffusion",
            "heun",
            "EDM Heun" + note_vars + "; every step is a Heun step (the Euler fallback is "
            "only for a step to sigma = 0): 2 calls per step, ours 2 n - 1.",
            _two_per_step,
            wrap("sample_heun"),
            {"euler_last": False},
        ),
        PeerSpec(
            "k-diffusion:dpm_2",
            "k-diffusion",
            "dpm_solver_2",
            "= DPM-Solver-2 (r = 1/2) exactly; 2 calls per step (ours lowers the last "
            "step's order for an odd budget).",
            _two_per_step,
            wrap("sample_dpm_2"),
        ),
        PeerSpec(
            "k-diffusion:lms",
            "k-diffusion",
            "ipndm_v",
            "LMS order 4 = our ipndm_v" + note_vars + ".",
            _one_per_step,
            wrap("sample_lms"),
        ),
        PeerSpec(
            "k-diffusion:dpmpp_2s(eta=0)",
            "k-diffusion",
            "dpmpp_2s",
            "sample_dpmpp_2s_ancestral with eta = 0 = DPM-Solver++(2S).",
            _two_per_step,
            wrap("sample_dpmpp_2s_ancestral", eta=0.0),
        ),
        PeerSpec(
            "k-diffusion:dpmpp_2m",
            "k-diffusion",
            "dpmpp_2m",
            "DPM-Solver++(2M) without a lower-order last step (ours lowers it by default).",
            _one_per_step,
            wrap("sample_dpmpp_2m"),
            NEVER,
        ),
        PeerSpec(
            "k-diffusion:dpmpp_3m(eta=0)",
            "k-diffusion",
            "dpmpp_3m",
            "sample_dpmpp_3m_sde with eta = 0: the h phi_3 weight of our default "
            "(coefficient='lu'), but its second step is the h phi_2 form (ours: the 2M step) and "
            "it takes no lower-order last steps (ours: always).",
            _one_per_step,
            wrap("sample_dpmpp_3m_sde", eta=0.0),
            NEVER,
        ),
        PeerSpec(
            "k-diffusion:dpm_fast",
            "k-diffusion",
            "dpm_solver_3",
            "DPM-Solver-fast (order-3 steps, last steps lower to use the budget exactly), "
            "log-SNR-uniform grid: as our dpm_solver_3.",
            _one_per_step,
            run_fast,
        ),
    ]


def _to_edm(oracle: Any, x_t: Tensor, vp: bool) -> Tensor:
    if not vp:
        return x_t.clone()
    return x_t / float(oracle.sde.alpha(torch.tensor(oracle.sde.T, dtype=_F64)))


def _from_edm(oracle: Any, x: Tensor, vp: bool) -> Tensor:
    if not vp:
        return x
    return x * float(oracle.sde.alpha(torch.tensor(oracle.sde.t_min, dtype=_F64)))


def _ts_of(oracle: Any, sigmas: Tensor, vp: bool) -> Tensor:
    if not vp:
        return sigmas.to(_F64)
    return oracle.sde.t_from_log_snr(-2.0 * torch.log(sigmas.to(_F64))).to(_F64)
