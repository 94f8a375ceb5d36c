"""Sampling speed: how close every method comes to NFE x one network forward, ours and peers.

Usage (from the repository root; results and the discussion in docs/benchmarks.md, "Speed")::

    python bench/speed.py --quick                  # CPU: MLP + small U-Net, NFE 10 (~5-10 min)
    python bench/speed.py                          # CPU: NFE 10 and 20, two U-Net batches
    python bench/speed.py --device cuda            # GPU: MLP (4096) + U-Net 32x32 (128, 256)
    python bench/speed.py --device cuda --dtype bf16 --compile   # low precision, compiled net
    python bench/speed.py --device cuda --compile --compile-mode reduce-overhead  # CUDA graphs
    python bench/speed.py --profile dpmpp_2m       # torch.profiler table of one sd.sample call

The **overhead ratio** of a sampler is its wall time divided by ``NFE x`` the time of one
forward of the raw network at the same batch: 1.0 means that everything but the network
(solver arithmetic, time grid, coefficient tables, the parametrisation layer, Python) is free.
For every method of ``sd.solvers_available()`` it is measured on the same network as the
diffusers schedulers and the k-diffusion samplers (``peer_samplers.load_k_diffusion``, the
loader of the accuracy benchmark), each peer run as a user would write its loop; the
``ours / peer`` ratio of two overhead ratios compares the two at equal NFE (per evaluation, so
a peer that spends one evaluation more or less is still compared fairly).

The problem: the DDPM noise schedule that diffusers uses (linear betas 1e-4..0.02, N = 1000):
the peers use their own discrete tables; ours (``--sde``) the continuous-time VP SDE of the same
betas, ``sd.VPSDE(beta_min=0.1, beta_max=20, t_min=1/N)`` (default ``vp``), or the chain itself,
``sd.VPSDE.from_discrete`` of the scheduler's ``alphas_cumprod`` (``chain``, as the accuracy
benchmark; note: its float64 primitives index the knot tables with a 0-d tensor, one host
synchronisation each on CUDA, reported separately). The network predicts eps and has random
weights (the zero-initialised output layers of the U-Net re-drawn, so that the output is not
identically 0): the cost of a forward does not depend on what the weights are.

Networks (``--nets``):

* ``null``: ``x -> 0.5 x`` at batch 64 (2-D): a network that costs one kernel, so that the
  wall time per NFE is the sampler's own overhead in µs (solver, loop, parametrisation layer,
  Python); timed 4x as often as the others, and also reported from the fastest run
  (``overhead_us_min``), the figure least disturbed by a busy machine; and the compute
  operators (about one kernel launch each on a GPU; views and allocations excluded) and host
  synchronisations each sampler dispatches per NFE, counted exactly;
* ``mlp``: ``scoresde.models.MLP(2)`` (width 128, depth 3, 134k parameters), batch 4096;
* ``unet``: on CUDA the U-Net of ``configs/images32_gpu.toml`` (DDPM's CIFAR-10 model at half
  width, 8.95M parameters; 3x32x32) at batches 128 and 256; on the CPU a small one
  (``base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1``, attention at 16x16,
  1.11M parameters; 3x32x32) at batch 8 (``--quick``) or 8 and 16 (``--unet-batches``).

Timing: ``--warmup`` untimed runs of each method, then ``--repeats`` timed ones; before each
timed run the forward time is measured again (a block of forwards at the same batch), and the
ratio of that run uses its own forward time (paired: slow drifts of a shared machine cancel).
Reported: medians. On CUDA every timed region ends with ``torch.cuda.synchronize()``. On the
CPU the process's CPU time (``time.process_time``) is recorded next to the wall time: on a
machine shared with other jobs it is the steadier of the two. ``torch.set_num_threads``
(``--threads``, default 1).

Options: ``--dtype bf16|fp16`` runs the network under ``torch.autocast`` (low-precision
matmuls and convolutions; the state stays float32 and the grid float64; the forward baseline
is the same autocast forward); ``--compile`` wraps the network in ``torch.compile``
(``--compile-mode``: ``default``, ``reduce-overhead`` = CUDA graphs of the network,
``max-autotune``); the compile time is spent in the warm-up and reported separately.

Host synchronisations: ``--sync-check`` (default on) counts ``aten::_local_scalar_dense`` (what
``.item()``, ``float()``, ``bool()`` of a tensor call) during a solve with a pure
``solvers`` term (no ``scoresde`` layer; the solver layer alone) and during ``sd.sample`` at
two budgets, and reports the difference per step. On the CPU ``sd.sample`` includes the range
checks of ``SDE._time`` on the host (skipped on accelerators by design).

Outputs (``--out``, default ``bench/results``): ``speed_<device>[_<dtype>][_compile][_quick]``
``.csv`` (one row per method, network, batch and budget), ``.json`` (rows, forward times,
machine, arguments) and ``.md`` (the tables of docs/benchmarks.md); ``--profile`` writes
``speed_profile_<device>.txt``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE.parent), str(_HERE)]

import peer_samplers as peers  # noqa: E402
from bench_env import cpu_name, loadavg  # noqa: E402

import scoresde as sd  # noqa: E402
import solvers  # noqa: E402
from scoresde.models import MLP, UNet  # noqa: E402

F64 = torch.float64
N_TRAIN = peers.N_TRAIN
ADAPTIVE_MAX_NFE = 1000  # cap of the adaptive methods' evaluations (beyond: a failed row)


# =========================================================================== networks


@dataclass(frozen=True)
class NetSpec:
    """A network and the batches it is timed at."""

    name: str  # "mlp" | "unet"
    sample_shape: tuple[int, ...]  # one sample
    batches: tuple[int, ...]
    description: str
    build: Callable[[], nn.Module]


def _redraw_zero_init(net: nn.Module, generator: torch.Generator) -> nn.Module:
    """Give the zero-initialised weights (residual branches, output conv) small random values,
    so that the network's output is not identically 0 (the cost of a forward is the same)."""
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim > 1 and not bool(p.abs().max() > 0):
                p.copy_(0.02 * torch.randn(p.shape, generator=generator))
    return net


