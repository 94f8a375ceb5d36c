"""Compute likelihoods: exact log-density through the probability-flow ODE, and the ELBO.

Part 1 uses an exact-score model (a Gaussian mixture under the VP SDE), whose true
log-density is known in closed form, so every estimate can be checked:

* ``sd.log_likelihood`` with the exact divergence (D vector-Jacobian products per evaluation);
* the same with Hutchinson's estimator (K random probes; cheaper for large D, unbiased);
* ``sd.elbo``, the continuous-time variational bound (tight for an exact score), and its
  discrete counterpart on the 1,000-step DDPM chain.

Part 2 evaluates a trained checkpoint on its own test split (``--run``, e.g. the run folder of
``scoresde demo``): bits/dim of discrete data (uniform dequantization) through the PF-ODE with
Hutchinson's estimator, and the ELBO, next to the per-pixel baselines.

    python examples/likelihood.py                         # part 1
    python examples/likelihood.py --run runs/demo-...     # and part 2 on that checkpoint
    python examples/likelihood.py --smoke                 # part 1, fewer points (CI)
"""

from __future__ import annotations

import argparse
import math

import torch

import scoresde as sd


def exact_model_part(n: int) -> None:
    sde = sd.VPSDE()
    gmm = sd.GaussianMixture(
        torch.tensor([0.3, 0.7]),
        torch.tensor([[-1.0, 0.5, 0.0], [1.0, -0.5, 0.5]]),  # (K, D) = (2, 3)
        torch.tensor([0.1, 0.3]),
    )
    model = gmm.score_model(sde)  # exact score, same interface as sd.ScoreModel
    g = torch.Generator().manual_seed(0)
    x = gmm.sample(n, generator=g).double()  # (n, 3)
    d = x.shape[1]

    # the truth: the mixture diffused to t_min (the PF-ODE transports p_T to p_{t_min}); with the
    # exact log p_T as prior the only error left is the ODE solver's
    exact = model.log_prob_t(x, sde.t_min)
    exact_prior = lambda z: model.log_prob_t(z, sde.T)  # noqa: E731

    ode = sd.log_likelihood(model, x, prior=exact_prior)  # exact divergence, dopri5, rtol 1e-5
    hutch = sd.log_likelihood(
        model, x, divergence="hutchinson", n_probes=8, generator=g, prior=exact_prior
    )
    plain = sd.log_likelihood(model, x)  # the N(0, I) prior, as for a trained model
    bound = sd.elbo(model, x, n_samples=64, generator=g)
    chain = sd.elbo(model, x, steps=1000, n_samples=64, generator=g)

    def bpd(log_p: torch.Tensor) -> float:
        return float(-log_p.mean() / (d * math.log(2)))

    rows = [
        ("exact log p_{t_min}(x)", bpd(exact), "-"),
        ("PF-ODE, exact divergence, exact prior", bpd(ode.log_prob), str(ode.nfe)),
        ("PF-ODE, Hutchinson (8 probes), exact prior", bpd(hutch.log_prob), str(hutch.nfe)),
        ("PF-ODE, exact divergence, N(0, I) prior", bpd(plain.log_prob), str(plain.nfe)),
        ("continuous ELBO (64 draws)", float(bound.bpd.mean()), str(bound.nfe)),
        ("discrete ELBO, N = 1000 (64 draws)", float(chain.bpd.mean()), str(chain.nfe)),
    ]
    print(f"Part 1: a 2-component mixture in D = {d}, {n} points, bits/dim (mean)")
    for name, value, nfe in rows:
        print(f"  {name:<44s} {value:8.4f}   NFE {nfe}")

    err = float((ode.log_prob - exact).abs().max())
    print(f"  largest PF-ODE error: {err:.2e} nats")
    assert err < 1e-3, err
    # Hutchinson is unbiased: its mean error is within a few standard errors
    z = float((hutch.log_prob - exact).mean() / (hutch.stderr.pow(2).mean().sqrt() / math.sqrt(n)))
    assert abs(z) < 5, z
    # the ELBO bounds the log-likelihood of the (here exact) reverse SDE, tightly: its mean is
    # the exact value within its Monte Carlo error
    gap = float((bound.elbo - exact).mean())
    se = float(bound.stderr.pow(2).mean().sqrt()) / math.sqrt(n)
    print(f"  continuous ELBO - log p: {gap:+.4f} nats (Monte Carlo standard error {se:.4f})")
    assert abs(gap) < 5 * se + 0.02, (gap, se)


def checkpoint_part(run: str, n: int | None) -> None:
    loaded = sd.load_model(run)  # EMA weights of the newest checkpoint
    ds = loaded.dataset()
    x = ds.test if n is None else ds.test[:n]
    g = torch.Generator().manual_seed(0)
    kw = {"levels": ds.levels, "data_range": ds.data_range, "generator": g}
    print(f"Part 2: {loaded.path} (step {loaded.step}), {x.shape[0]} test points of {ds.name}")
    ode = sd.log_likelihood(loaded.model, x, divergence="hutchinson", rtol=1e-3, atol=1e-3, **kw)
    print(f"  PF-ODE (Hutchinson): {float(ode.bpd.mean()):.4f} bits/dim, NFE {ode.nfe}")
    with torch.no_grad():  # sd.elbo keeps the autograd graph of a network's parameters
        bound = sd.elbo(loaded.model, x, n_samples=16, **kw)
    print(f"  ELBO (discrete decoder): {float(bound.bpd.mean()):.4f} bits/dim")
    if ds.levels is not None:
        b = sd.baselines(ds)
        print(f"  baselines: per-pixel categorical {b.categorical:.4f}, uniform {b.uniform:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a run folder or checkpoint to evaluate (part 2)")
    parser.add_argument("--n", type=int, help="test points of part 2 (default: all)")
    parser.add_argument("--smoke", action="store_true", help="part 1 on 64 points (CI)")
    args = parser.parse_args()
    exact_model_part(64 if args.smoke else 512)
    if args.run:
        checkpoint_part(args.run, args.n)


if __name__ == "__main__":
    main()
