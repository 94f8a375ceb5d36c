"""``scoresde bench``: compare the solvers on a checkpoint or a built-in oracle.

::

    scoresde bench CKPT | oracle:NAME[:SDE] [--nfe 5,10,20] [--methods ...] [--grids ...]
                   [--n N] [--out DIR] [--tune [K]] [--metric rmse]

Runs :func:`scoresde.compare_solvers` and prints the recommendation per budget and the Pareto
front; writes ``report.md``, ``report.csv``, ``report.json`` (re-readable with
``sd.SolverReport.from_json``) and ``error_vs_nfe.png`` into ``--out`` (default
``bench-<name>``), and with ``--tune`` the tuned grids as ``grids/<method>_nfe<B>.json``
(reusable with ``sd.sample(..., grid="grids/....json")``).

``oracle:NAME[:SDE]`` is a built-in problem with an exact score (``sd.builtin_oracle``):
``gmm2d``, ``gmm64d``, ``rings2d`` under ``vp`` (the DDPM chain, default) or ``edm``; the
distances are then measured against exact held-out samples of the mixture. For a checkpoint
they are measured against the test split of its dataset (``--no-data``: against the
reference samples).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["add_bench_parser", "run_bench"]


def add_bench_parser(sub: Any) -> None:
    """Register the ``bench`` sub-command on the ``scoresde`` sub-parsers ``sub``."""
    from scoresde.selection import METRICS

    p = sub.add_parser(
        "bench",
        help="compare solvers on a checkpoint or an oracle; recommend one per budget",
        description=(
            "Compare every sampler x time grid x budget on TARGET from the same initial noise: "
            "endpoint error against a tight reference solve (deterministic methods), sliced W2 "
            "and MMD against held-out data (all methods), wall time, NFE used. Prints the "
            "recommendation per budget and the Pareto front; writes report.md, report.csv, "
            "report.json and error_vs_nfe.png to --out."
        ),
    )
    p.add_argument(
        "target",
        metavar="TARGET",
        help="a checkpoint (run folder, checkpoint folder or weights) or oracle:NAME[:SDE] "
        "with NAME in gmm2d, gmm64d, rings2d and SDE in vp (default), edm",
    )
    p.add_argument("--nfe", default="5,10,20,50", help="budgets, comma-separated (5,10,20,50)")
    p.add_argument(
        "--methods",
        default="all",
        help="all, ode, sde or comma-separated method names (default: all)",
    )
    p.add_argument(
        "--grids",
        default="all",
        help="all, or comma-separated from default, uniform, quadratic, logsnr, karras",
    )
    p.add_argument(
        "-n", "--n", type=int, dest="n", help="samples per run (default: 1000; checkpoints 256)"
    )
    p.add_argument("--out", help="output folder (default: ./bench-<name>)")
    p.add_argument(
        "--tune",
        nargs="?",
        type=int,
        const=2,
        default=0,
        metavar="K",
        help="tune the time grids of the best K methods at every budget (K = 2 if omitted)",
    )
    p.add_argument("--tune-n", type=int, default=512, help="calibration batch for --tune")
    p.add_argument(
        "--tune-iterations", type=int, default=100, help="objective evaluations per tuned grid"
    )
    p.add_argument("--metric", choices=METRICS, default="rmse", help="what to rank by")
    p.add_argument("--reference", default="dop853", help="adaptive reference method (dop853)")
    p.add_argument(
        "--reference-tol", type=float, help="reference rtol = atol (default 1e-10; float32: 1e-5)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the noise and the data draw")
    p.add_argument("--no-data", action="store_true", help="distances against the reference samples")
    p.add_argument("--raw", action="store_true", help="checkpoint: raw weights, not the EMA")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where")
    p.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads (default: oracles 1, checkpoints "
        "their train.threads, else torch's)",
    )
    p.set_defaults(func=run_bench)


def _ints(text: str, name: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{name} must be comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise ValueError(f"{name} must be comma-separated integers >= 1, got {text!r}")
    return values


def _positive(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def run_bench(args: argparse.Namespace) -> int:
    """Run ``scoresde bench`` with parsed arguments; returns the exit status."""
    import torch

    from scoresde.selection import builtin_oracle, compare_solvers

    budgets = _ints(args.nfe, "--nfe")
    for name in ("n", "tune_n", "tune_iterations", "reference_tol", "threads"):
        _positive(f"--{name.replace('_', '-')}", getattr(args, name))
    if args.tune < 0:
        raise ValueError(f"--tune must be >= 0, got {args.tune}")
    if args.threads:
        torch.set_num_threads(args.threads)
    elif args.target.startswith("oracle:"):
        torch.set_num_threads(1)  # an oracle's small matrix products gain nothing from more
    gen = torch.Generator().manual_seed(args.seed)
    data = None
    shape = None
    if args.target.startswith("oracle:"):
        problem = builtin_oracle(args.target[len("oracle:") :])
        model: Any = problem.model
        n = args.n or 1000
        label = problem.name
        if not args.no_data:
            data = problem.data(n, torch.Generator().manual_seed(args.seed + 1))
    else:
        from scoresde.training import load_model

        device = args.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda but torch.cuda.is_available() is False")
        loaded = load_model(args.target, ema=not args.raw, device=device)
        if args.threads is None and loaded.config.train.threads:
            torch.set_num_threads(loaded.config.train.threads)
        model = loaded.model
        n = args.n or 256
        ds = loaded.dataset()
        shape = ds.shape
        label = f"{ds.name}-step{loaded.step}"
        if not args.no_data:
            data = ds.test
    out = Path(args.out or f"bench-{re.sub(r'[^A-Za-z0-9_.-]+', '-', label)}")
    t0 = time.perf_counter()
    report = compare_solvers(
        model,
        methods=args.methods,
        nfe=budgets,
        grids=args.grids,
        n=n,
        reference=args.reference,
        data=data,
        generator=gen,
        shape=shape,
        reference_tol=args.reference_tol,
        metric=args.metric,
        tune=args.tune,
        tune_n=args.tune_n,
        tune_iterations=args.tune_iterations,
        progress=sys.stderr.isatty(),
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(report.to_markdown())
    report.to_csv(out / "report.csv")
    report.to_json(out / "report.json")
    report.plot(out / "error_vs_nfe.png")
    grids = []
    for tg in report.tuned:
        grids.append(tg.save(out / "grids" / f"{tg.method}_nfe{tg.nfe}.json"))
    print(
        f"# {label}: {len(report.runs)} runs, {report.n} samples, {time.perf_counter() - t0:.1f} s"
    )
    print()
    print(report.summary())
    print()
    written = ["report.md", "report.csv", "report.json", "error_vs_nfe.png"]
    print(f"wrote {', '.join(str(out / w) for w in written)}")
    if grids:
        print(f"tuned grids: {', '.join(str(g) for g in grids)}")
    return 0
