"""The ``scoresde`` command line: ``train``, ``sample``, ``likelihood``, ``demo``.

::

    scoresde train CONFIG [section.key=value ...]
    scoresde sample CKPT [--method M] [--nfe N] [--n N] [--seed S] [--out FILE.npz]
                         [--class Y [--guidance W]]
    scoresde likelihood CKPT [--split test|train] [--n N] [--elbo]
    scoresde demo [--moons] [--minutes M] [--steps N] [--out DIR] [--smoke]
    scoresde bench CKPT | oracle:NAME [--nfe 5,10,20] [--methods ...] [--tune]  (bench_cli.py)

``CKPT`` is a run folder (its newest valid checkpoint), a checkpoint folder
(``<run>/checkpoints/step_*``) or its ``weights.safetensors``. Every command also runs under
torchrun (``torchrun --nproc_per_node=2 -m scoresde.cli train configs/two_moons.toml``):
training is data-parallel, sampling and likelihood evaluation are sharded over the processes
and gathered on rank 0, which alone prints and writes.

Errors (a bad configuration, a missing or corrupt checkpoint, an invalid argument) end the
command with exit status 2 and a one-line message on stderr, without a traceback (set
``SCORESDE_DEBUG=1`` to see it).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from scoresde.distributed import DistInfo
    from scoresde.training import LoadedModel

__all__ = ["main", "build_parser"]

EXIT_ERROR = 2


# =========================================================================== parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``scoresde``."""
    parser = argparse.ArgumentParser(
        prog="scoresde",
        description="Score-based diffusion models as SDEs: train, sample, evaluate likelihoods.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="train a model from a TOML configuration",
        description=(
            "Train as configured in CONFIG (TOML). Overrides section.key=value are typed by the "
            "field they set, e.g. optim.lr=1e-3 train.steps=500 model.channel_mult=[1,2]. A run "
            "resumes from the newest valid checkpoint in train.out_dir."
        ),
    )
    p.add_argument("config", metavar="CONFIG", help="the TOML configuration file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="section.key=value overrides")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "sample",
        help="draw samples from a checkpoint (.npz and a PNG)",
        description=(
            "Draw samples with the EMA weights of a checkpoint; writes FILE.npz (array 'x' in "
            "data units; 'levels' for discrete data) and FILE.png (image grid or 2-D scatter). "
            "Unset options take the checkpoint's [sample] configuration."
        ),
    )
    p.add_argument("checkpoint", metavar="CKPT", help="run folder, checkpoint folder or weights")
    p.add_argument("--method", help="sampler name (see scoresde.solvers_available())")
    p.add_argument("--nfe", type=int, help="network evaluations budget")
    p.add_argument("-n", "--n", type=int, dest="n", help="number of samples")
    p.add_argument("--seed", type=int, help="seed of the initial noise")
    p.add_argument("--out", help="output .npz file (default: ./samples_step<S>_<method>_...npz)")
    p.add_argument("--denoise-final", action="store_true", default=None, help="Tweedie last step")
    p.add_argument(
        "--grid",
        help="time grid: a name (uniform, logsnr, karras, quadratic) or a grid file saved by "
        "`scoresde bench --tune` / sd.tune_grid (default: the config's sample.grid, else the "
        "method's default)",
    )
    p.add_argument(
        "--class",
        type=int,
        dest="class_label",
        metavar="Y",
        help="class to generate (a class-conditional checkpoint; default: unconditional)",
    )
    p.add_argument(
        "--guidance",
        type=float,
        metavar="W",
        help="classifier-free guidance scale with --class (0: conditional; default: the "
        "checkpoint's sample.guidance)",
    )
    _common_model_args(p)
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser(
        "likelihood",
        help="bits/dim of a data split through the probability-flow ODE",
        description=(
            "Mean bits/dim of a split of the checkpoint's dataset with a 95%% interval, through "
            "the probability-flow ODE (discrete data: uniform dequantization); --elbo adds the "
            "variational bound."
        ),
    )
    p.add_argument("checkpoint", metavar="CKPT", help="run folder, checkpoint folder or weights")
    p.add_argument("--split", choices=("test", "train"), default="test", help="data split")
    p.add_argument(
        "-n",
        "--n",
        type=int,
        dest="n",
        help="evaluate the first N examples of the split (default: all)",
    )
    p.add_argument("--batch-size", type=int, help="examples per batch and process")
    p.add_argument("--method", help="adaptive ODE solver (default: the checkpoint's eval config)")
    p.add_argument("--rtol", type=float, help="relative tolerance")
    p.add_argument("--atol", type=float, help="absolute tolerance")
    p.add_argument("--divergence", choices=("exact", "hutchinson"), help="divergence estimator")
    p.add_argument("--elbo", action="store_true", help="also the ELBO (an upper bound on bits/dim)")
    p.add_argument(
        "--elbo-steps", type=int, help="discrete ELBO with N steps (default: continuous)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of dequantization and probes")
    _common_model_args(p)
    p.set_defaults(func=_cmd_likelihood)

    p = sub.add_parser(
        "demo",
        help="the end-to-end demo: train, sample, bits/dim, rate-distortion, report",
        description=(
            "Train a small model on scikit-learn's digits (--moons: two moons), sample it with "
            "several solvers at several budgets, compute test bits/dim (PF-ODE and ELBO) and the "
            "rate-distortion curve; writes runs/demo-<timestamp>/report.md, figures and a "
            "checkpoint. Ctrl-C leaves a usable checkpoint and a partial report."
        ),
    )
    p.add_argument("--moons", action="store_true", help="two moons (2-D) instead of digits")
    p.add_argument("--minutes", type=float, default=3.0, help="training budget (default: 3)")
    p.add_argument("--steps", type=int, help="training steps at most (default: as time allows)")
    p.add_argument("--out", help="run folder (default: runs/demo-<timestamp>; resumes one)")
    p.add_argument("--seed", type=int, default=0, help="seed of training and evaluation")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1; 0: torch's default)"
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where")
    p.add_argument(
        "--smoke", "--quick", action="store_true", help="a tiny run of seconds (tests, CI)"
    )
    p.set_defaults(func=_cmd_demo)
    from scoresde.bench_cli import add_bench_parser

    add_bench_parser(sub)
    return parser


