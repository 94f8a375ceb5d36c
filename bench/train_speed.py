"""Training throughput (images/s) of ``scoresde.training.Trainer``: bf16 autocast,
channels_last and ``torch.compile``, one process; and DDP over 2 CPU processes (torchrun, gloo).

Usage (from the repository root; results in docs/benchmarks.md, "Speed")::

    python bench/train_speed.py --quick             # CPU: 4 variants + DDP, ~5-10 min
    python bench/train_speed.py                     # CPU: every variant (compile included)
    python bench/train_speed.py --device cuda       # one GPU, the U-Net of images32_gpu.toml
    python bench/train_speed.py --no-ddp --variants fp32,bf16

What is timed: ``Trainer.train_step`` (the batch, dequantization, the DSM loss with its time
and noise draws, backward, gradient clipping, AdamW, the learning-rate schedule, the EMA
update) after ``--warmup`` untimed steps, ``--steps`` steps per timing, the median over
``--repeats`` timings; images/s = global batch x steps / time, and next to it images per
CPU-second of the process (steadier than wall time on a machine shared with other jobs).
Data: random 8-bit images (a ``.npz`` written to a temporary directory; the content does not
change the cost), 3x32x32, scaled to [-1, 1]. Model: on CUDA the U-Net of
``configs/images32_gpu.toml`` (8.95M parameters) at batch 128; on the CPU a small U-Net (32
channels, mult 1-2-2, one res block, attention at 16x16; 1.11M parameters) at batch 16.
VP SDE, eps prediction, the loss weighting and time sampler of that config.

Variants (``--variants``, comma-separated):

* ``fp32``: ``train.amp = "none"``;
* ``bf16``: ``train.amp = "bf16"`` (bfloat16 autocast around the loss, the training loop's own
  option; float32 weights and optimizer);
* ``channels_last``: the network's weights and the training images in
  ``torch.channels_last`` memory format (the convolutions pick NHWC kernels);
* ``compile``: the network wrapped in ``torch.compile`` (default mode) for the loss; the
  compile time is spent in the warm-up and reported apart;
* combinations joined by ``+``, e.g. ``bf16+channels_last+compile``.

DDP (``--ddp``, CPU only here): ``torchrun --standalone --nproc_per_node=2`` runs the same
step with ``init_distributed("cpu")`` (gloo), each process one thread; compared with one
process at the same global batch (strong scaling) and at the same batch per process (weak
scaling). On a 2-core machine this measures the mechanism (gradient all-reduce, sharded
batches), not a speed-up worth having.

Outputs: ``bench/results/train_speed_<device>[_quick].{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE.parent), str(_HERE)]

from bench_env import cpu_name, loadavg  # noqa: E402

from scoresde import distributed as dist_utils  # noqa: E402
from scoresde.config import from_dict  # noqa: E402
from scoresde.training import Trainer  # noqa: E402

GPU_MODEL = {
    "arch": "unet",
    "prediction": "eps",
    "base_channels": 64,
    "channel_mult": [1, 2, 2, 2],
    "num_res_blocks": 2,
    "attn_resolutions": [16],
    "attn_heads": 4,
    "groups": 32,
    "dropout": 0.1,
}
CPU_MODEL = {
    "arch": "unet",
    "prediction": "eps",
    "base_channels": 32,
    "channel_mult": [1, 2, 2],
    "num_res_blocks": 1,
    "attn_resolutions": [16],
    "attn_heads": 1,
    "groups": 8,
    "dropout": 0.1,
}


def write_data(directory: Path, n: int = 512) -> Path:
    """Random 8-bit 3x32x32 images in an ``.npz`` file."""
    path = directory / "images.npz"
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8))
    return path


def make_trainer(
    data: Path, out_dir: Path, device: str, batch: int, variant: str, info: Any = None
) -> Trainer:
    parts = set(variant.split("+"))
    unknown = parts - {"fp32", "bf16", "channels_last", "compile"}
    if unknown:
        raise ValueError(f"unknown variant parts {sorted(unknown)} in {variant!r}")
    config = from_dict(
        {
            "data": {"name": "npz", "path": str(data), "test_fraction": 0.05},
            "sde": {"name": "vp"},
            "model": GPU_MODEL if device.startswith("cuda") else CPU_MODEL,
            "loss": {"weighting": "eps", "t_sampler": "low_discrepancy"},
            "optim": {"lr": 2e-4, "grad_clip": 1.0, "ema_decay": 0.9999},
            "train": {
                "out_dir": str(out_dir),
                "batch_size": batch,
                "device": "cuda" if device.startswith("cuda") else "cpu",
                "amp": "bf16" if "bf16" in parts else "none",
                "progress": False,
                "tensorboard": False,
                "resume": False,
            },
        }
    )
    trainer = Trainer(config, dist=info)
    if "channels_last" in parts:
        trainer.net.to(memory_format=torch.channels_last)
        trainer.train_x = trainer.train_x.contiguous(memory_format=torch.channels_last)
    if "compile" in parts:
        trainer.model.net = torch.compile(trainer.ddp)
    return trainer


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(
    trainer: Trainer, device: str, warmup: int, steps: int, repeats: int, info: Any = None
) -> dict[str, float]:
    """Seconds of the first step (compile, allocation), then median seconds of ``steps``."""
    _sync(device)
    t0 = time.perf_counter()
    trainer.train_step()
    _sync(device)
    first = time.perf_counter() - t0
    for _ in range(max(0, warmup - 1)):
        trainer.train_step()
    times, cpu_times = [], []
    for _ in range(repeats):
        if info is not None:
            dist_utils.barrier(info)
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            loss, _ = trainer.train_step()
        float(loss)  # wait for the last step (CUDA: the loss is on the device)
        if info is not None:
            dist_utils.barrier(info)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    return {
        "first_step_s": first,
        "seconds": statistics.median(times),
        "cpu_seconds": statistics.median(cpu_times),
        "steps": steps,
    }


def run_variant(args: argparse.Namespace, data: Path, variant: str, batch: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as out:
        trainer = make_trainer(data, Path(out), args.device, batch, variant)
        res = time_steps(trainer, args.device, args.warmup, args.steps, args.repeats)
    res.update(
        variant=variant,
        batch=batch,
        world=1,
        images_per_s=batch * res["steps"] / res["seconds"],
        images_per_cpu_s=batch * res["steps"] / res["cpu_seconds"],
        n_params=sum(p.numel() for p in trainer.net.parameters()),
    )
    return res


def ddp_worker(args: argparse.Namespace) -> None:
    """One process of a DDP timing (launched by torchrun, or alone for world size 1)."""
    torch.set_num_threads(1)
    info = dist_utils.init_distributed("cpu")
    with tempfile.TemporaryDirectory() as out:
        trainer = make_trainer(Path(args.data), Path(out), "cpu", args.batch, "fp32", info)
        res = time_steps(trainer, "cpu", args.warmup, args.steps, args.repeats, info)
    if info.is_main:
        res.update(
            batch=args.batch,
            world=info.world_size,
            images_per_s=args.batch * res["steps"] / res["seconds"],
        )
        Path(args.result).write_text(json.dumps(res))
    dist_utils.shutdown(info)


def run_ddp(args: argparse.Namespace, data: Path, world: int, batch: int) -> dict[str, Any]:
    """A DDP timing in fresh processes: ``world`` processes, global batch ``batch``."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        worker = [
            str(Path(__file__).resolve()),
            "--ddp-worker",
            "--data",
            str(data),
            "--result",
            str(result),
            "--batch",
            str(batch),
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--repeats",
            str(args.repeats),
        ]
        if world == 1:
            cmd = [sys.executable, *worker]
        else:
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={world}",
                *worker,
            ]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        subprocess.run(cmd, check=True, env=env, cwd=_HERE.parent)
        return json.loads(result.read_text())