def net_specs(device: str, quick: bool, unet_batches: tuple[int, ...] | None) -> list[NetSpec]:
    """The networks (see the module docstring)."""
    gpu = device.startswith("cuda")
    mlp = NetSpec(
        "mlp",
        (2,),
        (4096,),
        "MLP(2): width 128, depth 3",
        lambda: MLP(2),
    )
    if gpu:
        unet_kw: dict[str, Any] = {
            "base_channels": 64,
            "channel_mult": (1, 2, 2, 2),
            "num_res_blocks": 2,
            "attn_resolutions": (16,),
            "attn_heads": 4,
            "groups": 32,
        }
        desc = "U-Net of configs/images32_gpu.toml (64 ch, mult 1-2-2-2, 2 res blocks, attn 16)"
        batches = (128, 256)
    else:
        unet_kw = {
            "base_channels": 32,
            "channel_mult": (1, 2, 2),
            "num_res_blocks": 1,
            "attn_resolutions": (16,),
            "attn_heads": 1,
            "groups": 8,
        }
        desc = "small U-Net (32 ch, mult 1-2-2, 1 res block, attn 16)"
        batches = (8,) if quick else (8, 16)
    if unet_batches:
        batches = unet_batches

    def build_unet() -> nn.Module:
        net = UNet(image_size=32, in_channels=3, dropout=0.0, **unet_kw)
        return _redraw_zero_init(net, torch.Generator().manual_seed(0))

    unet = NetSpec("unet", (3, 32, 32), batches, desc, build_unet)
    null = NetSpec(
        "null",
        (2,),
        (64,),
        "stand-in network x -> 0.5 x (one multiply): the per-NFE cost of everything else",
        NullNet,
    )
    return [null, mlp, unet]


class NullNet(nn.Module):
    """A network that costs almost nothing (``0.5 x``, one kernel): with it, a sampler's
    wall time per NFE is its own overhead (solver, loop, parametrisation, Python)."""

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return 0.5 * x


class AutocastNet(nn.Module):
    """``net`` under ``torch.autocast(dtype)``; the output is cast back to the input's dtype
    (the sampler's state stays float32)."""

    def __init__(self, net: nn.Module, dtype: torch.dtype, device_type: str) -> None:
        super().__init__()
        self.net, self.dtype, self.device_type = net, dtype, device_type

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        with torch.autocast(device_type=self.device_type, dtype=self.dtype):
            y = self.net(x, t)
        return y.to(x.dtype)


class CloneOutput(nn.Module):
    """Copies the output of a CUDA-graphed network (``torch.compile(mode="reduce-overhead")``
    reuses its output buffer at the next call; multistep samplers keep earlier outputs)."""

    def __init__(self, net: Callable[..., Tensor]) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.net(x, t).clone()


class CountingNet(nn.Module):
    """Counts the calls of the network (the peers' NFE; a Python int, no sync)."""

    def __init__(self, net: Callable[..., Tensor]) -> None:
        super().__init__()
        self.net = net
        self.calls = 0

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        return self.net(x, t)


class StepIndexNet(nn.Module):
    """The network with k-diffusion's DDPM time convention: the 0-based step index ``n`` (a
    float, ``sigma_to_t``) is our time ``t = (n + 1) / N``."""

    def __init__(self, net: Callable[..., Tensor]) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, n: Tensor) -> Tensor:
        return self.net(x, (n.to(x.dtype) + 1.0) / N_TRAIN)


# =========================================================================== timing


