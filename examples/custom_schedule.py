"""Add an SDE in one file and property-test it with the provided strategies.

A new diffusion is a subclass of ``sd.SDE`` with three float64 primitives (``_log_alpha``,
``_log_sigma`` and the inverse of the log-SNR, ``_t_from_log_snr``); everything else (drift,
diffusion, the reverse SDE, the probability-flow ODE, every solver, likelihoods) is derived
(``docs/extending.md``). Here: the variance-preserving schedule whose log-SNR is *linear* in t,
``lambda(t) = lambda_max - (lambda_max - lambda_min) t`` (the fixed schedule of Kingma et al.
2021, "Variational Diffusion Models", sec. 5), so ``alpha^2 = sigmoid(lambda)`` and
``sigma^2 = sigmoid(-lambda)``.

The script then

1. runs ``scoresde.testing.check_sde`` on it: the property suite every built-in SDE passes
   (``f = d log alpha / dt`` and ``g^2 = d sigma^2/dt - 2 f sigma^2`` against autograd, the
   log-SNR round trip, shape polymorphism, float32 agreement, the prior, the discrete chain...);
2. property-tests it with hypothesis and the provided strategies (``times``, ``states``,
   ``gaussian_data``) over random parameters: ``check_sde`` for every drawn schedule, the
   log-SNR is linear, the drift is ``f(t) x`` per sample for states of any shape, and the
   exact score of Gaussian data, integrated from T, reaches the right marginal at t_min;
3. shows that ``check_sde`` catches a mistake: the same schedule with a wrong inverse.

    python examples/custom_schedule.py           # 25 hypothesis examples per property
    python examples/custom_schedule.py --smoke   # 3 per property, the same on every run (CI)
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import scoresde as sd
import solvers
from scoresde.testing import SDECheckError, check_sde, gaussian_data, states, times


# --8<-- [start:sde]
class LinearLogSNRSDE(sd.SDE):
    """Variance-preserving SDE with a log-SNR linear in t (Kingma et al. 2021, sec. 5):
    ``lambda(t) = lambda_max - (lambda_max - lambda_min) t``, ``alpha^2 = sigmoid(lambda)``,
    ``sigma^2 = sigmoid(-lambda)``, on ``[t_min, T] = [0, 1]``.

    Args:
        lambda_min: log-SNR at T (the prior end; -10 leaves alpha(T)^2 = 4.5e-5).
        lambda_max: log-SNR at t_min (the data end).
    """

    variance_preserving = True

    def __init__(self, lambda_min: float = -10.0, lambda_max: float = 10.0) -> None:
        if not lambda_min < lambda_max:
            raise ValueError(f"need lambda_min < lambda_max, got {lambda_min}, {lambda_max}")
        super().__init__(t_min=0.0, T=1.0)
        self.lambda_min, self.lambda_max = float(lambda_min), float(lambda_max)

    def _log_snr(self, t: Tensor) -> Tensor:
        return self.lambda_max - (self.lambda_max - self.lambda_min) * t

    def _log_alpha(self, t: Tensor) -> Tensor:
        return 0.5 * F.logsigmoid(self._log_snr(t))  # log sqrt(sigmoid(lambda)), stable

    def _log_sigma(self, t: Tensor) -> Tensor:
        return 0.5 * F.logsigmoid(-self._log_snr(t))

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        return (self.lambda_max - lam) / (self.lambda_max - self.lambda_min)

    # Optional closed forms (the defaults are autograd of the primitives; check_sde compares):
    # f = d log alpha / dt = 1/2 sigmoid(-lambda) dlambda/dt, g^2 = -sigma^2 dlambda/dt, with
    # sigma^2 = sigmoid(-lambda) as exp(logsigmoid(-lambda)): torch.sigmoid's float64 CPU
    # kernel can differ by one ulp between a 0-d and a (B,) input, which check_sde's
    # shape-polymorphism property (bitwise equality) rejects.
    def _sigma2(self, t: Tensor) -> Tensor:
        return torch.exp(F.logsigmoid(-self._log_snr(t)))

    def _f(self, t: Tensor) -> Tensor:
        return -0.5 * (self.lambda_max - self.lambda_min) * self._sigma2(t)

    def _g2(self, t: Tensor) -> Tensor:
        return (self.lambda_max - self.lambda_min) * self._sigma2(t)

    def _params_repr(self) -> str:
        return f"lambda_min={self.lambda_min}, lambda_max={self.lambda_max}, "


# --8<-- [end:sde]


class WrongInverse(LinearLogSNRSDE):
    """The same schedule with a mistake in the inverse of the log-SNR (a sign)."""

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        return (self.lambda_max + lam) / (self.lambda_max - self.lambda_min)


# --8<-- [start:strategy]
@st.composite
def linear_logsnr_sdes(draw: st.DrawFn) -> LinearLogSNRSDE:
    """Random instances: lambda_min in [-15, -5], lambda_max in [5, 15]."""
    return LinearLogSNRSDE(draw(st.floats(-15.0, -5.0)), draw(st.floats(5.0, 15.0)))


# --8<-- [end:strategy]


def run_properties(examples: int, derandomize: bool = False) -> None:
    """Each property over ``examples`` random draws (hypothesis shrinks any failure);
    ``derandomize``: the same draws on every run (CI)."""
    # --8<-- [start:property]
    common = settings(max_examples=examples, deadline=None, database=None, derandomize=derandomize)

    @common
    @given(linear_logsnr_sdes())
    def passes_the_suite(sde: LinearLogSNRSDE) -> None:
        check_sde(sde)

    @common
    @given(st.data())
    def log_snr_is_linear(data: st.DataObject) -> None:
        sde = data.draw(linear_logsnr_sdes())
        t = data.draw(times(sde, batch=4))
        want = sde.lambda_max - (sde.lambda_max - sde.lambda_min) * t
        torch.testing.assert_close(sde.log_snr(t), want, rtol=1e-12, atol=1e-12)

    @common
    @given(st.data())
    def drift_is_f_times_x_per_sample(data: st.DataObject) -> None:
        sde = data.draw(linear_logsnr_sdes())
        x = data.draw(states())  # (B, D) or (B, C, H, W), float32 or float64
        t = data.draw(times(sde, batch=x.shape[0]))
        f = solvers.append_dims(sde.f(t).to(x.dtype), x.ndim)  # (B,) -> (B, 1, ..., 1)
        torch.testing.assert_close(sde.drift(x, t), f * x)

    @common
    @given(st.data())
    def exact_gaussian_score_samples_the_marginal(data: st.DataObject) -> None:
        # data N(mu, s^2): its exact score under this SDE, integrated by an ODE solver from the
        # exact marginal at T, must reach the marginal at t_min, N(alpha mu, alpha^2 s^2 +
        # sigma^2) (not the data itself: with lambda_max = 5, sigma(t_min) = 0.08)
        sde = data.draw(linear_logsnr_sdes())
        mu, s = data.draw(gaussian_data())
        gmm = sd.GaussianMixture(torch.ones(1), torch.tensor([[mu]]), torch.tensor([s * s]))
        g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))

        def marginal(t: float) -> tuple[float, float]:
            a, sig = float(sde.alpha(t)), float(sde.sigma(t))
            return a * mu, math.sqrt(a * a * s * s + sig * sig)

        mean_T, std_T = marginal(sde.T)
        x_T = mean_T + std_T * torch.randn(4000, 1, generator=g, dtype=torch.float64)
        x = sd.sample(gmm.score_model(sde), "heun", nfe=199, x_init=x_T).x
        mean_0, std_0 = marginal(sde.t_min)
        # tolerances: 5 standard errors of the mean and of the standard deviation, plus the
        # solver's error
        assert abs(float(x.mean()) - mean_0) < 5 * std_0 / math.sqrt(4000) + 1e-3 * (1 + abs(mu))
        assert abs(float(x.std()) / std_0 - 1) < 5 / math.sqrt(2 * 4000) + 1e-3

    # --8<-- [end:property]
    for prop in (
        passes_the_suite,
        log_snr_is_linear,
        drift_is_f_times_x_per_sample,
        exact_gaussian_score_samples_the_marginal,
    ):
        prop()
        print(f"  {prop.__name__}: {examples} examples passed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="3 examples per property (CI)")
    args = parser.parse_args()

    sde = LinearLogSNRSDE()
    checked = check_sde(sde)
    print(f"check_sde({sde!r}): {len(checked)} properties hold")

    print("hypothesis, with scoresde.testing's strategies:")
    run_properties(3 if args.smoke else 25, derandomize=args.smoke)

    try:
        check_sde(WrongInverse())
    except SDECheckError as err:
        print(f"check_sde(WrongInverse()) fails, as it should: {sorted(err.failures)}")
        assert "t_from_log_snr_roundtrip" in err.failures
    else:
        raise AssertionError("check_sde accepted a schedule with a wrong inverse")


if __name__ == "__main__":
    main()
