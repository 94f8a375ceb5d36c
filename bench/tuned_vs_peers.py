"""The recommended sampler with its tuned grid against the best peer sampler, side by side.

Usage (from the repository root; docs/choosing-a-solver.md has the results)::

    python bench/tuned_vs_peers.py            # VP and EDM, 2-D and 64-D (~15-30 min on 2 cores)
    python bench/tuned_vs_peers.py --quick    # 2-D only, fewer tuning evaluations

For every problem of ``bench/sampler_accuracy.py`` (the same Gaussian mixtures, SDEs, initial
noise ``x_T`` and DOP853 reference; ``make_setting`` and ``reference`` are imported from
there), at budgets of 5 and 10 network evaluations:

1. ``sd.compare_solvers`` runs every deterministic method on every named grid on its OWN
   noise (drawn from a separate generator), tunes the grids of the best two methods at each
   budget (``tune=2``; a calibration batch drawn from that generator too), and recommends a
   (method, grid) per budget: the Pareto-optimal run of least RMS endpoint error, tuned grids
   included.
2. The recommended method on its recommended grid (when that is a tuned grid, the saved one)
   is then run on the benchmark's ``x_T``, which neither the recommendation nor the tuning
   saw, and scored against the benchmark's reference.
3. Every peer sampler of ``bench/peer_samplers.py`` (diffusers schedulers, k-diffusion
   samplers, on their default grids) runs on the same ``x_T`` at the same budget.

The table reports, per setting and budget, the RMS and median endpoint error of ours and of
the best peer on each metric (the best peer is chosen per metric), their ratio, and, to show
what tuning adds, our best method on its default grid and the recommended method on its
default grid. Outputs: ``bench/results/tuned_vs_peers{,_quick}.{json,md}``, each setting's
whole report ``bench/results/tuned_vs_peers_report_<setting>.json`` (``sd.SolverReport.
from_json``) and its plot ``docs/img/choosing_<setting>.png`` (``--quick``: into ``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE.parent), str(_HERE)]

import peer_samplers as peers  # noqa: E402
import sampler_accuracy as sa  # noqa: E402

import scoresde as sd  # noqa: E402

BUDGETS = (5, 10)


def _errors(x: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    rmse, med, _ = sa._errors(x, ref)
    return rmse, med


def run_setting(
    setting: sa.Setting,
    kd: peers.KDiffusion,
    *,
    n_compare: int,
    tune_n: int,
    tune_iterations: int,
    seed: int,
    img: Path,
    out_dir: Path,
    log: Any,
) -> list[dict[str, Any]]:
    oracle = setting.oracle
    gen = torch.Generator().manual_seed(10_000 + seed)  # not the benchmark's noise
    data = setting.gmm.sample(
        n_compare, torch.Generator().manual_seed(20_000 + seed), dtype=sa._F64
    )
    t0 = time.perf_counter()
    report = sd.compare_solvers(
        oracle,
        methods="ode",
        nfe=BUDGETS,
        grids="all",
        n=n_compare,
        data=data,
        generator=gen,
        tune=2,
        tune_n=tune_n,
        tune_iterations=tune_iterations,
        progress=False,
    )
    log(f"{setting.name}: compare_solvers with tuning {time.perf_counter() - t0:.1f} s")
    report.plot(img / f"choosing_{setting.name}.png")
    report.to_json(out_dir / f"tuned_vs_peers_report_{setting.name}.json")
    out = []
    for b in BUDGETS:
        rec = report.recommendation(b)
        tuned = {(t.method, t.nfe): t for t in report.tuned}
        if rec.grid == "tuned":
            grid: Any = tuned[(rec.method, b)].ts
        else:
            grid = rec.grid
        res = sd.sample(oracle, rec.method, b, x_init=setting.x_t, grid=grid)
        ours = _errors(res.x, setting.ref)
        # what tuning adds: the recommended method on its default grid, and our best
        # method on its default grid (as sampler_accuracy.py runs them), on the same x_T
        rec_default = _errors(sd.sample(oracle, rec.method, b, x_init=setting.x_t).x, setting.ref)
        best_default: dict[str, tuple[str, float]] = {}
        for m in sd.selection.selectable_methods("ode"):
            e = _errors(sd.sample(oracle, m, b, x_init=setting.x_t).x, setting.ref)
            for i, metric in enumerate(("rmse", "median")):
                if metric not in best_default or e[i] < best_default[metric][1]:
                    best_default[metric] = (m, e[i])
        peer_rows = []
        for spec in sa.peer_specs(setting, kd):
            n_steps = spec.steps_for_budget(b)
            if n_steps < 1:
                continue
            try:
                pr = spec.run(oracle, setting.x_t, n_steps)
            except Exception as err:  # noqa: BLE001 - a failing peer is reported, not fatal
                log(f"  {spec.name} failed: {err}")
                continue
            assert pr.nfe <= b
            peer_rows.append((spec.name, pr.nfe, *_errors(pr.x, setting.ref)))
        best_rms = min(peer_rows, key=lambda r: r[2])
        best_med = min(peer_rows, key=lambda r: r[3])
        row = {
            "setting": setting.name,
            "budget": b,
            "ours": f"{rec.method}@{rec.grid}",
            "ours_nfe": res.nfe,
            "ours_rmse": ours[0],
            "ours_median": ours[1],
            "peer_rmse_name": best_rms[0],
            "peer_rmse": best_rms[2],
            "peer_median_name": best_med[0],
            "peer_median": best_med[3],
            "ratio_rmse": ours[0] / best_rms[2],
            "ratio_median": ours[1] / best_med[3],
            "rec_default_rmse": rec_default[0],
            "rec_default_median": rec_default[1],
            "best_default_rmse": list(best_default["rmse"]),
            "best_default_median": list(best_default["median"]),
            "met": ours[0] < best_rms[2] and ours[1] < best_med[3],
            "recommendation": rec.reason,
            "tuned": [
                {
                    "method": t.method,
                    "start": t.start,
                    "optimizer": t.optimizer,
                    "evaluations": t.evaluations,
                    "seconds": t.seconds,
                    "calibration": [t.calibration_start, t.calibration_tuned],
                    "held_out_rmse": [t.held_out_start.rmse, t.held_out_tuned.rmse],
                    "held_out_median": [t.held_out_start.median_err, t.held_out_tuned.median_err],
                    "grid": list(t.grid),
                }
                for t in report.tuned
                if t.nfe == b
            ],
            "peers": [list(p) for p in peer_rows],
        }
        log(
            f"  NFE {b}: ours {row['ours']} {ours[0]:.4g}/{ours[1]:.4g}  best peer "
            f"{best_rms[0]} {best_rms[2]:.4g} / {best_med[0]} {best_med[3]:.4g}  "
            f"met={row['met']}"
        )
        out.append(row)
    return out


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Recommended method with its tuned grid vs the best peer",
        "",
        f"Command: `{meta['command']}`; {json.dumps(meta['environment'])}; total "
        f"{meta['seconds']:.0f} s.",
        "",
        "| setting | NFE | ours (recommended) | RMS | median | best peer (RMS) | RMS | ratio "
        "| best peer (median) | median | ratio | met |",
        "|---|---:|---|---:|---:|---|---:|---:|---|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['budget']} | `{r['ours']}` | {r['ours_rmse']:.3g} | "
            f"{r['ours_median']:.3g} | {r['peer_rmse_name']} | {r['peer_rmse']:.3g} | "
            f"{r['ratio_rmse']:.2f} | {r['peer_median_name']} | {r['peer_median']:.3g} | "
            f"{r['ratio_median']:.2f} | {'yes' if r['met'] else '**no**'} |"
        )
    lines += [
        "",
        "What tuning adds (same x_T): the recommended method on its default grid, and our best "
        "method on its default grid (RMS / median).",
        "",
        "| setting | NFE | ours, tuned | recommended method, default grid | best default (RMS) "
        "| best default (median) |",
        "|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        bd_r, bd_m = r["best_default_rmse"], r["best_default_median"]
        lines.append(
            f"| {r['setting']} | {r['budget']} | {r['ours_rmse']:.3g} / {r['ours_median']:.3g} | "
            f"{r['rec_default_rmse']:.3g} / {r['rec_default_median']:.3g} | "
            f"`{bd_r[0]}` {bd_r[1]:.3g} | `{bd_m[0]}` {bd_m[1]:.3g} |"
        )
    lines += ["", "Tuned grids (calibration objective, held-out RMS and median of the report):", ""]
    for r in rows:
        for t in r["tuned"]:
            lines.append(
                f"* {r['setting']}, NFE {r['budget']}: `{t['method']}` from {t['start']} "
                f"({t['optimizer']}, {t['evaluations']} solves, {t['seconds']:.0f} s): "
                f"calibration {t['calibration'][0]:.3g} -> {t['calibration'][1]:.3g}, held-out "
                f"RMS {t['held_out_rmse'][0]:.3g} -> {t['held_out_rmse'][1]:.3g}, median "
                f"{t['held_out_median'][0]:.3g} -> {t['held_out_median'][1]:.3g}"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2-D only, fewer tuning evaluations")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--img", type=Path, default=None, help="plots (default docs/img)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    img = args.img or (args.out if args.quick else Path("docs/img"))
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f} s] {msg}", flush=True)

    kd = peers.load_k_diffusion()
    log(f"k-diffusion: {kd.version} ({kd.reason})")
    plan = [("vp", 2, 1000), ("edm", 2, 1000)]
    if not args.quick:
        plan += [("vp", 64, 250), ("edm", 64, 250)]
    rows: list[dict[str, Any]] = []
    for kind, dim, n in plan:
        s = sa.make_setting(kind, dim, n, args.seed + dim)  # the benchmark's problem and x_T
        s.ref, nfe, secs = sa.reference(s)
        log(f"{s.name}: reference {nfe} NFE, {secs:.1f} s")
        rows += run_setting(
            s,
            kd,
            n_compare=n,
            tune_n=512 if dim == 2 else 256,
            tune_iterations=40 if args.quick else 100,
            seed=args.seed + dim + (0 if kind == "vp" else 1),
            img=img,
            out_dir=args.out,
            log=log,
        )
    meta = {
        "command": "python bench/tuned_vs_peers.py " + " ".join(argv or sys.argv[1:]),
        "environment": sa.environment(),
        "seconds": time.perf_counter() - start,
        "budgets": list(BUDGETS),
    }
    stem = "tuned_vs_peers" + ("_quick" if args.quick else "")
    (args.out / f"{stem}.json").write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(rows, meta))
    met = sum(r["met"] for r in rows)
    log(f"met in {met} of {len(rows)} (setting, NFE) cells; wrote {args.out / stem}.{{json,md}}")
    return 0 if all(math.isfinite(r["ours_rmse"]) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
