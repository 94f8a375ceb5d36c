"""Choose a solver for a model and a budget, tune its time grid, and reuse the tuned grid.

``sd.compare_solvers`` runs every deterministic method on every time grid at every budget
from the same initial noise, scores each run against a tight adaptive reference solve (and,
with held-out data, by sliced W2 and MMD), marks the Pareto front of error against the
evaluations actually used, and recommends one run per budget. ``sd.tune_grid`` then optimises
the recommended method's time grid on a calibration batch (in the spirit of "Align Your
Steps", Sabour et al. 2024), scored on held-out noise; the saved grid is reused by
``sd.sample(..., grid=path)``, ``scoresde sample --grid path`` or ``[sample] grid`` in a config.

By default the model is a built-in exact-score oracle (``gmm2d``: a sharp 8-mode mixture in
2-D under the DDPM chain), so the errors are errors of the solvers alone. ``--run DIR`` uses a
trained checkpoint instead (e.g. the run folder of ``scoresde demo``).

    python examples/choose_solver.py                    # oracle, budgets 5, 10, 20
    python examples/choose_solver.py --run runs/demo-...
    python examples/choose_solver.py --smoke            # a few methods, small batches (CI)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import scoresde as sd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a trained run folder or checkpoint (default: the oracle)")
    ap.add_argument("--out", default="choose_solver_out", help="folder for the report files")
    ap.add_argument("--smoke", action="store_true", help="a few methods and small batches")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)

    if args.run:
        loaded = sd.load_model(args.run)
        model, data = loaded.model, loaded.dataset().test
    else:
        problem = sd.builtin_oracle("gmm2d", "vp")
        model = problem.model
        data = problem.data(2000, torch.Generator().manual_seed(1))  # held-out exact samples

    budgets = (5, 10) if args.smoke else (5, 10, 20)
    methods = ["euler", "heun", "dpmpp_2m", "unipc"] if args.smoke else "ode"
    n = 200 if args.smoke else 1000
    report = sd.compare_solvers(
        model,
        methods=methods,
        nfe=budgets,
        grids=("default", "karras") if args.smoke else "all",
        n=n,
        data=data,
        generator=torch.Generator().manual_seed(0),
        progress=not args.smoke,
    )
    print(report.summary())

    # the recommendation is the front entry of least error that fits the budget
    front = report.pareto_front()
    for b in budgets:
        rec = report.recommendation(b)
        print(f"NFE {b:>3}: {rec.method} on {rec.grid!r} ({rec.nfe} NFE) - {rec.reason}")
        fitting = [r for r in front if r.nfe <= b]
        assert min(getattr(r, report.metric) for r in fitting) == rec.value

    # errors fall with the budget for the recommended runs (a check that could fail)
    values = [report.recommendation(b).value for b in budgets]
    assert values == sorted(values, reverse=True), values

    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(report.to_markdown())
    report.to_csv(out / "report.csv")
    report.to_json(out / "report.json")
    report.plot(out / "error_vs_nfe.png")
    assert sd.SolverReport.from_json(out / "report.json") == report

    # tune the grid of the recommendation at the smallest budget, reuse it by path
    rec = report.recommendation(budgets[0])
    tuned = sd.tune_grid(
        model,
        rec.method,
        rec.budget,
        n=64 if args.smoke else 256,
        n_held_out=64 if args.smoke else 512,
        iterations=15 if args.smoke else 100,
        generator=torch.Generator().manual_seed(2),
        progress=not args.smoke,
    )
    path = tuned.save(out / f"grid_{rec.method}_nfe{rec.budget}.json")
    assert tuned.calibration_tuned <= tuned.calibration_start  # guaranteed
    print(
        f"tuned {rec.method} at NFE {rec.budget}: calibration RMS {tuned.calibration_start:.4g}"
        f" -> {tuned.calibration_tuned:.4g}, held-out {tuned.held_out_start.rmse:.4g} -> "
        f"{tuned.held_out_tuned.rmse:.4g}; saved to {path}"
    )
    res = sd.sample(model, rec.method, rec.budget, shape=(8, *report.shape), grid=str(path))
    assert res.nfe <= rec.budget and torch.isfinite(res.x).all()
    print(f"report, plot and grid in {out.resolve()}")


if __name__ == "__main__":
    main()
