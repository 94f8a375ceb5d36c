"""Quickstart: train a score model, sample it with a chosen solver, compute its bits/dim.

The README's ten lines, as a script that also checks the result: a residual MLP trained by
denoising score matching on two moons (VP SDE), sampled with DPM-Solver++(2M) in 20 network
evaluations, and the test bits/dim through the probability-flow ODE, compared with the best
Gaussian fit of the training data (a model that ignores the two moons' shape).

    python examples/quickstart.py            # 2,000 steps and the likelihood: about 30 s on a CPU
    python examples/quickstart.py --smoke    # 200 steps, a looser likelihood solve (CI)
"""

from __future__ import annotations

import argparse
import math

import torch

import scoresde as sd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="training steps")
    parser.add_argument("--smoke", action="store_true", help="200 steps, rtol 1e-3 (CI)")
    args = parser.parse_args()
    steps = 200 if args.smoke else args.steps
    # smoke: a looser tolerance for the likelihood's adaptive solver (about 130 instead of
    # 1,000 evaluations; the bits/dim move by about 0.01)
    tol = {"rtol": 1e-3, "atol": 1e-3} if args.smoke else {}
    torch.manual_seed(0)  # the network's initial weights

    # --8<-- [start:example]
    ds = sd.load_toy("two_moons")  # 10,000 training and 2,000 test points in 2-D
    model = sd.ScoreModel(sd.MLP(2, width=128, depth=3), sd.VPSDE(), prediction="eps")
    opt = torch.optim.AdamW(model.net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x0 = ds.train[torch.randint(len(ds.train), (256,), generator=g)]
        loss = sd.dsm_loss(model, x0, generator=g).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = sd.sample(model, "dpmpp_2m", nfe=20, shape=(1000, 2), generator=g).x
    bpd = sd.log_likelihood(model, ds.test[:500], **tol).bpd.mean()
    # --8<-- [end:example]

    # the best Gaussian fit of the training data, on the same test points
    gauss = torch.distributions.MultivariateNormal(
        ds.train.mean(0).double(), torch.cov(ds.train.T.double())
    )
    gauss_bpd = float(-gauss.log_prob(ds.test[:500].double()).mean() / (2 * math.log(2)))
    sw = sd.sliced_wasserstein(x, ds.test, generator=torch.Generator().manual_seed(0))
    sw_data = sd.sliced_wasserstein(ds.train[:1000], ds.test, generator=torch.Generator())
    print(f"{steps} training steps, final loss {loss.item():.4f}")
    print(f"samples: {tuple(x.shape)}, sliced W2 to the test set {sw:.4f} (data: {sw_data:.4f})")
    print(f"test bits/dim (PF-ODE): {float(bpd):.4f}; Gaussian fit: {gauss_bpd:.4f}")
    assert x.shape == (1000, 2) and bool(torch.isfinite(x).all())
    assert math.isfinite(float(bpd))
    if not args.smoke:  # a trained model must beat the Gaussian fit clearly
        assert float(bpd) < gauss_bpd - 0.3, (float(bpd), gauss_bpd)


if __name__ == "__main__":
    main()