def _common_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to run")
    p.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads (default: the checkpoint's train.threads, else torch's)",
    )


# =========================================================================== helpers


class UsageError(ValueError):
    """A command-line argument that is not acceptable."""


def _positive(name: str, value: int | float | None) -> None:
    if value is not None and not value > 0:
        raise UsageError(f"{name} must be > 0, got {value}")


def _setup(device: str) -> tuple[DistInfo, torch.device]:
    """Join the process group under torchrun; pick the device."""
    import torch

    from scoresde import distributed as du

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but torch.cuda.is_available() is False")
    info = du.init_distributed(device)
    dev = torch.device("cuda", info.local_rank) if device == "cuda" else torch.device("cpu")
    return info, dev


def _load(args: argparse.Namespace, dev: torch.device) -> LoadedModel:
    """The checkpoint's model, with the thread count of --threads or of its configuration."""
    import torch

    from scoresde.training import load_model

    _positive("--threads", args.threads)
    loaded = load_model(args.checkpoint, ema=not args.raw, device=dev)
    threads = args.threads or loaded.config.train.threads
    if threads:
        torch.set_num_threads(threads)
    return loaded


class _StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    """Writes to whatever ``sys.stdout`` is at the time of each record."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


_HANDLER = _StdoutHandler()
_HANDLER.setFormatter(logging.Formatter("%(message)s"))


def _configure_logging(is_main: bool) -> None:
    """Progress messages of the ``scoresde`` loggers on stdout (rank 0 only)."""
    log = logging.getLogger("scoresde")
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    if _HANDLER not in log.handlers:
        log.addHandler(_HANDLER)


def _say(info: DistInfo, text: str) -> None:
    if info.is_main:
        print(text, flush=True)


# =========================================================================== commands


def _cmd_train(args: argparse.Namespace) -> int:
    from scoresde.config import load_config
    from scoresde.distributed import launched_by_torchrun
    from scoresde.training import train

    config = load_config(args.config, args.overrides)
    is_main = int(os.environ.get("RANK", "0")) == 0 if launched_by_torchrun() else True
    _configure_logging(is_main)
    res = train(config)
    if is_main:
        lines = [
            f"trained to step {res.step} ({res.steps_this_run} steps in this run, "
            f"{res.examples_per_s:.0f} examples/s, {res.train_seconds:.1f} s of training in all)"
            + (" -- stopped by train.max_minutes" if res.time_limit_reached else ""),
            f"checkpoint: {res.checkpoint}",
        ]
        ev = res.evaluation
        if ev is not None and ev.likelihood is not None:
            lik = ev.likelihood
            lines.append(f"test bits/dim (PF-ODE): {lik.mean:.4f} ± {lik.ci95:.4f} (n={lik.n})")
        if ev is not None and ev.elbo is not None:
            lines.append(f"test bits/dim (ELBO bound): {ev.elbo.mean:.4f} ± {ev.elbo.ci95:.4f}")
        if ev is not None and ev.figure is not None:
            lines.append(f"samples: {ev.figure}")
        print("\n".join(lines), flush=True)
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from scoresde import distributed as du
    from scoresde.plots import save_samples
    from scoresde.training import sample_sharded

    for name in ("nfe", "n"):
        _positive(f"--{name}", getattr(args, name))
    info, dev = _setup(args.device)
    try:
        loaded = _load(args, dev)
        sc = loaded.config.sample
        method = args.method or sc.method
        nfe = args.nfe or sc.nfe
        n = args.n or sc.n
        seed = sc.seed if args.seed is None else args.seed
        denoise = sc.denoise_final if args.denoise_final is None else args.denoise_final
        grid = args.grid if args.grid is not None else (sc.grid or None)
        from solvers import GRIDS

        if grid is not None and grid not in GRIDS and not Path(grid).is_file():
            raise ValueError(
                f"--grid / sample.grid must be one of {sorted(GRIDS)} or an existing grid "
                f"file (.json or .safetensors), got {grid!r}"
            )
        from scoresde.sampling import resolve_solver

        resolve_solver(method)  # an unknown name fails here, with the list of names
        model, cond = _class_model(args, loaded)
        ds = loaded.dataset()
        t0 = time.perf_counter()
        x = sample_sharded(
            model,
            ds.shape,
            n,
            method=method,
            nfe=nfe,
            seed=seed,
            info=info,
            device=dev,
            denoise_final=denoise,
            grid=grid,
        )
        seconds = time.perf_counter() - t0
        if info.is_main:
            assert x is not None
            tag = "" if cond is None else f"_class{cond[0]}_w{cond[1]:g}"
            out = Path(
                args.out or f"samples_step{loaded.step}_{method}_nfe{nfe}_seed{seed}{tag}.npz"
            )
            if out.suffix != ".npz":
                out = out.with_suffix(".npz")
            out.parent.mkdir(parents=True, exist_ok=True)
            arrays: dict[str, Any] = {
                "x": x.float().numpy(),
                "method": np.array(method),
                "nfe": np.array(nfe),
                "seed": np.array(seed),
                "step": np.array(loaded.step),
            }
            if cond is not None:
                arrays["class"], arrays["guidance"] = np.array(cond[0]), np.array(cond[1])
            if ds.levels is not None:
                arrays["levels"] = ds.to_levels(x).numpy().astype(np.int64)
            np.savez(out, **arrays)
            png = save_samples(
                x,
                out.with_suffix(".png"),
                data_range=ds.data_range,
                reference=ds.test[:2000] if len(ds.shape) == 1 else None,
                title=f"{ds.name}, step {loaded.step}, {method} NFE={nfe}"
                + ("" if cond is None else f", class {cond[0]}, w = {cond[1]:g}"),
            )
            finite = bool(torch.isfinite(x).all())
            _say(
                info,
                f"{n} samples ({method}, NFE budget {nfe}, seed {seed}, "
                + ("" if cond is None else f"class {cond[0]}, guidance w = {cond[1]:g}, ")
                + f"{'EMA' if loaded.ema else 'raw'} weights of step {loaded.step}) in "
                f"{seconds:.1f} s -> {out}, {png}" + ("" if finite else "  WARNING: non-finite"),
            )
    finally:
        du.shutdown(info)
    return 0


def _class_model(
    args: argparse.Namespace, loaded: LoadedModel
) -> tuple[Any, tuple[int, float] | None]:
    """The model ``sample`` draws from: the checkpoint's unconditional one, or with ``--class Y``
    the classifier-free guided :class:`~scoresde.CFGModel` bound to class Y and scale W (Ho &
    Salimans 2022). Returns it and (Y, W), or None without ``--class``."""
    import scoresde as sd

    y, w = args.class_label, args.guidance
    if y is None:
        if w is not None:
            raise UsageError("--guidance needs --class Y (the class to guide towards)")
        return loaded.model, None
    c = loaded.num_classes
    if c is None:
        raise UsageError(
            f"--class {y}: {loaded.path} is an unconditional model (its model.num_classes is not "
            "set); train with model.num_classes=N to sample by class"
        )
    if not 0 <= y < c:
        raise UsageError(f"--class must lie in [0, {c}) for this checkpoint, got {y}")
    w = loaded.config.sample.guidance if w is None else w
    if not math.isfinite(w):
        raise UsageError(f"--guidance must be a finite number, got {w}")
    model = sd.CFGModel(loaded.net, loaded.model.sde, y=y, w=w, prediction=loaded.model.prediction)
    return model, (y, float(w))


def _cmd_likelihood(args: argparse.Namespace) -> int:
    from scoresde import distributed as du
    from scoresde.training import bits_per_dim_sharded

    for name in ("n", "batch_size", "rtol", "atol", "elbo_steps"):
        _positive(f"--{name.replace('_', '-')}", getattr(args, name))
    info, dev = _setup(args.device)
    try:
        loaded = _load(args, dev)
        ev = loaded.config.eval
        ds = loaded.dataset()
        x = ds.test if args.split == "test" else ds.train
        if args.n is not None:
            x = x[: args.n]
        if x.shape[0] == 0:
            raise UsageError(f"the {args.split} split of {ds.name!r} is empty")
        progress = info.is_main and sys.stderr.isatty()
        common = {
            "levels": ds.levels,
            "data_range": ds.data_range,
            "info": info,
            "batch_size": args.batch_size or ev.batch_size,
            "seed": args.seed,
            "progress": progress,
        }
        _say(
            info,
            f"{ds.name} {args.split} split: {x.shape[0]} examples, "
            f"{'EMA' if loaded.ema else 'raw'} weights of step {loaded.step} ({loaded.path})",
        )
        lik = bits_per_dim_sharded(
            loaded.model,
            x.to(dev),
            kind="ode",
            ode_method=args.method or ev.ode_method,
            rtol=args.rtol or ev.rtol,
            atol=args.atol or ev.atol,
            divergence=args.divergence or ev.divergence,
            **common,
        )
        if lik is not None:
            _say(
                info,
                f"bits/dim (PF-ODE): {lik.mean:.4f} ± {_ci(lik.ci95)} (95% interval)  "
                f"NFE {lik.nfe:.0f} per example  time {lik.seconds:.1f} s",
            )
        if args.elbo:
            bound = bits_per_dim_sharded(
                loaded.model,
                x.to(dev),
                kind="elbo",
                elbo_steps=args.elbo_steps if args.elbo_steps else ev.elbo_steps,
                elbo_samples=ev.elbo_samples,
                dequantized=loaded.config.data.dequantize,
                **common,
            )
            if bound is not None:
                _say(
                    info,
                    f"bits/dim (ELBO, upper bound): {bound.mean:.4f} ± {_ci(bound.ci95)}  "
                    f"NFE {bound.nfe:.0f} per example  time {bound.seconds:.1f} s",
                )
        if ds.levels is not None and info.is_main:
            from scoresde.data import baselines

            b = baselines(ds)
            _say(
                info,
                f"baselines: per-pixel categorical {b.categorical:.4f}, uniform {b.uniform:.4f}",
            )
    finally:
        du.shutdown(info)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from scoresde.demo import DemoOptions, run_demo

    _positive("--minutes", args.minutes)
    _positive("--steps", args.steps)
    if args.threads < 0:
        raise UsageError(f"--threads must be >= 0, got {args.threads}")
    options = DemoOptions(
        dataset="two_moons" if args.moons else "digits",
        minutes=args.minutes,
        steps=args.steps,
        out=Path(args.out) if args.out else None,
        seed=args.seed,
        threads=args.threads,
        device=args.device,
        smoke=args.smoke,
    )
    _configure_logging(True)
    res = run_demo(options)
    figures = ", ".join(
        str(p) for p in res.figures if p.parent == res.run_dir or p.parent.name == "solvers"
    )
    lines = [
        ("demo interrupted during " + str(res.interrupted_stage) + ": partial report")
        if res.interrupted_stage
        else f"demo done in {res.seconds:.0f} s",
        f"report:     {res.report}",
        f"figures:    {figures or '-'}"
        + (f" (and {res.run_dir / 'samples'}/)" if (res.run_dir / "samples").is_dir() else ""),
        f"checkpoint: {res.checkpoint or '-'}",
    ]
    if (res.run_dir / "solvers" / "report.md").is_file():
        lines.append(f"solvers:    {res.run_dir / 'solvers' / 'report.md'} (tuned grid beside it)")
    if res.bpd_ode is not None:
        lines.append(f"test bits/dim: PF-ODE {res.bpd_ode:.4f}, ELBO {res.bpd_elbo:.4f}")
    print("\n".join(lines), flush=True)
    return 130 if res.interrupted_stage else 0


def _ci(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.4f}"


# =========================================================================== entry point


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0, or 2 on an error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("scoresde: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("SCORESDE_DEBUG"):
            raise
        print(f"scoresde {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        logging.getLogger("scoresde").removeHandler(_HANDLER)


if __name__ == "__main__":
    sys.exit(main())
