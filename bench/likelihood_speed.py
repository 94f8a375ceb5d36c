"""Likelihood throughput: samples/s and NFE of ``sd.log_likelihood``, exact against Hutchinson
divergence, across batch sizes, next to the score_sde-style CPU round trip.

Usage (from the repository root; results in docs/benchmarks.md, "Speed")::

    python bench/likelihood_speed.py --quick         # batches 16, 64, 256; 1 repeat (~4 min)
    python bench/likelihood_speed.py                 # + batch 1024; median of 3
    python bench/likelihood_speed.py --device cuda

Every method solves the augmented probability-flow ODE from ``t_min`` to ``T`` at the same
tolerance ``rtol = atol = 1e-5`` (the default of ``sd.log_likelihood`` and of score_sde's
``likelihood.py``) on the same model and data; a row reports the NFE (batched evaluations of
the augmented ODE), the median wall time of the whole call and the throughput ``B / time``
(samples/s). Accuracy at a given tolerance is ``bench/likelihood.py``'s subject, not this one's.

Problems (VP SDE, ``sd.VPSDE()``):

* ``gmm16``: the 4-component Gaussian mixture in D = 16 of ``bench/likelihood.py`` with its
  exact score (float64, cheap: the solver loop and the divergence dominate);
* ``mlp16``, ``mlp64``: an eps-predicting ``scoresde.models.MLP(D, time_scale=1)`` (width
  128, depth 3, random weights, float32) on standard-normal data: a network whose Jacobian
  costs what a real one does (the exact divergence takes D vector-Jacobian products per
  evaluation, Hutchinson K). ``time_scale=1``: with the default embedding scale (1000) a
  random network oscillates in t and dopri5 needs ~850 evaluations instead of ~200.

Methods: ``ours exact`` and ``ours hutch-K`` (``sd.log_likelihood``, batched dopri5 on the
device, K Rademacher probes); ``score_sde RK45 hutch-1`` and ``score_sde RK45 exact``: the
re-implementation of score_sde's loop in ``bench/likelihood.py`` (``scipy.integrate.solve_ivp``
RK45 on a flat float64 NumPy vector, a device-to-host round trip per evaluation; the network in
float32, cast by a thin wrapper so that the same float32 MLP serves every method).

Outputs: ``bench/results/likelihood_speed[_quick].{csv,json,md}``.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE.parent), str(_HERE)]

import likelihood as lik_bench  # noqa: E402  (bench/likelihood.py)
from bench_env import cpu_name, loadavg  # noqa: E402

import scoresde as sd  # noqa: E402
from scoresde.divergence import sample_probes  # noqa: E402
from scoresde.models import MLP  # noqa: E402

F64 = torch.float64
TOL = 1e-5


class Float32Net(nn.Module):
    """A float32 network called with any float dtype: input cast to float32, output cast back
    (autograd flows through the casts), so the float64 and float32 callers share one net."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.net(x.float(), t.float()).to(x.dtype)


class WithPrior:
    """A score model with ``log_prob_t(z, T)`` = the SDE's prior log-density (what
    ``bench/likelihood.py``'s score_sde loop adds at the end; its oracle has the exact one)."""

    def __init__(self, model: sd.ScoreModel) -> None:
        self.model = model
        self.sde = model.sde

    def score(self, x: Tensor, t: Any) -> Tensor:
        return self.model.score(x, t)

    def log_prob_t(self, z: Tensor, t: float) -> Tensor:
        return self.sde.prior_logp(z)


@dataclass
class Row:
    problem: str
    batch: int
    method: str
    nfe: int
    seconds: float
    samples_per_s: float
    evals_per_s: float  # sample-evaluations per second: B * NFE / time
    note: str = ""


