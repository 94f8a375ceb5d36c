"""The training loop: AdamW, warm-up, clipping, an EMA of the weights, resumable checkpoints,
periodic evaluation (samples, test bits/dim through the PF-ODE and the ELBO), metrics.

One step (:meth:`Trainer.train_step`):

1. the batch: this process's indices for the step (:class:`scoresde.distributed.ShardedBatches`:
   a reshuffle per epoch, a pure function of ``(seed, step)``), uniformly dequantized for
   discrete data when ``data.dequantize`` (``x + Delta (u - 1/2)``, the density whose bits/dim
   the evaluation measures);
2. the loss :func:`scoresde.dsm_loss` with the configured weighting and time sampler; its times
   and noise come from a generator seeded by ``(seed, rank, step)``, so no generator state has
   to survive a restart and the processes draw different noise; bfloat16 autocast on CUDA. A
   class-conditional network (``model.num_classes``) gets the batch's labels, each replaced by
   the null label with probability ``loss.label_dropout`` (drawn from the same generator,
   after the dequantization noise), so that it learns the conditional and the unconditional model of
   classifier-free guidance (Ho & Salimans 2022, Algorithm 1);
3. backward (gradients averaged over the processes by DistributedDataParallel), the global
   gradient norm clipped to ``optim.grad_clip``, an AdamW step, the learning-rate schedule
   (linear warm-up, then constant or cosine), and the EMA update: torch's
   :class:`~torch.optim.swa_utils.AveragedModel` with
   :func:`~torch.optim.swa_utils.get_ema_multi_avg_fn` and ``use_buffers=True``.

Every ``train.ckpt_every`` steps (and at the last one) rank 0 writes a checkpoint
(:mod:`scoresde.checkpoint`): weights and EMA in safetensors, and the optimizer, scheduler,
step, EMA counter and the RNG states of every process (torch CPU, CUDA, numpy, Python). With
``train.resume`` a run continues from the newest valid checkpoint in ``train.out_dir``: on the
CPU, N steps + kill + resume gives *bitwise* the parameters, EMA and optimizer state of an
uninterrupted run (the dropout masks come from the restored global RNG; the rest is a function
of the step).

Outputs in ``train.out_dir``: ``config.toml`` (the resolved configuration), ``metrics.csv``
(step, epoch, loss, lr, grad_norm, examples/s, elapsed seconds), ``eval.csv`` (test bits/dim
with 95% intervals, NFE, ELBO), ``samples/step_*.png``, ``loss.png``, ``checkpoints/``, and
TensorBoard events in ``tb/`` when TensorBoard is installed.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import logging
import math
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from scoresde import checkpoint as ckpt
from scoresde import distributed as dist_utils
from scoresde.config import Config, ConfigError, DataConfig, ModelConfig, SDEConfig
from scoresde.config import dumps as config_dumps
from scoresde.config import from_json as config_from_json
from scoresde.config import to_json as config_to_json
from scoresde.data import (
    TOY_DATASETS,
    Dataset,
    load_digits,
    load_image_folder,
    load_mnist_subset,
    load_npz,
    load_toy,
)
from scoresde.distributed import DistInfo, ShardedBatches
from scoresde.guidance import CFGModel, drop_labels
from scoresde.losses import get_t_sampler, get_weighting
from scoresde.models import MLP, UNet
from scoresde.parametrization import EDMPrecond, ScoreModel
from scoresde.schedules import EDMSDE, VESDE, VPSDE, CosineVPSDE, SubVPSDE
from scoresde.sde import SDE

__all__ = [
    "Trainer",
    "TrainResult",
    "EvalResult",
    "BitsPerDim",
    "LoadedModel",
    "train",
    "build_dataset",
    "build_sde",
    "build_network",
    "load_model",
    "sample_sharded",
    "bits_per_dim_sharded",
]

logger = logging.getLogger("scoresde.training")

METRICS_FIELDS = ("step", "epoch", "loss", "lr", "grad_norm", "examples_per_s", "elapsed_s")
EVAL_FIELDS = (
    "step",
    "n_test",
    "bpd",
    "bpd_ci95",
    "nfe",
    "elbo_bpd",
    "elbo_ci95",
    "samples",
    "eval_s",
)


# =========================================================================== building blocks


def build_dataset(cfg: DataConfig) -> Dataset:
    """The dataset of a ``[data]`` section."""
    if cfg.name in TOY_DATASETS:
        return load_toy(cfg.name, n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.seed)
    common: dict[str, Any] = {
        "test_fraction": cfg.test_fraction,
        "seed": cfg.seed,
        "data_range": cfg.data_range,
    }
    if cfg.name == "digits":
        return load_digits(**common)
    if cfg.name == "mnist_subset":
        return load_mnist_subset(**common)
    if cfg.name == "npz":
        return load_npz(cfg.path, key=cfg.key or None, labels_key=cfg.labels_key or None, **common)
    if cfg.name == "image_folder":
        return load_image_folder(cfg.path, mode=cfg.mode, size=cfg.image_size, **common)
    raise ConfigError(f"unknown data.name {cfg.name!r}")  # unreachable: the config is validated


_SDES: dict[str, Callable[..., SDE]] = {
    "vp": VPSDE,
    "subvp": SubVPSDE,
    "cosine": CosineVPSDE,
    "ve": VESDE,
    "edm": EDMSDE,
}


def build_sde(cfg: SDEConfig) -> SDE:
    """The SDE of an ``[sde]`` section (unset parameters: the family's defaults)."""
    return _SDES[cfg.name](**cfg.kwargs())


_LABELLED = (
    "digits, mnist_subset, two_moons, eight_gaussians, pinwheel, an image_folder with one "
    "sub-folder per class, an npz with data.labels_key"
)


def _training_labels(ds: Dataset, num_classes: int) -> Tensor:
    """The training labels of ``ds``, checked against ``model.num_classes``."""
    y = ds.train_labels
    if y is None:
        raise ConfigError(
            f"model.num_classes={num_classes} needs a labelled dataset, but {ds.name!r} has no "
            f"labels; labelled datasets: {_LABELLED}"
        )
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ConfigError(
            f"model.num_classes={num_classes}, but the labels of {ds.name!r} lie in "
            f"[{int(y.min())}, {int(y.max())}] ({ds.num_classes} classes): the labels must be "
            f"0 .. num_classes - 1"
        )
    return y


def _arch(cfg: ModelConfig, shape: tuple[int, ...]) -> str:
    if cfg.arch != "auto":
        return cfg.arch
    return "mlp" if len(shape) == 1 else "unet"


def build_network(cfg: ModelConfig, shape: tuple[int, ...], sde: SDE) -> nn.Module:
    """The network of a ``[model]`` section for samples of ``shape`` (wrapped in
    :class:`~scoresde.EDMPrecond` when ``precond = "edm"``); class-conditional, ``net(x, t,
    y=labels)`` with the null label ``num_classes``, when ``model.num_classes`` is set."""
    arch = _arch(cfg, shape)
    net: nn.Module
    if arch == "mlp":
        net = MLP(
            math.prod(shape),
            width=cfg.width,
            depth=cfg.depth,
            emb_dim=cfg.emb_dim,
            time_embedding=cfg.time_embedding,
            dropout=cfg.dropout,
            num_classes=cfg.num_classes,
        )
    else:
        if len(shape) != 3 or shape[1] != shape[2]:
            raise ConfigError(
                f"model.arch='unet' needs square images (C, H, H), got samples of shape {shape}"
            )
        net = UNet(
            image_size=shape[1],
            in_channels=shape[0],
            base_channels=cfg.base_channels,
            channel_mult=cfg.channel_mult,
            num_res_blocks=cfg.num_res_blocks,
            attn_resolutions=cfg.attn_resolutions,
            attn_heads=cfg.attn_heads,
            dropout=cfg.dropout,
            time_embedding=cfg.time_embedding,
            groups=cfg.groups,
            num_classes=cfg.num_classes,
        )
    if cfg.precond == "edm":
        net = EDMPrecond(net, sde, sigma_data=cfg.sigma_data)
    return net


def _device(name: str, info: DistInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device='cuda' but torch.cuda.is_available() is False")
        return torch.device(
            "cuda", info.local_rank if info.enabled else torch.cuda.current_device()
        )
    return torch.device("cpu")


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "bf16" or (amp == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def _seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (numpy's SeedSequence hashing)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


_EVAL_STREAM = 0x5EED  # distinguishes evaluation seeds from training ones


# =========================================================================== RNG states


def _rng_state() -> dict[str, Any]:
    """This process's global RNG states as plain data (loadable with weights_only=True)."""
    # numpy's legacy global RNG is what third-party code draws from: save it as plain data
    kind, key, pos, has_gauss, cached = np.random.get_state(legacy=True)  # noqa: NPY002
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            npst["kind"],
            npst["key"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_globals(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the legacy global state is what we restore
    random.seed(seed)


# =========================================================================== results


@dataclass(frozen=True)
class BitsPerDim:
    """Mean bits/dim over a set of examples with a normal 95% interval.

    Attributes:
        mean: mean bits/dim.
        ci95: half-width of the 95% interval of the mean, ``1.96 std / sqrt(n)``.
        n: examples.
        nfe: mean network evaluations per example (PF-ODE: per batched solve).
        seconds: wall-clock time.
        per_example: (n,) float64 bits/dim (on rank 0).
    """

    mean: float
    ci95: float
    n: int
    nfe: float
    seconds: float
    per_example: Tensor = field(repr=False)


@dataclass(frozen=True)
class EvalResult:
    """One evaluation (rank 0; the other processes get empty fields).

    Attributes:
        step: the step evaluated.
        likelihood: test bits/dim through the probability-flow ODE, or None.
        elbo: test bits/dim bound from the ELBO, or None.
        samples: the samples drawn (on rank 0), or None.
        figure: the PNG written, or None.
        seconds: wall-clock time of the evaluation.
    """

    step: int
    likelihood: BitsPerDim | None
    elbo: BitsPerDim | None
    samples: Tensor | None = field(repr=False)
    figure: Path | None
    seconds: float


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` / :meth:`Trainer.fit` did.

    Attributes:
        step: steps done in all (including those before a resume).
        steps_this_run: steps done by this call.
        resumed_from: the checkpoint resumed from, or None.
        checkpoint: the last checkpoint written (or resumed from), or None.
        out_dir: the run folder.
        train_seconds: wall-clock training time of the whole run (evaluations excluded).
        examples_per_s: training throughput of this call (all processes).
        final_loss: the last logged training loss.
        time_limit_reached: stopped by ``train.max_minutes``.
        evaluation: the last evaluation, or None.
    """

    step: int
    steps_this_run: int
    resumed_from: Path | None
    checkpoint: Path | None
    out_dir: Path
    train_seconds: float
    examples_per_s: float
    final_loss: float
    time_limit_reached: bool
    evaluation: EvalResult | None


# =========================================================================== sharded evaluation


def _sampler_kind(method: str) -> str:
    from scoresde.sampling import solvers_available

    for info in solvers_available():
        if info.name == method:
            return str(info.kind)
    return "ode"


def sample_sharded(
    model: ScoreModel,
    shape: tuple[int, ...],
    n: int,
    *,
    method: str,
    nfe: int,
    seed: int,
    info: DistInfo | None = None,
    device: torch.device | str = "cpu",
    denoise_final: bool = False,
    grid: str | None = None,
) -> Tensor | None:
    """``n`` samples drawn by all processes together, gathered on rank 0 (None elsewhere).

    ``grid``: None (or "") for the method's default grid, a grid name, or the path of a saved
    grid file (see :func:`scoresde.sample`).

    Sample ``i`` starts from the noise of seed ``seed + i`` (ODE methods: it is the same sample
    whatever the number of processes); SDE methods add noise from a generator seeded by
    ``(seed, rank)``.
    """
    from scoresde.sampling import sample

    info = info or DistInfo()
    start, stop = dist_utils.shard_bounds(n, info)
    dev = torch.device(device)
    if stop > start:
        if _sampler_kind(method) == "sde":
            g = torch.Generator(dev).manual_seed(_seed(seed, info.rank))
            noise = torch.randn(
                (stop - start, *shape), generator=torch.Generator().manual_seed(seed + start)
            )
            x = sample(
                model,
                method,
                nfe,
                x_init=noise.to(dev),
                generator=g,
                denoise_final=denoise_final,
                grid=grid or None,
            ).x
        else:
            x = sample(
                model,
                method,
                nfe,
                shape=(stop - start, *shape),
                seeds=list(range(seed + start, seed + stop)),
                device=dev,
                denoise_final=denoise_final,
                grid=grid or None,
            ).x
    else:
        x = torch.empty((0, *shape), device=dev)
    return dist_utils.gather_cat(x, info)


def _summary(values: Tensor, nfe: float, seconds: float) -> BitsPerDim:
    v = values.double()
    n = v.numel()
    std = float(v.std()) if n > 1 else math.nan
    return BitsPerDim(
        mean=float(v.mean()),
        ci95=1.96 * std / math.sqrt(n) if n > 1 else math.nan,
        n=n,
        nfe=nfe,
        seconds=seconds,
        per_example=v,
    )


def bits_per_dim_sharded(
    model: ScoreModel,
    x: Tensor,
    *,
    kind: str = "ode",
    levels: int | None = None,
    data_range: tuple[float, float] | None = None,
    info: DistInfo | None = None,
    batch_size: int = 128,
    seed: int = 0,
    ode_method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    divergence: str = "exact",
    elbo_steps: int | None = None,
    elbo_samples: int = 16,
    dequantized: bool = True,
    progress: bool = False,
) -> BitsPerDim | None:
    """Bits/dim of the examples ``x`` (all processes together, each a contiguous slice),
    gathered on rank 0 (None elsewhere).

    Args:
        model: the score model.
        x: (N, *shape) examples (discrete data on their levels; they are dequantized inside).
        kind: ``"ode"`` (:func:`scoresde.log_likelihood`, exact through the PF-ODE) or
            ``"elbo"`` (:func:`scoresde.elbo`, an upper bound on the bits/dim).
        levels, data_range: the data's quantization (None for continuous data).
        info: the process group (None: one process).
        batch_size: examples per batch and process.
        seed: randomness of the dequantization, probes and ELBO draws (per process).
        ode_method, rtol, atol, divergence: the PF-ODE solve.
        elbo_steps, elbo_samples: the ELBO (None: continuous time) and its Monte-Carlo draws.
        dequantized: for discrete data, whether the model is a density of uniformly
            dequantized data (trained with ``data.dequantize``): then the ELBO is evaluated at
            ``x + Delta (u - 1/2)`` and ``D log Delta`` added (a bound on the bin probability
            for that density); otherwise the discrete ELBO of :func:`scoresde.elbo` (its
            discretized-Gaussian decoder at ``t_min``). The PF-ODE always dequantizes.
        progress: a progress bar over this process's batches.
    """
    from tqdm.auto import tqdm

    from scoresde.elbo import elbo
    from scoresde.likelihood import dequantize, log_likelihood

    info = info or DistInfo()
    t0 = time.perf_counter()
    start, stop = dist_utils.shard_bounds(x.shape[0], info)
    local = x[start:stop]
    dev = local.device
    g = torch.Generator(dev).manual_seed(_seed(seed, info.rank, _EVAL_STREAM))
    bpd, nfe = [], []
    batches = range(0, local.shape[0], batch_size)
    bar = tqdm(batches, desc=f"bits/dim ({kind})", disable=not progress, leave=False)
    for i in bar:
        xb = local[i : i + batch_size]
        if kind == "ode":
            res = log_likelihood(
                model,
                xb,
                method=ode_method,
                rtol=rtol,
                atol=atol,
                divergence=divergence,  # type: ignore[arg-type]
                generator=g,
                levels=levels,
                data_range=data_range,
            )
            nfe.append(res.nfe_per_sample.double())
            values = res.bpd
        elif dequantized and levels is not None and data_range is not None:
            # the bound for a density of dequantized data: log P(x) >= E_u[ELBO(x + Delta (u -
            # 1/2))] + D log Delta, one draw of u per example
            width = (data_range[1] - data_range[0]) / (levels - 1)
            xd = dequantize(xb, levels, data_range, 1, generator=g)[0]
            eres = elbo(model, xd, elbo_steps, n_samples=elbo_samples, generator=g)
            values = eres.bpd - math.log2(width)
            nfe.append(torch.full((xb.shape[0],), float(eres.nfe), dtype=torch.float64))
        else:
            eres = elbo(
                model,
                xb,
                elbo_steps,
                n_samples=elbo_samples,
                generator=g,
                levels=levels,
                data_range=data_range,
            )
            values = eres.bpd
            nfe.append(torch.full((xb.shape[0],), float(eres.nfe), dtype=torch.float64))
        bpd.append(values.detach().double().cpu())
    empty = torch.empty(0, dtype=torch.float64)
    all_bpd = dist_utils.gather_cat(torch.cat(bpd) if bpd else empty, info)
    all_nfe = dist_utils.gather_cat(torch.cat(nfe).cpu() if nfe else empty, info)
    if all_bpd is None or all_nfe is None:
        return None
    return _summary(all_bpd, float(all_nfe.mean()), time.perf_counter() - t0)


# =========================================================================== the trainer


def _lr_lambda(warmup: int, total: int, schedule: str, min_ratio: float) -> Callable[[int], float]:
    """Multiplier of the peak learning rate before optimizer step ``s + 1`` (0-based ``s``)."""

    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (s - warmup) / max(1, total - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class _DeferredInterrupt:
    """While training (one process, main thread): the first SIGINT (Ctrl-C) only sets
    :attr:`requested`, which the loop reads between steps; a second one raises
    KeyboardInterrupt at once. Elsewhere (a thread, torchrun, ``enabled=False``) SIGINT keeps
    its usual meaning."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning(
            "interrupt: finishing the current step, then writing a checkpoint (Ctrl-C again to "
            "stop at once, without one)"
        )

    def __enter__(self) -> _DeferredInterrupt:
        if self.enabled:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            signal.signal(signal.SIGINT, self._previous)


class _CSV:
    """Append-only CSV with a fixed header; rows beyond a step are dropped on resume."""

    def __init__(self, path: Path, fields: tuple[str, ...]) -> None:
        self.path, self.fields = path, fields

    def truncate_after(self, step: int) -> None:
        if not self.path.is_file():
            return
        with open(self.path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("step") and int(r["step"]) <= step]
        self._rewrite(rows)

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        out = io.StringIO()
        w = csv.DictWriter(out, self.fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        ckpt.atomic_write_bytes(self.path, out.getvalue().encode())

    def append(self, row: dict[str, Any]) -> None:
        new = not self.path.is_file()
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: _fmt(v) for k, v in row.items()})


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return "" if v is None else v


class Trainer:
    """Owns the network, its EMA, the optimizer and scheduler, the data stream and the step.

    Build it from a :class:`~scoresde.config.Config`; :meth:`resume` loads the newest valid
    checkpoint of ``train.out_dir``, :meth:`fit` trains to ``train.steps``. In a torchrun
    launch pass the :class:`~scoresde.distributed.DistInfo` of :func:`init_distributed`.

    Attributes:
        net: the network being trained (not wrapped).
        ema: the :class:`~torch.optim.swa_utils.AveragedModel` of ``net``.
        model: the :class:`~scoresde.ScoreModel` trained (through DDP when distributed).
        step: optimizer steps done.
    """

    def __init__(self, config: Config, *, dist: DistInfo | None = None) -> None:
        self.config = config
        self.info = dist or DistInfo()
        cfg = config.train
        self.device = _device(cfg.device, self.info)
        self.amp_dtype = _amp_dtype(cfg.amp, self.device)
        self.out_dir = Path(cfg.out_dir)
        self.ckpt_root = self.out_dir / "checkpoints"

        self.dataset = build_dataset(config.data)
        self.num_classes = config.model.num_classes
        self.label_dropout = config.label_dropout
        self.train_y: Tensor | None = None
        if self.num_classes is not None:
            self.train_y = _training_labels(self.dataset, self.num_classes).to(self.device)
            if self.label_dropout == 0.0 and (config.eval.likelihood or config.eval.elbo):
                warnings.warn(
                    "loss.label_dropout=0 never trains the null label, but the evaluation's "
                    "bits/dim are those of the unconditional (null-label) model: set "
                    "eval.likelihood=false and eval.elbo=false, or a label dropout > 0",
                    stacklevel=2,
                )
        self.sde = build_sde(config.sde)
        self.arch = _arch(config.model, self.dataset.shape)
        # the same initialisation on every process (DDP also broadcasts rank 0's)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.net = build_network(config.model, self.dataset.shape, self.sde).to(self.device)
        _seed_globals(_seed(cfg.seed, self.info.rank, 1))  # dropout etc., per process
        self.ema = AveragedModel(
            self.net, multi_avg_fn=get_ema_multi_avg_fn(config.optim.ema_decay), use_buffers=True
        )
        self.ema.eval()  # the EMA network is only ever evaluated (dropout off)
        self.ddp: nn.Module = self.net
        if self.info.enabled:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.prediction = config.model.prediction
        self.model = ScoreModel(self.ddp, self.sde, prediction=self.prediction)
        opt = config.optim
        self.optimizer = torch.optim.AdamW(
            self.net.parameters(),
            lr=opt.lr,
            betas=opt.betas,
            eps=opt.eps,
            weight_decay=opt.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            _lr_lambda(opt.warmup_steps, cfg.steps, opt.schedule, opt.min_lr / opt.lr),
        )
        loss = config.loss
        wkw: dict[str, float] = {}
        if loss.weighting == "min_snr":
            wkw["gamma"] = loss.gamma
        elif loss.weighting == "edm":
            wkw["sigma_data"] = loss.sigma_data
        self.weighting = get_weighting(loss.weighting, **wkw)
        self.t_sampler = get_t_sampler(
            loss.t_sampler if loss.t_sampler is not None else self.weighting.default_t_sampler
        )
        self.batches = ShardedBatches(
            self.dataset.train.shape[0], cfg.batch_size, self.info, cfg.seed
        )
        self.train_x = self.dataset.train.to(self.device)
        self.step = 0
        self.train_seconds = 0.0
        self.resumed_from: Path | None = None
        self.last_checkpoint: Path | None = None
        self.last_lr = math.nan  # the learning rate of the last optimizer step (metrics.csv)
        self._tb: Any = None
        self._metrics = _CSV(self.out_dir / "metrics.csv", METRICS_FIELDS)
        self._evals = _CSV(self.out_dir / "eval.csv", EVAL_FIELDS)

    # ------------------------------------------------------------------ one step
    def step_generator(self, step: int, rank: int | None = None) -> torch.Generator:
        """The generator of step ``step`` on process ``rank`` (default: this one): times, noise
        and dequantization of that step, seeded by ``(seed, rank, step)``."""
        rank = self.info.rank if rank is None else rank
        seed = _seed(self.config.train.seed, rank, step)
        return torch.Generator(self.device).manual_seed(seed)

    def batch(self, step: int) -> Tensor:
        """This process's clean training batch of step ``step``."""
        idx = self.batches.indices(step).to(self.device)
        return self.train_x.index_select(0, idx)

    def batch_labels(self, step: int) -> Tensor | None:
        """The class labels of :meth:`batch` ``(step)`` (before label dropout), or None for an
        unconditional model."""
        if self.train_y is None:
            return None
        idx = self.batches.indices(step).to(self.device)
        return self.train_y.index_select(0, idx)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def forward_backward(
        self,
        x0: Tensor,
        generator: torch.Generator,
        scale: float = 1.0,
        *,
        y: Tensor | None = None,
    ) -> Tensor:
        """The DSM loss of ``x0`` (dequantized first for discrete data) with times and noise
        from ``generator``; ``scale * loss`` is back-propagated. Returns the detached loss.

        A class-conditional model takes the (B,) labels ``y``: each is replaced by the null
        label with probability ``loss.label_dropout`` (:func:`scoresde.drop_labels`, drawn
        from ``generator``; Ho & Salimans 2022, Algorithm 1), and the network is bound to the
        result for this loss."""
        ds = self.dataset
        if (y is None) != (self.num_classes is None):
            raise ValueError(
                "y (the batch's labels) is required for a class-conditional model "
                f"(model.num_classes={self.num_classes}) and not accepted otherwise, got "
                f"{'None' if y is None else 'labels'}"
            )
        if self.config.data.dequantize and ds.levels is not None and ds.data_range is not None:
            from scoresde.likelihood import dequantize  # x + Delta (u - 1/2), as evaluated

            x0 = dequantize(x0, ds.levels, ds.data_range, 1, generator=generator)[0]
        if y is not None:
            assert self.num_classes is not None
            y = drop_labels(y, self.label_dropout, self.num_classes, generator=generator)
        with self._autocast():
            out = self._loss(x0, generator, y)
        (out * scale).backward()
        return out.detach()

    def _loss(self, x0: Tensor, generator: torch.Generator, y: Tensor | None = None) -> Tensor:
        from scoresde.losses import dsm_loss

        model = self.model
        if y is not None:  # the labels bound to the (DDP-wrapped) network for this batch
            model = ScoreModel(functools.partial(self.ddp, y=y), self.sde, self.prediction)
        return dsm_loss(
            model,
            x0,
            weighting=self.weighting,
            t_sampler=self.t_sampler,
            generator=generator,
            reduce=self.config.loss.reduce,
        ).loss

    def optimizer_step(self) -> Tensor:
        """Clip, AdamW step, scheduler step, EMA update, ``step += 1``. Returns the global
        gradient norm before clipping (a 0-d tensor)."""
        params = [p for p in self.net.parameters() if p.grad is not None]
        clip = self.config.optim.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf)
        self.last_lr = float(self.optimizer.param_groups[0]["lr"])  # the rate of this step
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update_parameters(self.net)
        self.step += 1
        return norm.detach()

    def train_step(self) -> tuple[Tensor, Tensor]:
        """One optimizer step on this process's batch; returns (loss, grad norm), detached."""
        step = self.step
        loss = self.forward_backward(
            self.batch(step), self.step_generator(step), y=self.batch_labels(step)
        )
        return loss, self.optimizer_step()

    # ------------------------------------------------------------------ checkpoints
    def metadata(self) -> dict[str, str]:
        """The safetensors metadata of this run's checkpoints."""
        from scoresde import __version__

        ds = self.dataset
        return {
            "config": config_to_json(self.config),
            "sde": repr(self.sde),
            "prediction": self.prediction,
            "precond": self.config.model.precond,
            "arch": self.arch,
            "num_classes": json.dumps(self.num_classes),
            "label_dropout": json.dumps(self.label_dropout),
            "dataset": ds.name,
            "shape": json.dumps(list(ds.shape)),
            "levels": json.dumps(ds.levels),
            "data_range": json.dumps(list(ds.data_range) if ds.data_range else None),
            "n_params": str(sum(p.numel() for p in self.net.parameters())),
            "scoresde": __version__,
            "torch": torch.__version__,
        }

    def training_state(self, rng_states: list[dict[str, Any]]) -> dict[str, Any]:
        """Everything but the weights, as plain data."""
        return {
            "format": 1,
            "step": self.step,
            "epoch": self.batches.epoch_of(self.step),
            "world_size": self.info.world_size,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema_n_averaged": self.ema.n_averaged.detach().cpu().clone(),
            "rng": rng_states,
            "train_seconds": float(self.train_seconds),
        }

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0; every process must call it: the
        RNG states of all are gathered). Returns its folder on rank 0.

        Raises:
            FloatingPointError: the weights or their EMA hold NaN or inf; nothing is written,
                so the last checkpoint stays the last good one (and is not pruned).
        """
        self._check_finite_weights()
        states = dist_utils.gather_objects(_rng_state(), self.info)
        path = None
        if self.info.is_main:
            assert states is not None
            path = ckpt.save_checkpoint(
                self.ckpt_root,
                self.step,
                model=self.net.state_dict(),
                ema=self.ema.module.state_dict(),
                training_state=self.training_state(states),
                metadata=self.metadata(),
                config_toml=config_dumps(self.config),
                keep_last=self.config.train.keep_last,
            )
            self.last_checkpoint = path
        dist_utils.barrier(self.info)
        return path

    def _apply_optim_config(self, where: Path) -> None:
        """After loading the optimizer and scheduler states: this run's ``[optim]`` values
        (lr, betas, eps, weight_decay) replace the stored ones, which loading brought back, so
        the configuration recorded with the run is the one in effect; AdamW's moment estimates
        are kept. A no-op (bitwise) when ``[optim]`` is unchanged; a warning names what
        changed otherwise."""
        o = self.config.optim
        want = {"betas": tuple(o.betas), "eps": o.eps, "weight_decay": o.weight_decay}
        changed = sorted(
            {k for g in self.optimizer.param_groups for k, v in want.items() if g[k] != v}
            | ({"lr"} if any(b != o.lr for b in self.scheduler.base_lrs) else set())
        )
        if not changed:
            return
        for g in self.optimizer.param_groups:
            g.update(want)
            g["initial_lr"] = o.lr
        self.scheduler.base_lrs = [o.lr] * len(self.optimizer.param_groups)
        epoch = self.scheduler.last_epoch
        for g, lam in zip(self.optimizer.param_groups, self.scheduler.lr_lambdas, strict=True):
            g["lr"] = o.lr * lam(epoch)
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        keys = ", ".join("optim." + k for k in changed)
        warnings.warn(
            f"resuming {where} with a different [optim] ({keys}): the new values apply from "
            "here on (AdamW's moment estimates are kept)",
            stacklevel=3,
        )

    def _check_finite_weights(self) -> None:
        """One reduction over the weights and the EMA (a checkpoint's worth of work); the same
        result on every process (DDP keeps the replicas equal)."""
        tensors = [*self.net.parameters(), *self.ema.module.parameters()]
        finite = torch.stack([torch.isfinite(p.detach()).all() for p in tensors]).all()
        if not bool(finite):
            last = self.last_checkpoint
            raise FloatingPointError(
                f"the weights are not finite (NaN or inf) at step {self.step}: no checkpoint "
                f"written{f'; the last good one is {last}' if last else ''}. Lower optim.lr, or "
                "check the data for NaN/inf and optim.grad_clip"
            )

    def _check_compatible(self, saved: Config, where: Path) -> None:
        for section in ("data", "sde", "model"):
            if getattr(saved, section) != getattr(self.config, section):
                raise ConfigError(
                    f"{where} was trained with a different [{section}] section; resume with the "
                    f"same one, or start a new run (another train.out_dir, or train.resume=false "
                    f"in an empty folder)"
                )
        same = saved.loss == self.config.loss and (
            saved.train.batch_size,
            saved.train.seed,
        ) == (self.config.train.batch_size, self.config.train.seed)
        if not same:
            warnings.warn(
                f"resuming {where} with a different [loss], train.batch_size or train.seed: the "
                "run will not continue as the original would have",
                stacklevel=3,
            )

    def resume(self, path: str | Path | None = None) -> Path | None:
        """Load the newest valid checkpoint of ``train.out_dir`` (or ``path``): weights, EMA,
        optimizer, scheduler, step and RNG states. Returns the checkpoint, or None when there
        is none. Every process loads the checkpoint chosen by rank 0."""
        if path is None:
            found = ckpt.latest_checkpoint(self.ckpt_root) if self.info.is_main else None
            found = dist_utils.broadcast_object(found, self.info)
            if found is None:
                return None
            path = found
        loaded = ckpt.load_checkpoint(path, training_state=True)
        self._check_compatible(config_from_json(loaded.metadata["config"]), loaded.path)
        state = loaded.training_state
        assert state is not None
        self.net.load_state_dict(loaded.model)
        if loaded.ema is None:
            raise ckpt.CheckpointError(f"{loaded.path}: no EMA weights")
        self.ema.module.load_state_dict(loaded.ema)
        self.ema.n_averaged.copy_(state["ema_n_averaged"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._apply_optim_config(loaded.path)
        self.step = int(state["step"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        rngs = state["rng"]
        if len(rngs) == self.info.world_size:
            _set_rng_state(rngs[self.info.rank])
        else:
            warnings.warn(
                f"{loaded.path} was written by {len(rngs)} processes, this run has "
                f"{self.info.world_size}: the global RNG states are re-seeded, so dropout masks "
                "differ from an uninterrupted run (data order and noise do not)",
                stacklevel=2,
            )
            _seed_globals(_seed(self.config.train.seed, self.info.rank, 2, self.step))
        self.resumed_from = self.last_checkpoint = loaded.path
        if self.info.is_main:
            self._metrics.truncate_after(self.step)
            self._evals.truncate_after(self.step)
        return loaded.path

    # ------------------------------------------------------------------ evaluation
    def eval_model(self) -> ScoreModel:
        """The score model evaluated: the EMA network (or the raw one, ``eval.use_ema=false``);
        for a class-conditional network, its unconditional (null-label) model."""
        net = self.ema.module if self.config.eval.use_ema else self.net
        return ScoreModel(net, self.sde, prediction=self.prediction)

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        was = self.net.training
        self.net.eval()
        try:
            yield
        finally:
            self.net.train(was)

    def _eval_samples(self, model: ScoreModel, seed: int) -> Tensor | None:
        """The evaluation's samples (gathered on rank 0): ``eval.n_samples`` from ``model``;
        for a class-conditional network, ``max(1, n_samples // num_classes)`` of each class in
        turn, from the conditional model (guidance scale 0), one solve per class (an int
        label works with every solver)."""
        ev, ds = self.config.eval, self.dataset
        common: dict[str, Any] = {
            "method": ev.method,
            "nfe": ev.nfe,
            "info": self.info,
            "device": self.device,
        }
        if self.num_classes is None:
            return sample_sharded(model, ds.shape, ev.n_samples, seed=seed, **common)
        per_class = max(1, ev.n_samples // self.num_classes)
        parts: list[Tensor] = []
        for c in range(self.num_classes):
            cond = CFGModel(model.net, self.sde, y=c, w=0.0, prediction=self.prediction)
            x = sample_sharded(cond, ds.shape, per_class, seed=seed + c * per_class, **common)
            if x is not None:  # rank 0 gathers every class
                parts.append(x)
        return torch.cat(parts) if len(parts) == self.num_classes else None

    def evaluate(self, *, progress: bool = False) -> EvalResult:
        """Samples (a figure), test bits/dim through the PF-ODE and the ELBO, with the EMA
        weights; all processes take part, rank 0 writes ``eval.csv`` and the figure. A
        class-conditional model is evaluated as the unconditional (null-label) model for
        bits/dim, and its figure holds conditional samples of every class."""
        t0 = time.perf_counter()
        ev = self.config.eval
        ds = self.dataset
        model = self.eval_model()
        seed = _seed(self.config.train.seed, _EVAL_STREAM) % 2**31
        with self._eval_mode():
            samples = self._eval_samples(model, seed)
            test = ds.test if ev.n_test is None else ds.test[: ev.n_test]
            test = test.to(self.device)
            common: dict[str, Any] = {
                "levels": ds.levels,
                "data_range": ds.data_range,
                "info": self.info,
                "batch_size": ev.batch_size,
                "seed": seed,
                "progress": progress,
            }
            lik = elb = None
            if ev.likelihood and test.shape[0]:
                lik = bits_per_dim_sharded(
                    model,
                    test,
                    kind="ode",
                    ode_method=ev.ode_method,
                    rtol=ev.rtol,
                    atol=ev.atol,
                    divergence=ev.divergence,
                    **common,
                )
            if ev.elbo and test.shape[0]:
                elb = bits_per_dim_sharded(
                    model,
                    test,
                    kind="elbo",
                    elbo_steps=ev.elbo_steps,
                    elbo_samples=ev.elbo_samples,
                    dequantized=self.config.data.dequantize,
                    **common,
                )
        figure = None
        if self.info.is_main and samples is not None:
            from scoresde.plots import save_samples

            ref = ds.test[:2000] if len(ds.shape) == 1 else None
            title = f"{ds.name}, step {self.step}, {ev.method} NFE={ev.nfe}"
            if self.num_classes is not None:
                title += f", classes 0-{self.num_classes - 1} in order"
            figure = save_samples(
                samples,
                self.out_dir / "samples" / f"step_{self.step:09d}.png",
                data_range=ds.data_range,
                reference=ref,
                title=title,
            )
        seconds = time.perf_counter() - t0
        result = EvalResult(self.step, lik, elb, samples, figure, seconds)
        if self.info.is_main:
            # one evaluation per step: a run re-started at its last step redoes the final
            # evaluation, which replaces the earlier row instead of repeating it
            self._evals.truncate_after(self.step - 1)
            self._evals.append(
                {
                    "step": self.step,
                    "n_test": lik.n if lik else (elb.n if elb else 0),
                    "bpd": lik.mean if lik else None,
                    "bpd_ci95": lik.ci95 if lik else None,
                    "nfe": lik.nfe if lik else None,
                    "elbo_bpd": elb.mean if elb else None,
                    "elbo_ci95": elb.ci95 if elb else None,
                    "samples": str(figure.relative_to(self.out_dir)) if figure else "",
                    "eval_s": seconds,
                }
            )
            parts = [f"eval step {self.step}:"]
            if lik:
                parts.append(f"test bpd {lik.mean:.4f} ± {lik.ci95:.4f} (NFE {lik.nfe:.0f})")
            if elb:
                parts.append(f"ELBO bpd {elb.mean:.4f} ± {elb.ci95:.4f}")
            parts.append(f"[{seconds:.1f} s]")
            logger.info(" ".join(parts))
            if self._tb is not None:
                if lik:
                    self._tb.add_scalar("eval/bpd", lik.mean, self.step)
                if elb:
                    self._tb.add_scalar("eval/elbo_bpd", elb.mean, self.step)
        return result

    # ------------------------------------------------------------------ the loop
    def _open_tensorboard(self) -> None:
        if not (self.info.is_main and self.config.train.tensorboard):
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        self._tb = SummaryWriter(str(self.out_dir / "tb"))

    def _progress_bar(self) -> Any:
        from tqdm.auto import tqdm

        show = self.info.is_main and self.config.train.progress and sys.stderr.isatty()
        return tqdm(
            total=self.config.train.steps,
            initial=self.step,
            desc="train",
            disable=not show,
            dynamic_ncols=True,
        )

    def fit(self, *, max_steps: int | None = None) -> TrainResult:
        """Train from the current step to ``train.steps`` (or to step ``max_steps``), with
        logging, checkpoints and evaluations as configured."""
        cfg, ev = self.config.train, self.config.eval
        target = cfg.steps if max_steps is None else min(cfg.steps, max_steps)
        if self.info.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            ckpt.atomic_write_bytes(
                self.out_dir / "config.toml", config_dumps(self.config).encode()
            )
            # rows beyond the step training starts from belong to a run that died before its
            # next checkpoint (or before its first one): they will be written again
            self._metrics.truncate_after(self.step)
            self._evals.truncate_after(self.step)
            self._open_tensorboard()
        start_step = self.step
        budget = None if cfg.max_minutes is None else 60.0 * cfg.max_minutes
        window_loss = torch.zeros((), device=self.device, dtype=torch.float64)
        window_n, window_t = 0, time.perf_counter()
        seg_t = time.perf_counter()
        run_train_s = 0.0
        final_loss = math.nan
        time_up = False
        last_eval: EvalResult | None = None
        saved_at = -1
        bar = self._progress_bar()
        self.net.train()
        # a first Ctrl-C (SIGINT) only asks to stop: the step in progress finishes, a checkpoint
        # of it is written, then KeyboardInterrupt; a second one stops at once, writing nothing
        # (a checkpoint taken in the middle of a step would not resume to the same run)
        interrupt = _DeferredInterrupt(enabled=not self.info.enabled)
        try:
            with interrupt:
                while self.step < target:
                    loss, norm = self.train_step()
                    window_loss += loss.double()
                    window_n += 1
                    bar.update(1)
                    s = self.step
                    now = time.perf_counter()
                    if budget is not None:
                        over = torch.tensor(
                            float(self.train_seconds + now - seg_t >= budget), device=self.device
                        )
                        time_up = bool(dist_utils.all_reduce_mean(over, self.info) > 0)
                    if s % cfg.log_every == 0 or s == target or time_up:
                        elapsed = now - window_t
                        mean_loss = float(
                            dist_utils.all_reduce_mean(window_loss / window_n, self.info)
                        )
                        final_loss = mean_loss
                        if not math.isfinite(mean_loss):
                            raise FloatingPointError(
                                f"the training loss is {mean_loss} at step {s}; lower optim.lr, or "
                                "check the data and optim.grad_clip"
                            )
                        rate = window_n * cfg.batch_size / max(elapsed, 1e-9)
                        self._log_row(
                            s, mean_loss, float(norm), rate, self.train_seconds + now - seg_t
                        )
                        bar.set_postfix(loss=f"{mean_loss:.4g}", refresh=False)
                        window_loss.zero_()
                        window_n, window_t = 0, time.perf_counter()
                    if s % cfg.ckpt_every == 0 or s == target or time_up:
                        self.save_checkpoint()
                        saved_at = s
                    if ev.every and s % ev.every == 0 and s < cfg.steps and not time_up:
                        t_pause = time.perf_counter()
                        self.train_seconds += t_pause - seg_t
                        run_train_s += t_pause - seg_t
                        last_eval = self.evaluate()
                        seg_t = window_t = time.perf_counter()
                    if time_up:
                        break
                    if interrupt.requested:
                        if saved_at != self.step and self.step > start_step:
                            logger.warning(f"interrupted at step {self.step}: writing a checkpoint")
                            self.save_checkpoint()
                        raise KeyboardInterrupt
        finally:
            bar.close()
        now = time.perf_counter()
        self.train_seconds += now - seg_t
        run_train_s += now - seg_t
        finished = self.step >= cfg.steps or time_up
        if ev.at_end and finished:
            if last_eval is None or last_eval.step != self.step:
                last_eval = self.evaluate()
            if self.info.is_main:
                self._finish_figures()
        if self.info.is_main and self._tb is not None:
            self._tb.close()
            self._tb = None
        steps_done = self.step - start_step
        return TrainResult(
            step=self.step,
            steps_this_run=steps_done,
            resumed_from=self.resumed_from,
            checkpoint=self.last_checkpoint,
            out_dir=self.out_dir,
            train_seconds=self.train_seconds,
            examples_per_s=steps_done * cfg.batch_size / max(run_train_s, 1e-9),
            final_loss=final_loss,
            time_limit_reached=time_up,
            evaluation=last_eval,
        )

    def _log_row(self, step: int, loss: float, norm: float, rate: float, elapsed: float) -> None:
        if not self.info.is_main:
            return
        lr = self.last_lr
        epoch = self.batches.epoch_of(step - 1)
        self._metrics.append(
            {
                "step": step,
                "epoch": epoch,
                "loss": loss,
                "lr": lr,
                "grad_norm": norm,
                "examples_per_s": rate,
                "elapsed_s": elapsed,
            }
        )
        if self._tb is not None:
            self._tb.add_scalar("train/loss", loss, step)
            self._tb.add_scalar("train/lr", lr, step)
            self._tb.add_scalar("train/grad_norm", norm, step)
        if not (self.config.train.progress and sys.stderr.isatty()):
            logger.info(
                f"step {step}/{self.config.train.steps}  loss {loss:.4g}  lr {lr:.3g}  "
                f"grad {norm:.3g}  {rate:.0f} ex/s"
            )

    def _finish_figures(self) -> None:
        from scoresde.plots import save_loss_curve

        metrics = self.out_dir / "metrics.csv"
        if not metrics.is_file():
            return
        baselines: list[tuple[str, float]] = []
        if self.dataset.levels is not None:
            from scoresde.data import baselines as data_baselines

            b = data_baselines(self.dataset)
            baselines.append((f"per-pixel categorical ({b.categorical:.2f})", b.categorical))
        try:
            save_loss_curve(
                metrics,
                self.out_dir / "loss.png",
                eval_csv=self.out_dir / "eval.csv",
                baselines=baselines,
                title=f"{self.dataset.name}: training loss",
            )
        except ValueError as exc:  # e.g. no rows yet
            logger.warning(f"no loss curve: {exc}")


# =========================================================================== entry points


def train(config: Config, *, max_steps: int | None = None) -> TrainResult:
    """Train as configured: single process, or data-parallel under torchrun.

    Joins the process group when launched by torchrun, builds a :class:`Trainer`, resumes from
    the newest valid checkpoint in ``train.out_dir`` when ``train.resume`` (a fresh run refuses
    a folder that already holds checkpoints when ``train.resume`` is false), and trains.

    Args:
        config: the configuration.
        max_steps: stop at this step (with a checkpoint) even if ``train.steps`` is larger.

    Returns:
        :class:`TrainResult` (on every process; evaluation results on rank 0).
    """
    cfg = config.train
    device_type = (
        "cuda"
        if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    info = dist_utils.init_distributed(device_type)
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        trainer = Trainer(config, dist=info)
        if cfg.resume:
            trainer.resume()
        elif info.is_main and ckpt.list_checkpoints(trainer.ckpt_root):
            raise ConfigError(
                f"{trainer.ckpt_root} already holds checkpoints and train.resume is false: "
                "choose another train.out_dir or delete them"
            )
        if trainer.resumed_from is not None:
            logger.info(f"resumed from {trainer.resumed_from} (step {trainer.step})")
        return trainer.fit(max_steps=max_steps)
    finally:
        torch.set_num_threads(threads)
        dist_utils.shutdown(info)


@dataclass(frozen=True)
class LoadedModel:
    """A trained model read back from a checkpoint.

    Attributes:
        model: the :class:`~scoresde.ScoreModel` (EMA or raw weights), in eval mode.
        net: its network.
        config: the configuration it was trained with.
        step: its training step.
        path: the checkpoint.
        ema: whether the EMA weights were loaded.
    """

    model: ScoreModel
    net: nn.Module
    config: Config
    step: int
    path: Path
    ema: bool

    def dataset(self) -> Dataset:
        """The dataset of its configuration (the same splits as in training)."""
        return build_dataset(self.config.data)

    @property
    def num_classes(self) -> int | None:
        """The number of classes of a class-conditional model (None: unconditional)."""
        return self.config.model.num_classes

    def guided(self, y: int | Tensor, w: float | Tensor = 0.0) -> CFGModel:
        """The class-conditional model with classifier-free guidance (Ho & Salimans 2022),
        bound to the class ``y`` and scale ``w``: a :class:`~scoresde.CFGModel` on this
        network (``model`` itself is the unconditional, null-label model).

        Args:
            y: the class, an int in ``[0, num_classes)`` or a (B,) integer tensor.
            w: guidance scale (0: the conditional model; -1: the unconditional one).

        Raises:
            ValueError: for an unconditional model, or a class outside ``[0, num_classes)``.
        """
        c = self.num_classes
        if c is None:
            raise ValueError(
                f"{self.path} is an unconditional model (model.num_classes is not set): it "
                "takes no class; train with model.num_classes=N for class-conditional sampling"
            )
        if isinstance(y, Tensor):
            if y.device.type == "cpu" and y.numel() and (int(y.min()) < 0 or int(y.max()) >= c):
                raise ValueError(
                    f"y must hold classes in [0, {c}) for this model, got {y.tolist()}"
                )
        elif isinstance(y, int) and not isinstance(y, bool) and not 0 <= y < c:
            raise ValueError(f"y must be a class in [0, {c}) for this model, got y={y}")
        return CFGModel(self.net, self.model.sde, y=y, w=w, prediction=self.model.prediction)


def load_model(
    path: str | Path, *, ema: bool = True, device: torch.device | str = "cpu"
) -> LoadedModel:
    """Rebuild the network of a checkpoint from its stored configuration and load its weights
    (the EMA weights by default).

    Args:
        path: a run folder (its newest valid checkpoint), a checkpoint folder, or its
            ``weights.safetensors``.
        ema: load the EMA weights (else the raw ones).
        device: where to put the network.
    """
    loaded = ckpt.load_checkpoint(path)
    if "config" not in loaded.metadata:
        raise ckpt.CheckpointError(f"{loaded.path}: no configuration in the metadata")
    config = config_from_json(loaded.metadata["config"])
    shape = tuple(json.loads(loaded.metadata.get("shape", "null")) or ())
    if not shape:
        shape = build_dataset(config.data).shape
    sde = build_sde(config.sde)
    net = build_network(config.model, shape, sde)
    weights = loaded.ema if ema else loaded.model
    if weights is None:
        raise ckpt.CheckpointError(f"{loaded.path}: no EMA weights (pass ema=False)")
    try:
        net.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ckpt.CheckpointError(
            f"{loaded.path}: weights do not fit the network of its configuration ({first})"
        ) from None
    net.to(device).eval()
    return LoadedModel(
        model=ScoreModel(net, sde, prediction=config.model.prediction),
        net=net,
        config=config,
        step=loaded.step,
        path=loaded.path,
        ema=ema,
    )
