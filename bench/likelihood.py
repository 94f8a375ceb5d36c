"""Likelihood benchmark: time and NFE to reach 1e-3 bits/dim on a Gaussian-mixture oracle.

Usage::

    python bench/likelihood.py             # VP and VE, D = 16, a batch of 64 (a few minutes)
    python bench/likelihood.py --quick     # VP only, batch 16
    python bench/likelihood.py --device cuda

Problem: a 4-component Gaussian mixture in D = 16 (diagonal covariances), its exact score
(``GaussianMixtureOracle``) under the VP SDE (and the VE SDE), a batch of samples from it (the
third setting moves 4 of the 64 samples 3 times farther from the mean: a heterogeneous batch). The
target is the exact ``log p_{t_min}(x)``; every method uses the exact ``log p_T`` of the
diffused mixture as its prior, so the error measured is that of the ODE solve (and, for
Hutchinson, of the probe estimate), not the prior mismatch.

For each method the tolerance ``rtol = atol`` is swept over 1e-3 .. 1e-7 (four values per
decade) and the loosest
tolerance whose **largest** bits/dim error over the batch is <= 1e-3 is reported with its NFE
(batched evaluations of the augmented ODE), the evaluations summed over the samples
(``sample-evals``: the work, when finished samples leave the batch) and the median wall time.

Methods (all on the same model):

* ``ours exact shared``: ``sd.log_likelihood`` (batched dopri5 on the device, one step size for
  the batch, every sample's error <= tol);
* ``ours exact per-sample``: ``per_sample=True`` (each sample its own step size);
* ``ours exact separate``: one ``sd.log_likelihood`` call per sample (batch of 1), the
  alternative to per-sample stepping;
* ``torchdiffeq dopri5 exact``: the same augmented ODE through ``solvers.Dopri5``
  (torchdiffeq; its error norm is the RMS over the whole batch);
* ``score_sde RK45 hutch-1``: a re-implementation of score_sde's ``likelihood.py`` from its
  description: ``scipy.integrate.solve_ivp(method="RK45")`` on a flat float64 numpy vector,
  each evaluation copying the state to torch, evaluating the drift and (in a second network
  pass, with autograd) the Hutchinson divergence with one Rademacher probe in float32, and
  copying back;
* ``score_sde RK45 exact``: the same loop with our exact float64 divergence (isolates the cost
  of scipy's loop and host round trip from the estimator);
* ``ours hutch-1`` / ``ours hutch-16``: Hutchinson with 1 or 16 Rademacher probes. For these the
  tolerance is chosen on the *solve* error (against the same probes solved at 1e-9); the
  estimator's own error is reported separately (``est. err``, the RMS over the batch of the
  difference from the exact value, and the mean standard error where K > 1).

Outputs: ``bench/results/likelihood.csv`` and ``likelihood.md``.
"""

from __future__ import annotations

import argparse
import csv
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE.parent)]

import scoresde as sd  # noqa: E402
import solvers  # noqa: E402
from scoresde import likelihood as lik  # noqa: E402
from scoresde.divergence import sample_probes  # noqa: E402
from scoresde.reverse import reverse_drift  # noqa: E402

F64 = torch.float64
LN2 = math.log(2.0)
TOLS = tuple(float(f"{10 ** (-3 - k / 4):.2g}") for k in range(17))  # 1e-3 .. 1e-7
TARGET = 1e-3  # bits/dim