def make_problem(name: str, batch: int, device: str) -> tuple[Any, Tensor]:
    """The model and a batch of data."""
    if name == "gmm16":
        oracle, x, _ = lik_bench.problem(sd.VPSDE(), 16, batch, device)
        return oracle, x
    dim = int(name.removeprefix("mlp"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = MLP(dim, time_scale=1.0).to(device).eval()
    model = WithPrior(sd.ScoreModel(Float32Net(net), sd.VPSDE(), prediction="eps"))
    x = torch.randn(batch, dim, generator=torch.Generator().manual_seed(1)).to(device)
    return model, x


def methods(model: Any, x: Tensor, quick: bool) -> dict[str, Callable[[], int]]:
    """name -> a call returning its NFE."""
    dev = x.device

    def prior(z: Tensor) -> Tensor:  # the same prior term as the score_sde loop
        return model.log_prob_t(z, model.sde.T)

    def ours(**kw: Any) -> Callable[[], int]:
        def run() -> int:
            g = torch.Generator(dev).manual_seed(3) if kw.get("divergence") else None
            res = sd.log_likelihood(model, x, rtol=TOL, atol=TOL, generator=g, prior=prior, **kw)
            return res.nfe

        return run

    probe = sample_probes(
        x.shape, 1, "rademacher", generator=torch.Generator().manual_seed(3), dtype=torch.float32
    )[0].to(dev)

    def score_sde(p: Tensor | None) -> Callable[[], int]:
        return lambda: lik_bench.score_sde_style(model, x, TOL, p).nfe

    out = {
        "ours exact": ours(),
        "ours hutch-1": ours(divergence="hutchinson", n_probes=1),
        "ours hutch-4": ours(divergence="hutchinson", n_probes=4),
        "score_sde RK45 hutch-1": score_sde(probe),
        "score_sde RK45 exact": score_sde(None),
    }
    if quick:
        out.pop("ours hutch-4")
    return out


def timed(fn: Callable[[], int], repeats: int, cuda: bool) -> tuple[int, float]:
    times, nfe = [], 0
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        nfe = fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return nfe, statistics.median(times)


def render(meta: dict[str, Any], rows: list[Row]) -> str:
    lines = [
        f"Likelihood throughput at rtol = atol = {TOL:g}, device {meta['device']} "
        f"({meta['cpu'] if meta['device'] == 'cpu' else meta.get('gpu')}), torch "
        f"{meta['torch']}, {meta['threads']} thread(s), load average {meta['load_start']} / "
        f"{meta['load_end']}, {meta['date']}, {meta['seconds']:.0f} s.",
        "",
    ]
    for problem in dict.fromkeys(r.problem for r in rows):
        sel = [r for r in rows if r.problem == problem]
        batches = sorted({r.batch for r in sel})
        names = list(dict.fromkeys(r.method for r in sel))
        lines += [
            f"**{problem}**: samples/s (NFE)",
            "",
            "| method | " + " | ".join(f"B = {b}" for b in batches) + " |",
            "|---|" + "---:|" * len(batches),
        ]
        for name in names:
            cells = []
            for b in batches:
                r = next((r for r in sel if r.method == name and r.batch == b), None)
                if r is None or r.note:
                    cells.append(r.note[:40] if r else "")
                else:
                    cells.append(f"{r.samples_per_s:.1f} ({r.nfe})")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="batches 16, 64, 256; 1 repeat")
    ap.add_argument("--problems", default="gmm16,mlp16,mlp64")
    ap.add_argument("--batches", default=None, help="comma-separated (default 16,64,256,1024)")
    ap.add_argument("--repeats", type=int, default=None, help="default 3 (quick: 1)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=_HERE / "results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batches = (
        [int(b) for b in args.batches.split(",")]
        if args.batches
        else ([16, 64, 256] if args.quick else [16, 64, 256, 1024])
    )
    repeats = args.repeats or (1 if args.quick else 3)
    cuda = args.device.startswith("cuda")
    meta: dict[str, Any] = {
        "device": args.device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "date": time.strftime("%Y-%m-%d"),
        "load_start": loadavg(),
        "tol": TOL,
    }
    if cuda:
        meta["gpu"] = torch.cuda.get_device_name()
    t0 = time.perf_counter()
    rows: list[Row] = []
    for problem in args.problems.split(","):
        for b in batches:
            model, x = make_problem(problem, b, args.device)
            for name, fn in methods(model, x, args.quick).items():
                try:
                    fn()  # warm-up (first calls allocate, load kernels, fill caches)
                    nfe, secs = timed(fn, repeats, cuda)
                    row = Row(problem, b, name, nfe, secs, b / secs, b * nfe / secs)
                except Exception as err:  # noqa: BLE001 - a failure is a result
                    row = Row(problem, b, name, 0, 0.0, 0.0, 0.0, f"failed: {err!r}"[:120])
                rows.append(row)
                print(
                    f"{problem:6s} B={b:5d} {name:24s} nfe={row.nfe:4d} {row.seconds:8.3f} s "
                    f"{row.samples_per_s:9.1f} samples/s {row.note}",
                    flush=True,
                )
    meta["load_end"] = loadavg()
    meta["seconds"] = time.perf_counter() - t0
    stem = "likelihood_speed" + ("_quick" if args.quick else "")
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / f"{stem}.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(Row.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    (args.out / f"{stem}.json").write_text(
        json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=1)
    )
    text = render(meta, rows)
    (args.out / f"{stem}.md").write_text(text)
    print()
    print(text)


if __name__ == "__main__":
    main()
