"""Data-parallel training and evaluation with ``torch.distributed``, launched by torchrun.

``torchrun --nproc_per_node=N -m scoresde.cli train CONFIG`` starts N processes with the
environment variables ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`init_distributed` reads them and joins the process group (``gloo`` on
CPU, ``nccl`` on CUDA, one GPU per process: ``cuda:LOCAL_RANK``). Without them (a plain
``scoresde train``) everything runs in one process and every helper here is a no-op.

What the training loop does with it (:mod:`scoresde.training`): the model is wrapped in
:class:`torch.nn.parallel.DistributedDataParallel` (gradients averaged over the processes);
each process reads its own shard of every global batch (:class:`ShardedBatches`, built on
:class:`torch.utils.data.DistributedSampler` with ``set_epoch``); the noise and times of each
process come from ``(seed, rank, step)``; only rank 0 logs, evaluates figures and writes
checkpoints. Sampling and likelihood evaluation are sharded: each process takes a contiguous
slice (:func:`shard_bounds`) and rank 0 gathers the results (:func:`gather_cat`).
"""

from __future__ import annotations

import os
from collections.abc import Sized
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DistributedSampler

__all__ = [
    "DistInfo",
    "launched_by_torchrun",
    "init_distributed",
    "shutdown",
    "barrier",
    "all_reduce_mean",
    "broadcast_object",
    "gather_objects",
    "gather_cat",
    "shard_bounds",
    "ShardedBatches",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the process group.

    Attributes:
        rank: global rank (0 .. world_size - 1).
        world_size: number of processes.
        local_rank: rank on this machine (selects the GPU).
        backend: ``"gloo"``, ``"nccl"``, or None when not distributed.
        owns_group: this process initialised the group (and :func:`shutdown` ends it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and writes."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when the torchrun environment (``WORLD_SIZE`` > 1) is set."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device_type: str = "cpu") -> DistInfo:
    """Join the process group described by the torchrun environment, if any.

    Args:
        device_type: ``"cpu"`` (backend gloo) or ``"cuda"`` (backend nccl; this process uses
            ``cuda:LOCAL_RANK``).

    Returns:
        :class:`DistInfo` (world size 1 when not launched by torchrun).
    """
    if dist.is_available() and dist.is_initialized():  # already joined (e.g. by the caller)
        return DistInfo(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            backend=str(dist.get_backend()),
            owns_group=False,
        )
    if not launched_by_torchrun():
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank, world, local_rank, backend, owns_group=True)


def shutdown(info: DistInfo) -> None:
    """Leave the process group if :func:`init_distributed` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op in one process)."""
    if info.enabled:
        dist.barrier()


def all_reduce_mean(x: Tensor, info: DistInfo) -> Tensor:
    """The mean of ``x`` over the processes (a new tensor; ``x`` itself in one process)."""
    if not info.enabled:
        return x
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / info.world_size


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every process (picklable objects)."""
    if not info.enabled:
        return obj
    box = [obj if info.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any, info: DistInfo) -> list[Any] | None:
    """Every process's ``obj``, in rank order, on rank 0 (None on the others)."""
    if not info.enabled:
        return [obj]
    out: list[Any] | None = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def gather_cat(x: Tensor, info: DistInfo) -> Tensor | None:
    """Concatenate every process's ``x`` (shapes may differ along dim 0) on rank 0, in rank
    order; None on the other ranks. The result lies on the CPU."""
    parts = gather_objects(x.detach().cpu(), info)
    return None if parts is None else torch.cat(parts)


def shard_bounds(n: int, info: DistInfo) -> tuple[int, int]:
    """``[start, stop)`` of this process's contiguous slice of ``n`` items (sizes differ by at
    most one; concatenating the slices in rank order gives the items in order)."""
    base, extra = divmod(n, info.world_size)
    start = info.rank * base + min(info.rank, extra)
    return start, start + base + (1 if info.rank < extra else 0)


class _Length(Sized):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


class ShardedBatches:
    """Per-process batch indices as a pure function of the step: resumable mid-epoch.

    Every epoch is a reshuffle of the training set by :class:`DistributedSampler` (seeded by
    ``seed`` and the epoch through ``set_epoch``), which gives process ``rank`` the positions
    ``rank, rank + world, ...`` of that permutation. Step ``s`` is batch ``k = s mod B`` of epoch
    ``s div B`` (``B`` batches per epoch, the incomplete last one dropped), so after a restart at
    any step the data order continues exactly; across the processes, the local batches of a
    step partition one global batch of ``local_batch * world_size`` examples.

    Args:
        n: training-set size.
        global_batch: examples per step over all processes (divisible by the world size).
        info: this process's place.
        seed: the shuffling seed.
    """

    def __init__(self, n: int, global_batch: int, info: DistInfo, seed: int) -> None:
        if global_batch % info.world_size:
            raise ValueError(
                f"train.batch_size={global_batch} must be divisible by the number of processes "
                f"({info.world_size})"
            )
        self.local_batch = global_batch // info.world_size
        self.sampler: DistributedSampler[int] = DistributedSampler(
            _Length(n),  # type: ignore[arg-type]  # only its length is used
            num_replicas=info.world_size,
            rank=info.rank,
            shuffle=True,
            seed=seed,
            drop_last=False,
        )
        self.batches_per_epoch = len(self.sampler) // self.local_batch
        if self.batches_per_epoch < 1:
            raise ValueError(
                f"train.batch_size={global_batch} is larger than the training set ({n} "
                "examples); lower it"
            )
        self._epoch = -1
        self._order = torch.empty(0, dtype=torch.long)

    def epoch_of(self, step: int) -> int:
        """The epoch that step ``step`` (0-based) belongs to."""
        return step // self.batches_per_epoch

    def epoch_order(self, epoch: int) -> Tensor:
        """This process's indices for a whole epoch (``set_epoch`` reshuffles)."""
        if epoch != self._epoch:
            self.sampler.set_epoch(epoch)
            self._order = torch.tensor(list(iter(self.sampler)), dtype=torch.long)
            self._epoch = epoch
        return self._order

    def indices(self, step: int) -> Tensor:
        """(local_batch,) int64 indices into the training set for step ``step`` (0-based)."""
        epoch, k = divmod(step, self.batches_per_epoch)
        order = self.epoch_order(epoch)
        return order[k * self.local_batch : (k + 1) * self.local_batch]