# =========================================================================== the problem
def problem(
    sde: sd.SDE, d: int, b: int, device: str, outliers: int = 0
) -> tuple[Any, Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    w = torch.rand(4, generator=g, dtype=F64) + 0.5
    mu = 2.0 * torch.randn(4, d, generator=g, dtype=F64)
    var = 0.05 + 0.5 * torch.rand(4, d, generator=g, dtype=F64)
    gmm = sd.GaussianMixture(w / w.sum(), mu, var)
    oracle = gmm.score_model(sde)
    x = gmm.sample(b, torch.Generator().manual_seed(1), dtype=F64)
    if outliers:  # points far in the tails: 3 times as far from the mean as typical ones
        m = x.mean(0)
        x[:outliers] = m + 3.0 * (x[:outliers] - m)
    x = x.to(device)
    exact = oracle.log_prob_t(x, sde.t_min)
    return oracle, x, exact


def bpd(log_prob: Tensor, d: int) -> Tensor:
    return -log_prob / (d * LN2)


# =========================================================================== methods
@dataclass
class Run:
    log_prob: Tensor  # (B,)
    nfe: int
    sample_evals: int
    stderr: Tensor | None = None


def ours(oracle: Any, x: Tensor, tol: float, **kw: Any) -> Run:
    prior = lambda z: oracle.log_prob_t(z, oracle.sde.T)  # noqa: E731
    r = sd.log_likelihood(oracle, x, rtol=tol, atol=tol, prior=prior, **kw)
    return Run(r.log_prob, r.nfe, int(r.nfe_per_sample.sum()), r.stderr)


def ours_separate(oracle: Any, x: Tensor, tol: float) -> Run:
    runs = [ours(oracle, x[i : i + 1], tol) for i in range(x.shape[0])]
    return Run(
        torch.cat([r.log_prob for r in runs]),
        sum(r.nfe for r in runs),
        sum(r.sample_evals for r in runs),
    )


def torchdiffeq_dopri5(oracle: Any, x: Tensor, tol: float) -> Run:
    sde = oracle.sde
    b, dims = x.shape[0], tuple(x.shape[1:])
    d = math.prod(dims)
    fn = lik._augmented_fn(oracle, sde, dims, F64, F64, "exact", None, None)
    term = lik._CountingTerm(fn, b, x.device, F64)
    y0 = torch.cat([x.reshape(b, d), torch.zeros(b, 1, dtype=F64, device=x.device)], 1)
    ts = torch.tensor([sde.t_min, sde.T], dtype=F64, device=x.device)
    with torch.no_grad():
        y, _ = solvers.Dopri5(rtol=tol, atol=tol).solve(term, y0, ts)
    z = y[:, :d].reshape(x.shape)
    return Run(oracle.log_prob_t(z, sde.T) + y[:, d], term.nfe, term.nfe * b)


def score_sde_style(oracle: Any, x: Tensor, tol: float, probe: Tensor | None) -> Run:
    """score_sde's likelihood loop (from its description): scipy RK45 over a flat numpy
    vector, a host round trip per evaluation, float32 network passes, Hutchinson divergence in
    a second forward pass (``probe``), or our exact float64 divergence when ``probe`` is None."""
    import scipy.integrate

    sde = oracle.sde
    shape, device, b = x.shape, x.device, x.shape[0]
    d = math.prod(shape[1:])

    def drift_fn(v: Tensor, t: Tensor) -> Tensor:
        return reverse_drift(sde, oracle.score, v, t, probability_flow=True)

    def div_fn(v: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        with torch.enable_grad():
            v = v.detach().requires_grad_(True)
            fn_eps = torch.sum(drift_fn(v, t) * eps)
            (grad,) = torch.autograd.grad(fn_eps, v)
        return torch.sum(grad * eps, dim=tuple(range(1, v.ndim)))

    counter = {"nfe": 0}

    def ode_func(t: float, y: np.ndarray) -> np.ndarray:
        counter["nfe"] += 1
        if probe is None:  # the loop with our exact float64 divergence
            sample = torch.from_numpy(y[:-b].reshape(shape)).to(device)
            vec_t = torch.full((b,), t, dtype=F64, device=device)
            out = lik._augmented_fn(oracle, sde, tuple(shape[1:]), F64, F64, "exact", None, None)(
                torch.cat([sample.reshape(b, d), torch.zeros(b, 1, dtype=F64, device=device)], 1),
                vec_t,
                torch.arange(b, device=device),
            )
            out = out.detach().cpu()  # score_sde's layout: all states, then all log-densities
            return torch.cat([out[:, :d].reshape(-1), out[:, d]]).numpy()
        sample = torch.from_numpy(y[:-b].reshape(shape)).to(device).type(torch.float32)
        vec_t = torch.ones(b, device=device) * t
        with torch.no_grad():
            drift = drift_fn(sample, vec_t).detach().cpu().numpy().reshape(-1)
        logp_grad = div_fn(sample, vec_t, probe).detach().cpu().numpy().reshape(-1)
        return np.concatenate([drift, logp_grad], axis=0)

    init = np.concatenate([x.detach().cpu().numpy().reshape(-1), np.zeros(b)], axis=0)
    solution = scipy.integrate.solve_ivp(
        ode_func, (sde.t_min, sde.T), init, rtol=tol, atol=tol, method="RK45"
    )
    zp = solution.y[:, -1]
    z = torch.from_numpy(zp[:-b].reshape(shape)).to(device=device, dtype=F64)
    delta = torch.from_numpy(zp[-b:]).to(device=device, dtype=F64)
    return Run(oracle.log_prob_t(z, sde.T) + delta, solution.nfev, solution.nfev * b)


# =========================================================================== the sweep
@dataclass
class Row:
    setting: str
    method: str
    tol: float | None
    nfe: int
    sample_evals: int
    seconds: float
    err_bpd: float
    est_err_bpd: float | None = None
    stderr_bpd: float | None = None


def timed(fn: Callable[[], Run], repeats: int) -> tuple[Run, float]:
    times, run = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        run = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    assert run is not None
    return run, statistics.median(times)


def sweep(
    setting: str,
    name: str,
    make: Callable[[float], Callable[[], Run]],
    reference: Tensor,
    d: int,
    repeats: int,
    exact: Tensor | None = None,
) -> Row:
    """The loosest tolerance with max |bpd - bpd(reference)| <= TARGET."""
    last = None
    for tol in TOLS:
        run, seconds = timed(make(tol), 1)
        err = float((bpd(run.log_prob, d) - bpd(reference, d)).abs().max())
        last = (tol, run, seconds, err)
        if err <= TARGET:
            break
    tol, run, seconds, err = last  # type: ignore[misc]
    if repeats > 1:
        run, seconds = timed(make(tol), repeats)
    row = Row(
        setting, name, tol if err <= TARGET else None, run.nfe, run.sample_evals, seconds, err
    )
    if exact is not None:
        row.est_err_bpd = float((bpd(run.log_prob, d) - bpd(exact, d)).square().mean().sqrt())
        if run.stderr is not None and bool(torch.isfinite(run.stderr).all()):
            row.stderr_bpd = float(run.stderr.mean()) / (d * LN2)
    print(
        f"  {name:28s} tol={row.tol!s:7s} nfe={row.nfe:5d} sample-evals={row.sample_evals:7d} "
        f"time={row.seconds:7.3f}s err={row.err_bpd:.2e}",
        flush=True,
    )
    return row


def run_setting(
    sde_name: str, d: int, b: int, device: str, repeats: int, outliers: int = 0
) -> list[Row]:
    sde = {"VP": sd.VPSDE(), "VE": sd.VESDE()}[sde_name]
    oracle, x, exact = problem(sde, d, b, device, outliers)
    setting = f"{sde_name}, D={d}, B={b}" + (f", {outliers} outliers" if outliers else "")
    print(setting, flush=True)
    rows = [
        sweep(
            setting, "ours exact shared", lambda t: lambda: ours(oracle, x, t), exact, d, repeats
        ),
        sweep(
            setting,
            "ours exact per-sample",
            lambda t: lambda: ours(oracle, x, t, per_sample=True),
            exact,
            d,
            repeats,
        ),
        sweep(
            setting,
            "ours exact separate",
            lambda t: lambda: ours_separate(oracle, x, t),
            exact,
            d,
            1,
        ),
        sweep(
            setting,
            "torchdiffeq dopri5 exact",
            lambda t: lambda: torchdiffeq_dopri5(oracle, x, t),
            exact,
            d,
            repeats,
        ),
        sweep(
            setting,
            "score_sde RK45 exact",
            lambda t: lambda: score_sde_style(oracle, x, t, None),
            exact,
            d,
            repeats,
        ),
    ]
    # Hutchinson: the solve error against the same probes at 1e-9; the estimator error apart
    probes = sample_probes(
        x.shape, 1, "rademacher", generator=torch.Generator().manual_seed(3), dtype=F64
    )
    probes = probes.to(device)
    ref_h = score_sde_style(oracle, x, 1e-10, probes[0].float()).log_prob
    rows.append(
        sweep(
            setting,
            "score_sde RK45 hutch-1",
            lambda t: lambda: score_sde_style(oracle, x, t, probes[0].float()),
            ref_h,
            d,
            repeats,
            exact,
        )
    )
    for k in (1, 16):
        kw = dict(divergence="hutchinson", n_probes=k)
        ref_k = ours(oracle, x, 1e-9, generator=torch.Generator().manual_seed(3), **kw).log_prob
        rows.append(
            sweep(
                setting,
                f"ours hutch-{k}",
                lambda t, kw=kw: (
                    lambda: ours(oracle, x, t, generator=torch.Generator().manual_seed(3), **kw)
                ),
                ref_k,
                d,
                repeats,
                exact,
            )
        )
    return rows


def write(rows: list[Row], out: Path, device: str) -> str:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "likelihood.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(list(Row.__dataclass_fields__))
        for r in rows:
            writer.writerow([getattr(r, k) for k in Row.__dataclass_fields__])
    lines = [
        f"Likelihood to 1e-3 bits/dim (max over the batch), {device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}.",
        "",
    ]
    for setting in dict.fromkeys(r.setting for r in rows):
        lines += [
            f"**{setting}**",
            "",
            "| method | rtol = atol | NFE | sample-evals | time (s) | solve err (bpd) "
            "| est. err (bpd) | stderr (bpd) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            if r.setting != setting:
                continue
            tol = f"{r.tol:g}" if r.tol is not None else "not reached"
            est = f"{r.est_err_bpd:.2e}" if r.est_err_bpd is not None else ""
            se = f"{r.stderr_bpd:.2e}" if r.stderr_bpd is not None else ""
            lines.append(
                f"| {r.method} | {tol} | {r.nfe} | {r.sample_evals} | {r.seconds:.3f} | "
                f"{r.err_bpd:.1e} | {est} | {se} |"
            )
        lines.append("")
    text = "\n".join(lines)
    (out / "likelihood.md").write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--out", type=Path, default=_HERE / "results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    settings = (
        [("VP", 16, 16, 0)]
        if args.quick
        else [("VP", 16, 64, 0), ("VE", 16, 64, 0), ("VP", 16, 64, 4)]
    )
    rows: list[Row] = []
    for sde_name, d, b, outliers in settings:
        reps = 1 if args.quick else args.repeats
        rows += run_setting(sde_name, d, b, args.device, reps, outliers)
    print()
    print(write(rows, args.out, args.device))


if __name__ == "__main__":
    main()