class Clock:
    """Wall time (and the process's CPU time on the CPU) of a callable, synchronised on CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, fn: Callable[[], Any]) -> tuple[float, float, Any]:
        self.sync()
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        self.sync()
        return time.perf_counter() - w0, time.process_time() - c0, out


@dataclass
class Row:
    """One (network, batch, budget, sampler) measurement."""

    net: str
    batch: int
    budget: int
    method: str
    library: str  # "ours" | "diffusers" | "k-diffusion"
    kind: str  # "ode" | "sde"
    nfe: int = 0
    wall_ms: float = math.nan  # median wall time of one solve
    cpu_ms: float = math.nan  # median process CPU time (CPU runs)
    forward_ms: float = math.nan  # median forward time (paired blocks)
    ratio: float = math.nan  # median over repeats of wall / (nfe * forward)
    ratio_cpu: float = math.nan  # the same with process CPU times (CPU runs)
    overhead_us: float = math.nan  # (wall - nfe * forward) / nfe: per evaluation
    overhead_us_min: float = math.nan  # the same from the fastest run and fastest forward
    ops_per_nfe: float = math.nan  # compute operators dispatched per NFE (null net)
    syncs_per_nfe: float = math.nan  # host synchronisations per NFE (null net)
    shared: str = ""  # peers: our method(s) with the same algorithm
    note: str = ""


def paired_ratio(
    clock: Clock, run: Callable[[], int], forward: Callable[[], Any], repeats: int, block: int
) -> dict[str, float]:
    """Median wall/CPU time of ``run`` and its overhead ratio against a forward block timed
    just before each run."""
    walls, cpus, fwds, fwd_cpus, ratios, ratios_cpu = [], [], [], [], [], []
    nfe = 0
    for _ in range(repeats):
        fw, fc, _ = clock(lambda: [forward() for _ in range(block)])
        fw, fc = fw / block, fc / block
        w, c, nfe = clock(run)
        walls.append(w)
        cpus.append(c)
        fwds.append(fw)
        fwd_cpus.append(fc)
        ratios.append(w / (nfe * fw))
        ratios_cpu.append(c / (nfe * fc) if fc > 0 else math.nan)
    wall, fwd = statistics.median(walls), statistics.median(fwds)
    return {
        "nfe": nfe,
        "wall_ms": 1e3 * wall,
        "cpu_ms": 1e3 * statistics.median(cpus),
        "forward_ms": 1e3 * fwd,
        "ratio": statistics.median(ratios),
        "ratio_cpu": statistics.median(ratios_cpu),
        "overhead_us": 1e6 * (wall - nfe * fwd) / nfe,
        "overhead_us_min": 1e6 * (min(walls) - nfe * min(fwds)) / nfe,
    }


# =========================================================================== our samplers


@dataclass(frozen=True)
class Sampler:
    """One timed sampler: ``run() -> nfe`` (a fresh solve from the same x_T each time)."""

    method: str
    library: str
    kind: str
    run: Callable[[], int]
    shared: str = ""
    note: str = ""


def our_samplers(
    model: sd.ScoreModel,
    x_t: Tensor,
    budget: int,
    device: torch.device,
    methods: list[str],
    adaptive_tol: float,
) -> list[Sampler]:
    """Every registered method through ``sd.sample`` (adaptive ones at ``rtol = atol =
    adaptive_tol``, their NFE chosen by the solver, capped at :data:`ADAPTIVE_MAX_NFE`)."""
    out = []
    for info in sd.solvers_available():
        if methods and info.name not in methods:
            continue
        cls = solvers.SOLVERS[info.name]
        if cls.adaptive:
            solver: Any = solvers.get_solver(
                info.name, rtol=adaptive_tol, atol=adaptive_tol, max_nfe=ADAPTIVE_MAX_NFE
            )
            nfe_arg: int | None = None
            note = f"adaptive, rtol = atol = {adaptive_tol:g}"
        else:
            solver, nfe_arg, note = info.name, budget, ""

        def run(solver: Any = solver, nfe_arg: int | None = nfe_arg) -> int:
            g = torch.Generator(device).manual_seed(0)
            return sd.sample(model, solver, nfe_arg, x_init=x_t, generator=g).nfe

        out.append(Sampler(info.name, "ours", info.kind, run, note=note))
    return out


# =========================================================================== peers


def _diffusers_config() -> dict[str, Any]:
    """The chain and spacing of the accuracy benchmark (``bench/peer_samplers.py``)."""
    return {
        "num_train_timesteps": N_TRAIN,
        "beta_start": peers.BETA_START,
        "beta_end": peers.BETA_END,
        "beta_schedule": "linear",
        "timestep_spacing": "trailing",
    }


def diffusers_samplers(net: CountingNet, x_t: Tensor, budget: int) -> list[Sampler]:
    """diffusers schedulers in the loop of a diffusers pipeline: ``scale_model_input``, one
    network call at the timestep ``n`` (our time ``(n + 1) / N``), ``step``."""
    import diffusers as df

    c = _diffusers_config()
    b = x_t.shape[0]
    device = x_t.device
    specs: list[tuple[str, str, str, Callable[[], Any], int, bool]] = [
        # name, kind, our shared method(s), scheduler factory, steps, stochastic
        (
            "DDIM",
            "ode",
            "ddim",
            lambda: df.DDIMScheduler(**c, clip_sample=False, set_alpha_to_one=False),
            budget,
            False,
        ),
        (
            "DPMSolverMultistep(2M)",
            "ode",
            "dpmpp_2m",
            lambda: df.DPMSolverMultistepScheduler(
                **c, solver_order=2, final_sigmas_type="sigma_min"
            ),
            budget,
            False,
        ),
        (
            "DPMSolverMultistep(3M)",
            "ode",
            "dpmpp_3m",
            lambda: df.DPMSolverMultistepScheduler(
                **c, solver_order=3, final_sigmas_type="sigma_min"
            ),
            budget,
            False,
        ),
        (
            "UniPCMultistep",
            "ode",
            "unipc",
            lambda: df.UniPCMultistepScheduler(
                **c, solver_order=2, solver_type="bh2", final_sigmas_type="sigma_min"
            ),
            budget,
            False,
        ),
        (
            "DEISMultistep(3)",
            "ode",
            "deis",
            lambda: df.DEISMultistepScheduler(**c, solver_order=3),
            budget,
            False,
        ),
        (
            "EulerDiscrete",
            "ode",
            "euler",
            lambda: df.EulerDiscreteScheduler(**c, final_sigmas_type="sigma_min"),
            budget,
            False,
        ),
        (
            "HeunDiscrete",
            "ode",
            "heun",
            lambda: df.HeunDiscreteScheduler(**c),
            (budget + 1) // 2,
            False,
        ),
        (
            "PNDM(PLMS)",
            "ode",
            "plms",
            lambda: df.PNDMScheduler(**c, skip_prk_steps=True),
            budget - 1,
            False,
        ),
        (
            "EulerAncestralDiscrete",
            "sde",
            "ancestral",
            lambda: df.EulerAncestralDiscreteScheduler(**c),
            budget,
            True,
        ),
        ("DDPM", "sde", "reverse_diffusion", lambda: df.DDPMScheduler(**c), budget, True),
    ]
    out = []
    for name, kind, shared, make, steps, stochastic in specs:

        def run(
            make: Callable[[], Any] = make, steps: int = steps, noisy: bool = stochastic
        ) -> int:
            sched = make()
            sched.set_timesteps(steps, device=device)
            kw = {"generator": torch.Generator(device).manual_seed(0)} if noisy else {}
            x = x_t * sched.init_noise_sigma
            net.calls = 0
            for step_t in sched.timesteps:
                inp = sched.scale_model_input(x, step_t)
                eps = net(inp, ((step_t.to(x.dtype) + 1.0) / N_TRAIN).expand(b))
                x = sched.step(eps, step_t, x, **kw).prev_sample
            return net.calls

        out.append(Sampler(f"diffusers:{name}", "diffusers", kind, run, shared))
    return out


def load_k_diffusion_external(kd: peers.KDiffusion) -> Any:
    """``k_diffusion/external.py`` (``DiscreteEpsDDPMDenoiser``) loaded next to the
    ``sampling.py`` that ``peer_samplers.load_k_diffusion`` loaded (it needs only
    ``sampling.append_zero`` and ``utils.append_dims`` of its package)."""
    assert kd.sampling is not None
    pkg = kd.sampling.__name__.rsplit(".", 1)[0]
    path = Path(kd.sampling.__file__).with_name("external.py")
    spec = importlib.util.spec_from_file_location(f"{pkg}.external", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class LeanEpsDenoiser(nn.Module):
    """k-diffusion's ``DiscreteEpsDDPMDenoiser`` maths (``D = x - sigma eps(x / sqrt(sigma^2 +
    1), t(sigma))`` in EDM variables) with the time from the SDE's closed-form inverse
    ``t(sigma) = t_from_log_snr(-2 log sigma)`` instead of k-diffusion's interpolation in a
    table of the 1000 chain sigmas (which builds a ``(1000, B)`` array of distances per call:
    see the ``[DiscreteEpsDDPMDenoiser]`` row)."""

    def __init__(self, net: Callable[..., Tensor], sde: Any) -> None:
        super().__init__()
        self.net, self.sde = net, sde

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        s64 = sigma.to(F64)
        t = self.sde._t_from_log_snr(-2.0 * torch.log(s64)).clamp(self.sde.t_min, self.sde.T)
        s = solvers.append_dims(sigma.to(x.dtype), x.ndim)
        eps = self.net(x * torch.rsqrt(s * s + 1.0), t.to(x.dtype))
        return x - s * eps


def k_diffusion_samplers(
    kd: peers.KDiffusion,
    net: CountingNet,
    x_t: Tensor,
    budget: int,
    alphas_cumprod: Tensor,
    sde: Any,
) -> list[Sampler]:
    """k-diffusion's samplers as its README uses them with a DDPM eps model, in EDM variables,
    on the Karras sigmas of the chain with the final 0 appended; the denoiser is
    :class:`LeanEpsDenoiser`, and one extra row runs ``sample_euler`` with k-diffusion's own
    ``DiscreteEpsDDPMDenoiser`` (continuous step index, no quantisation)."""
    ks = kd.sampling
    assert ks is not None
    device = x_t.device
    ext = load_k_diffusion_external(kd)
    discrete = ext.DiscreteEpsDDPMDenoiser(
        StepIndexNet(net), alphas_cumprod.to(device=device, dtype=torch.float32), quantize=False
    )
    s_min, s_max = float(discrete.sigma_min), float(discrete.sigma_max)  # once, as a user does
    lean = LeanEpsDenoiser(net, sde)

    def no_noise(sigma: Tensor, sigma_next: Tensor) -> None:
        return None

    def one(nfe: int) -> int:  # one evaluation per step
        return nfe

    def two(nfe: int) -> int:  # two per step, one on the last step (an Euler step to 0)
        return (nfe + 1) // 2

    specs: list[tuple[str, str, str, str, Callable[[int], int], dict[str, Any], Any]] = [
        ("euler", "ode", "euler", "sample_euler", one, {}, lean),
        ("heun", "ode", "heun", "sample_heun", two, {}, lean),
        ("dpm_2", "ode", "dpm_solver_2", "sample_dpm_2", two, {}, lean),
        ("lms", "ode", "ipndm_v", "sample_lms", one, {}, lean),
        (
            "dpmpp_2s(eta=0)",
            "ode",
            "dpmpp_2s",
            "sample_dpmpp_2s_ancestral",
            two,
            {"eta": 0.0},
            lean,
        ),
        ("dpmpp_2m", "ode", "dpmpp_2m", "sample_dpmpp_2m", one, {}, lean),
        (
            "dpmpp_3m(eta=0)",
            "ode",
            "dpmpp_3m",
            "sample_dpmpp_3m_sde",
            one,
            {"eta": 0.0, "noise_sampler": no_noise},
            lean,
        ),
        ("euler_ancestral", "sde", "ancestral", "sample_euler_ancestral", one, {}, lean),
        ("dpmpp_2m_sde", "sde", "dpmpp_2m_sde", "sample_dpmpp_2m_sde", one, {}, lean),
        ("euler [DiscreteEpsDDPMDenoiser]", "ode", "", "sample_euler", one, {}, discrete),
    ]
    out = []
    for name, kind, shared, fn_name, steps_of, kw, den in specs:

        def run(fn: Any, n: int, kw: dict[str, Any], den: Any) -> int:
            torch.manual_seed(0)  # the stochastic samplers draw from the global generator
            grid = ks.get_sigmas_karras(n, s_min, s_max, device=device)
            net.calls = 0
            fn(den, x_t * grid[0], grid, disable=True, **kw)
            return net.calls

        bound = functools.partial(run, getattr(ks, fn_name), steps_of(budget), kw, den)
        out.append(Sampler(f"k-diffusion:{name}", "k-diffusion", kind, bound, shared))

    def run_fast() -> int:
        net.calls = 0
        ks.sample_dpm_fast(lean, x_t * s_max, s_min, s_max, budget, disable=True)
        return net.calls

    out.append(Sampler("k-diffusion:dpm_fast", "k-diffusion", "ode", run_fast, "dpm_solver_3"))
    return out


# =========================================================================== sync counting


class SyncCounter(TorchDispatchMode):
    """Counts ``aten::_local_scalar_dense`` calls (every ``.item()``, ``float(t)``, ``bool(t)``
    of a tensor: a host synchronisation on an accelerator) and the compute operators
    dispatched (``ops``: every aten operator except views, metadata and allocations, i.e.
    about one kernel launch each on a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.ops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        elif func.overloadpacket.__name__ not in _NOT_COMPUTE:
            self.ops += 1
        return func(*args, **(kwargs or {}))


_NOT_COMPUTE = frozenset(
    {
        "view",
        "alias",
        "as_strided",
        "select",
        "slice",
        "unsqueeze",
        "squeeze",
        "expand",
        "t",
        "transpose",
        "permute",
        "reshape",
        "_unsafe_view",
        "unbind",
        "split",
        "detach",
        "empty",
        "empty_like",
        "empty_strided",
        "new_empty",
        "lift_fresh",
        "_reshape_alias",
        "unfold",
    }
)


class CosineSchedule:
    """A VP schedule in plain torch (``alpha = cos(pi t / 2)``), for solver-layer sync counts
    without the scoresde layer's host-side range checks."""

    def alpha(self, t: Tensor) -> Tensor:
        return torch.cos(0.5 * math.pi * t)

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sin(0.5 * math.pi * t)

    def log_snr(self, t: Tensor) -> Tensor:
        return -2.0 * torch.log(torch.tan(0.5 * math.pi * t))

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        return (2.0 / math.pi) * torch.atan(torch.exp(-0.5 * lam))


def _pure_terms() -> dict[type, object]:
    schedule = CosineSchedule()
    return {
        solvers.DenoiserTermLike: solvers.DenoiserTerm(lambda x, t: 0.5 * x, schedule),
        solvers.ODETermLike: solvers.ODETerm(lambda x, t: -0.5 * x),
        solvers.SDETermLike: solvers.SDETerm(
            lambda x, t: -0.5 * x, lambda x, t: torch.ones((), dtype=x.dtype, device=x.device)
        ),
    }


def count_syncs(fn: Callable[[], Any]) -> int:
    counter = SyncCounter()
    with counter:
        fn()
    return counter.count


def sync_table(device: torch.device, model: sd.ScoreModel, x_t: Tensor) -> list[dict[str, Any]]:
    """Host synchronisations per step, for every fixed-grid method: in the solver layer alone
    (``solvers.integrate`` with a pure term on ``device``) and in ``sd.sample`` (with the model),
    from solves of 10 and 20 steps."""
    rows = []
    terms = _pure_terms()
    x = torch.randn(8, 2, device=device)
    for info in sd.solvers_available():
        cls = solvers.SOLVERS[info.name]
        if cls.adaptive or hasattr(cls, "solve"):
            continue
        counts = []
        for n in (10, 20):
            ts = torch.linspace(0.95, 0.05, n + 1, dtype=F64)
            g = torch.Generator(device).manual_seed(0)
            solve = functools.partial(
                solvers.integrate, cls(), terms[cls.term_type], x, ts, generator=g
            )
            counts.append(count_syncs(solve))
        full = []
        for nfe in (10, 20):
            g = torch.Generator(device).manual_seed(0)
            draw = functools.partial(sd.sample, model, info.name, nfe, x_init=x_t, generator=g)
            full.append(count_syncs(draw))
        rows.append(
            {
                "method": info.name,
                "solver_layer_per_step": (counts[1] - counts[0]) / 10,
                "solver_layer_total_10": counts[0],
                "sample_per_nfe": (full[1] - full[0]) / 10,
                "sample_total_10": full[0],
            }
        )
    return rows


# =========================================================================== the run


@dataclass
class Context:
    args: argparse.Namespace
    device: torch.device
    clock: Clock
    kd: peers.KDiffusion
    sde: Any
    alphas_cumprod: Tensor
    compile_s: dict[str, float] = field(default_factory=dict)


def prepare_net(spec: NetSpec, ctx: Context) -> nn.Module:
    """Build, move, wrap (autocast, compile) one network."""
    args = ctx.args
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net: nn.Module = spec.build().to(ctx.device).eval()
    if args.dtype != "fp32":
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
        net = AutocastNet(net, dtype, ctx.device.type)
    if args.compile:
        mode = None if args.compile_mode == "default" else args.compile_mode
        compiled = torch.compile(net, mode=mode)
        net = CloneOutput(compiled) if args.compile_mode == "reduce-overhead" else compiled  # type: ignore[assignment]
    return net


def measure_setting(
    spec: NetSpec, batch: int, budgets: list[int], ctx: Context, log: Callable[[str], None]
) -> list[Row]:
    args = ctx.args
    device = ctx.device
    net = prepare_net(spec, ctx)
    counting = CountingNet(net)
    model = sd.ScoreModel(counting, ctx.sde, prediction="eps")
    g = torch.Generator(device).manual_seed(1)
    x_t = torch.randn((batch, *spec.sample_shape), generator=g, device=device)
    t_net = torch.full((batch,), 0.5, device=device)
    t64 = torch.tensor(0.5, dtype=F64, device=device)
    rows: list[Row] = []

    def forward() -> Tensor:
        return net(x_t, t_net)

    with torch.no_grad():
        w, _, _ = ctx.clock(forward)  # first call: compiles with --compile
        ctx.compile_s[f"{spec.name}@{batch}"] = w
        for _ in range(args.warmup + 2):
            forward()
        # the model call (parametrisation layer) against the raw forward, paired
        mc = paired_ratio(ctx.clock, lambda: (model.x0(x_t, t64), 1)[1], forward, 7, 3)
        log(
            f"{spec.name} batch {batch}: forward {mc['forward_ms']:.3f} ms, "
            f"model.x0 call / forward = {mc['ratio']:.3f}"
        )
        rows.append(
            Row(
                spec.name,
                batch,
                1,
                "model.x0 (one call)",
                "ours",
                "-",
                **{k: v for k, v in mc.items()},  # type: ignore[arg-type]
                note="ScoreModel eps -> x0 conversion around one forward",
            )
        )
        for budget in budgets:
            samplers = our_samplers(model, x_t, budget, device, args.methods, args.adaptive_tol)
            if not args.no_peers:
                samplers += diffusers_samplers(counting, x_t, budget)
                if ctx.kd.sampling is not None:
                    samplers += k_diffusion_samplers(
                        ctx.kd, counting, x_t, budget, ctx.alphas_cumprod, ctx.sde
                    )
            for s in samplers:
                row = Row(spec.name, batch, budget, s.method, s.library, s.kind, shared=s.shared)
                row.note = s.note
                try:
                    for _ in range(args.warmup):
                        s.run()
                    block = max(1, min(budget, 5))
                    reps = args.repeats * (4 if spec.name == "null" else 1)  # cheap: more
                    res = paired_ratio(ctx.clock, s.run, forward, reps, block)
                    for k, v in res.items():
                        setattr(row, k, v)
                except Exception as err:  # noqa: BLE001 - a failing sampler is a result
                    row.note = f"failed: {type(err).__name__}: {err}"[:200]
                    if args.verbose:
                        traceback.print_exc()
                if spec.name == "null" and row.nfe > 0:  # deterministic op and sync counts
                    counter = SyncCounter()
                    with counter:
                        s.run()
                    row.ops_per_nfe = counter.ops / row.nfe
                    row.syncs_per_nfe = counter.count / row.nfe
                rows.append(row)
                log(
                    f"  {spec.name}@{batch} NFE<={budget} {s.method:40s} nfe={row.nfe:4d} "
                    f"wall={row.wall_ms:9.2f} ms ratio={row.ratio:6.3f} "
                    f"(cpu {row.ratio_cpu:6.3f}) {row.note[:60]}"
                )
    return rows


def pair_ratios(rows: list[Row]) -> list[dict[str, Any]]:
    """``ours / peer`` overhead ratios at equal budget, for every peer and its shared method."""
    out = []
    by_key = {(r.net, r.batch, r.budget, r.method): r for r in rows}
    for r in rows:
        if r.library == "ours" or not r.shared:
            continue
        ours = by_key.get((r.net, r.batch, r.budget, r.shared))
        if ours is None or not (ours.ratio > 0 and r.ratio > 0):
            continue
        out.append(
            {
                "net": r.net,
                "batch": r.batch,
                "budget": r.budget,
                "ours": ours.method,
                "peer": r.method,
                "nfe_ours": ours.nfe,
                "nfe_peer": r.nfe,
                "ours_over_peer": ours.ratio / r.ratio,
                "ours_over_peer_cpu": ours.ratio_cpu / r.ratio_cpu
                if ours.ratio_cpu > 0 and r.ratio_cpu > 0
                else math.nan,
            }
        )
    return out


# =========================================================================== outputs


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    for pkg in ("diffusers", "k-diffusion"):
        with contextlib.suppress(Exception):
            info[pkg] = importlib.metadata.version(pkg)
    return info


def _fmt(v: float, spec: str = ".3f") -> str:
    return "–" if not isinstance(v, (int, float)) or math.isnan(v) else format(v, spec)


def render(result: dict[str, Any]) -> str:
    """The markdown tables."""
    rows = [Row(**r) for r in result["rows"]]
    pairs = result["pairs"]
    cpu = result["device"] == "cpu"
    m = result["machine"]
    lines = [
        f"Sampling speed, device {result['device']} "
        f"({m.get('gpu') or m['cpu']}), torch {m['torch']}, {m['threads']} thread(s), "
        f"our SDE {result['args'].get('sde', 'chain')}, "
        f"dtype {result['args']['dtype']}, compile {result['args']['compile']}"
        f"{' (' + result['args']['compile_mode'] + ')' if result['args']['compile'] else ''}, "
        f"load average {result['load_start']} (start) / {result['load_end']} (end), "
        f"{result['date']}, {result['seconds']:.0f} s.",
        "",
        "Overhead ratio = wall time / (NFE x one forward of the raw network at the same "
        "batch); per-NFE overhead = (wall - NFE x forward) / NFE."
        + (" CPU-time columns: the same from this process's CPU time." if cpu else ""),
        "",
    ]
    for net, batch in dict.fromkeys((r.net, r.batch) for r in rows):
        sel = [r for r in rows if r.net == net and r.batch == batch]
        desc = result["nets"][net]
        fwd = statistics.median([r.forward_ms for r in sel if r.forward_ms > 0] or [math.nan])
        lines += [f"### {net}, batch {batch}: {desc}; forward {fwd:.3f} ms", ""]
        head = "| sampler | kind | budget | NFE | wall (ms) | ratio |"
        sep = "|---|---|---:|---:|---:|---:|"
        if cpu:
            head += " ratio (CPU time) |"
            sep += "---:|"
        head += " overhead / NFE (µs) | min (µs) |"
        sep += "---:|---:|"
        counts = any(not math.isnan(r.ops_per_nfe) for r in sel)
        if counts:
            head += " ops / NFE | syncs / NFE |"
            sep += "---:|---:|"
        head += " ours / peer | note |"
        sep += "---|---|"
        lines += [head, sep]
        for r in sel:
            vs = [
                f"{p['peer'].split(':', 1)[0]}:{p['peer'].split(':', 1)[1]} "
                f"{_fmt(p['ours_over_peer'], '.2f')}"
                for p in pairs
                if p["net"] == net
                and p["batch"] == batch
                and p["budget"] == r.budget
                and (p["ours"] == r.method if r.library == "ours" else p["peer"] == r.method)
            ]
            name = f"**{r.method}**" if r.library == "ours" else r.method
            line = (
                f"| {name} | {r.kind} | {r.budget} | {r.nfe} | {_fmt(r.wall_ms, '.2f')} | "
                f"{_fmt(r.ratio)} |"
            )
            if cpu:
                line += f" {_fmt(r.ratio_cpu)} |"
            line += f" {_fmt(r.overhead_us, '.0f')} | {_fmt(r.overhead_us_min, '.0f')} |"
            if counts:
                line += f" {_fmt(r.ops_per_nfe, '.1f')} | {_fmt(r.syncs_per_nfe, '.1f')} |"
            line += f" {'; '.join(vs)} | {r.note} |"
            lines.append(line)
        lines.append("")
    # summary
    lines += ["### Summary", ""]
    lines += [
        "| network | batch | budget | ours: median ratio | ours: worst ratio (method) "
        "| fixed-step ODE methods: median | ours / diffusers (geo. mean) "
        "| ours / k-diffusion (geo. mean) |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for net, batch, budget in dict.fromkeys((r.net, r.batch, r.budget) for r in rows):
        if budget == 1:
            continue
        ours = [
            r
            for r in rows
            if (r.net, r.batch, r.budget, r.library) == (net, batch, budget, "ours") and r.ratio > 0
        ]
        if not ours:
            continue
        worst = max(ours, key=lambda r: r.ratio)
        ode = [r.ratio for r in ours if r.kind == "ode" and "adaptive" not in r.note]
        gm = {}
        for lib in ("diffusers", "k-diffusion"):
            vals = [
                p["ours_over_peer"]
                for p in pairs
                if (p["net"], p["batch"], p["budget"]) == (net, batch, budget)
                and p["peer"].startswith(lib)
            ]
            gm[lib] = math.exp(statistics.mean(math.log(v) for v in vals)) if vals else math.nan
        lines.append(
            f"| {net} | {batch} | {budget} | {_fmt(statistics.median(r.ratio for r in ours))} | "
            f"{_fmt(worst.ratio)} ({worst.method}) | "
            f"{_fmt(statistics.median(ode) if ode else math.nan)} | "
            f"{_fmt(gm['diffusers'], '.2f')} | {_fmt(gm['k-diffusion'], '.2f')} |"
        )
    lines.append("")
    if result.get("syncs"):
        lines += [
            "### Host synchronisations per step (fixed-grid methods)",
            "",
            "`aten::_local_scalar_dense` calls per step: solver layer alone "
            "(`solvers.integrate`, pure term) and `sd.sample` (per evaluation; on the CPU this "
            "includes `SDE._time`'s host-side range checks, skipped on accelerators).",
            "",
            "| method | solver layer / step | solver layer, whole 10-step solve "
            "| sd.sample / NFE | sd.sample, whole NFE-10 solve |",
            "|---|---:|---:|---:|---:|",
        ]
        for s in result["syncs"]:
            lines.append(
                f"| {s['method']} | {s['solver_layer_per_step']:g} | "
                f"{s['solver_layer_total_10']} | {s['sample_per_nfe']:g} | "
                f"{s['sample_total_10']} |"
            )
        lines.append("")
    return "\n".join(lines)


def output_stem(args: argparse.Namespace) -> str:
    parts = ["speed", args.device.split(":")[0]]
    if args.dtype != "fp32":
        parts.append(args.dtype)
    if args.compile:
        parts.append("compile" if args.compile_mode == "default" else args.compile_mode)
    if args.quick:
        parts.append("quick")
    if args.tag:
        parts.append(args.tag)
    return "_".join(parts)


def write(result: dict[str, Any], out: Path, stem: str) -> str:
    out.mkdir(parents=True, exist_ok=True)
    with (out / f"{stem}.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(Row.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(result["rows"])
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str))
    text = render(result)
    (out / f"{stem}.md").write_text(text)
    return text


# =========================================================================== profile


def profile(ctx: Context, method: str, out: Path) -> str:
    """torch.profiler over one ``sd.sample`` call (after a warm-up) per network: the operators
    by self time and by count, and the host-synchronisation count."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU]
    if ctx.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    texts = []
    for spec in net_specs(str(ctx.device), True, None):
        batch = spec.batches[0]
        net = prepare_net(spec, ctx)
        model = sd.ScoreModel(net, ctx.sde, prediction="eps")
        x_t = torch.randn((batch, *spec.sample_shape), device=ctx.device)
        with torch.no_grad():
            sd.sample(model, method, 10, x_init=x_t)
            ctx.clock.sync()
            with torch_profile(activities=activities) as prof:
                res = sd.sample(model, method, 10, x_init=x_t)
                ctx.clock.sync()
            syncs = count_syncs(functools.partial(sd.sample, model, method, 10, x_init=x_t))
        sort = "self_cuda_time_total" if ctx.device.type == "cuda" else "self_cpu_time_total"
        texts += [
            f"== {method}, {spec.name} batch {batch}, NFE {res.nfe}, device {ctx.device}, "
            f"_local_scalar_dense calls in the whole sd.sample: {syncs}",
            prof.key_averages().table(sort_by=sort, row_limit=25),
            prof.key_averages().table(sort_by="count", row_limit=25),
        ]
    text = "\n".join(texts)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"speed_profile_{ctx.device.type}.txt").write_text(text)
    return text


# =========================================================================== main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="NFE 10, U-Net batch 8 (CPU), 3 repeats, adaptive methods at rtol = atol = 1e-2",
    )
    ap.add_argument("--nets", default="null,mlp,unet", help="comma-separated: null, mlp, unet")
    ap.add_argument("--nfe", default=None, help="comma-separated budgets (default 10,20)")
    ap.add_argument("--unet-batches", default=None, help="comma-separated U-Net batches")
    ap.add_argument("--methods", default="", help="comma-separated subset of our methods")
    ap.add_argument("--no-peers", action="store_true", help="ours only")
    ap.add_argument(
        "--sde",
        choices=("vp", "chain"),
        default="vp",
        help="our SDE: the continuous VP SDE of the DDPM betas, or the discrete chain",
    )
    ap.add_argument(
        "--adaptive-tol", type=float, default=None, help="rtol = atol of adaptive methods (1e-3)"
    )
    ap.add_argument("--repeats", type=int, default=None, help="timed runs (default 5; quick 3)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    ap.add_argument("--compile", action="store_true", help="torch.compile the network")
    ap.add_argument(
        "--compile-mode",
        choices=("default", "reduce-overhead", "max-autotune"),
        default="default",
        help="torch.compile mode (reduce-overhead: CUDA graphs of the network)",
    )
    ap.add_argument("--no-sync-check", action="store_true")
    ap.add_argument("--profile", default=None, metavar="METHOD", help="profile one method")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--out", type=Path, default=_HERE / "results")
    ap.add_argument("--tag", default="", help="suffix of the output names")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False")
    budgets = (
        [int(v) for v in args.nfe.split(",")] if args.nfe else ([10] if args.quick else [10, 20])
    )
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if args.adaptive_tol is None:
        args.adaptive_tol = 1e-2 if args.quick else 1e-3
    unet_batches = (
        tuple(int(v) for v in args.unet_batches.split(",")) if args.unet_batches else None
    )
    if args.sde == "chain":
        sde: Any = peers.diffusers_chain_sde()
    else:
        sde = sd.VPSDE(beta_min=0.1, beta_max=20.0, t_min=1.0 / N_TRAIN)
    import diffusers

    ac = diffusers.DDIMScheduler(
        num_train_timesteps=N_TRAIN, beta_start=peers.BETA_START, beta_end=peers.BETA_END
    ).alphas_cumprod
    ctx = Context(args, device, Clock(device), peers.load_k_diffusion(), sde, ac)
    if args.profile:
        print(profile(ctx, args.profile, args.out))
        return

    def log(msg: str) -> None:
        print(msg, flush=True)

    load_start = loadavg()
    t0 = time.perf_counter()
    log(f"device {device}, torch {torch.__version__}, load average {load_start}")
    if ctx.kd.sampling is None:
        log(f"k-diffusion not available: {ctx.kd.reason}")
    specs = [s for s in net_specs(args.device, args.quick, unet_batches) if s.name in args.nets]
    rows: list[Row] = []
    syncs: list[dict[str, Any]] = []

    def result() -> dict[str, Any]:
        return {
            "device": device.type,
            "machine": machine_info(device),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "date": time.strftime("%Y-%m-%d"),
            "load_start": load_start,
            "load_end": loadavg(),
            "seconds": time.perf_counter() - t0,
            "nets": {s.name: s.description for s in specs},
            "first_call_s": ctx.compile_s,
            "rows": [asdict(r) for r in rows],
            "pairs": pair_ratios(rows),
            "syncs": syncs,
        }

    for spec in specs:
        for batch in spec.batches:
            rows += measure_setting(spec, batch, budgets, ctx, log)
            write(result(), args.out, output_stem(args))  # partial results survive a stop
    if not args.no_sync_check:
        small = sd.ScoreModel(MLP(2).to(device).eval(), sde, prediction="eps")
        syncs = sync_table(device, small, torch.randn(8, 2, device=device))
    text = write(result(), args.out, output_stem(args))
    print()
    print(text)


if __name__ == "__main__":
    main()