def render(meta: dict[str, Any], rows: list[dict[str, Any]], ddp: list[dict[str, Any]]) -> str:
    lines = [
        f"Training throughput, device {meta['device']} ({meta['hardware']}), torch "
        f"{meta['torch']}, {meta['threads']} thread(s) per process, load average "
        f"{meta['load_start']} / {meta['load_end']}, {meta['date']}; {meta['model']}, "
        f"{meta['n_params'] / 1e6:.2f}M parameters, 3x32x32; median of {meta['repeats']} x "
        f"{meta['steps']} steps after {meta['warmup']} warm-up steps.",
        "",
    ]
    if rows:
        base = next((r["images_per_s"] for r in rows if r["variant"] == "fp32"), None)
        base_cpu = next((r["images_per_cpu_s"] for r in rows if r["variant"] == "fp32"), None)
        lines += [
            "| variant | batch | images/s | vs fp32 | images per CPU-second | vs fp32 "
            "| first step (s) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['variant']} | {r['batch']} | failed: {r['error']} | | | | |")
                continue
            rel = f"{r['images_per_s'] / base:.2f}" if base else "–"
            rel_cpu = f"{r['images_per_cpu_s'] / base_cpu:.2f}" if base_cpu else "–"
            lines.append(
                f"| {r['variant']} | {r['batch']} | {r['images_per_s']:.1f} | {rel} | "
                f"{r['images_per_cpu_s']:.1f} | {rel_cpu} | {r['first_step_s']:.1f} |"
            )
        lines.append("")
    if ddp:
        lines += [
            "DDP on the CPU (gloo, fp32, one thread per process):",
            "",
            "| processes | global batch | batch / process | images/s | scaling |",
            "|---:|---:|---:|---:|---|",
        ]
        one = {r["batch"]: r["images_per_s"] for r in ddp if r["world"] == 1}
        for r in ddp:
            note = ""
            if r["world"] > 1:
                per = r["batch"] // r["world"]
                if r["batch"] in one:
                    note += f"strong: {r['images_per_s'] / one[r['batch']]:.2f}x of 1 process "
                if per in one:
                    note += f"weak: {r['images_per_s'] / one[per]:.2f}x of 1 process"
            lines.append(
                f"| {r['world']} | {r['batch']} | {r['batch'] // r['world']} | "
                f"{r['images_per_s']:.1f} | {note} |"
            )
        lines.append("")
    return "\n".join(lines)


def _hardware(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return cpu_name()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="4 variants, fewer steps")
    ap.add_argument("--variants", default=None, help="comma-separated (see the docstring)")
    ap.add_argument("--batch", type=int, default=None, help="global batch (CPU 16, CUDA 128)")
    ap.add_argument("--steps", type=int, default=None, help="steps per timing (10; quick 5)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=None, help="timings (3; quick 2)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ddp", dest="ddp", action="store_true", default=None)
    ap.add_argument("--no-ddp", dest="ddp", action="store_false")
    ap.add_argument("--out", type=Path, default=_HERE / "results")
    # internal: one DDP process
    ap.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.steps = args.steps or (5 if args.quick else 10)
    args.repeats = args.repeats or (2 if args.quick else 3)
    if args.ddp_worker:
        ddp_worker(args)
        return
    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    batch = args.batch or (128 if cuda else 16)
    if args.variants:
        variants = args.variants.split(",")
    elif args.quick:
        variants = ["fp32", "bf16", "channels_last", "bf16+channels_last"]
    else:
        variants = [
            "fp32",
            "bf16",
            "channels_last",
            "bf16+channels_last",
            "compile",
            "bf16+channels_last+compile",
        ]
    do_ddp = (not cuda) if args.ddp is None else args.ddp
    meta: dict[str, Any] = {
        "device": args.device,
        "hardware": _hardware(args.device),
        "torch": torch.__version__,
        "threads": args.threads,
        "date": time.strftime("%Y-%m-%d"),
        "load_start": loadavg(),
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "model": "U-Net of configs/images32_gpu.toml" if cuda else "small U-Net",
    }
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    ddp: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_data(Path(tmp))
        for variant in variants:
            try:
                rows.append(run_variant(args, data, variant, batch))
            except Exception as err:  # noqa: BLE001 - a failing variant is a result
                rows.append({"variant": variant, "batch": batch, "error": repr(err)[:160]})
            print(json.dumps(rows[-1]), flush=True)
        if do_ddp:
            for world, b in ((1, batch), (2, batch), (1, batch // 2), (2, 2 * batch)):
                ddp.append(run_ddp(args, data, world, b))
                print(json.dumps(ddp[-1]), flush=True)
    meta["n_params"] = next((r["n_params"] for r in rows if "n_params" in r), 0)
    meta["load_end"] = loadavg()
    meta["seconds"] = time.perf_counter() - t0
    stem = f"train_speed_{args.device.split(':')[0]}" + ("_quick" if args.quick else "")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(
        json.dumps({"meta": meta, "rows": rows, "ddp": ddp}, indent=1)
    )
    text = render(meta, rows, ddp)
    (args.out / f"{stem}.md").write_text(text)
    print()
    print(text)


if __name__ == "__main__":
    main()
