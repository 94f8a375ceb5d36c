"""Exact-score oracle: Gaussian mixtures diffused by any linear SDE, in closed form.

For data ``p_0 = sum_k w_k N(mu_k, Sigma_k)`` and the perturbation kernel
``x_t = alpha x0 + sigma eps`` the marginal is again a mixture,

    p_t = sum_k w_k N(alpha mu_k, alpha^2 Sigma_k + sigma^2 I),

so the score, the posterior mean E[x0 | x_t] (Tweedie's formula: Robbins 1956; Efron 2011) and
the class posterior p_t(y | x) are closed-form. With ``Sigma_k = U_k diag(l_k) U_k^T``
(eigendecomposed once), ``alpha^2 Sigma_k + sigma^2 I = U_k diag(alpha^2 l_k + sigma^2) U_k^T``
is diagonal in the same basis at every t, so one evaluation costs two (B, D) x (D, K D) matrix
products. Everything is computed in float64 on x's device and results are cast to x's dtype;
states of any shape (B, ...) are flattened to D = prod(...) features.

The oracle is the ground truth for solver, likelihood and loss tests: DSM (Vincent 2011) is
minimised by its eps/x0/score, and for K = 1 the probability-flow ODE has the closed-form flow
map :meth:`GaussianMixture.flow_map`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from scoresde.parametrization import ScoreModel, _net_time
from scoresde.sde import SDE, TimeLike, _check_state
from solvers.broadcast import append_dims

__all__ = ["GaussianMixture", "GaussianMixtureOracle", "LabeledSample"]

ArrayLike = Tensor | Sequence[float] | Sequence[Sequence[float]] | float

_WEIGHT_TOL = 1e-6
_PD_REL_TOL = 1e-12  # an eigenvalue <= this times the largest one counts as non-positive


@dataclass(frozen=True)
class LabeledSample:
    """Draws from a mixture with the component that produced each.

    Attributes:
        x: samples, shape (n, D).
        component: component index of each sample, shape (n,), int64.
        label: class label of each sample, shape (n,), int64 (None when the mixture has no
            labels).
    """

    x: Tensor
    component: Tensor
    label: Tensor | None


@dataclass(frozen=True)
class _Params:
    """The mixture's parameters on one device, in float64."""

    log_w: Tensor  # (K,)
    mu: Tensor  # (K, D)
    lam: Tensor  # (K, D) eigenvalues of Sigma_k
    mu_rot: Tensor  # (K, D) U_k^T mu_k (mu itself when axis-aligned)
    rot: Tensor | None  # (D, K D): x @ rot = [U_k^T x]_k; None when every Sigma_k is diagonal
    back: Tensor | None  # (K D, D): w @ back = sum_k U_k w_k
    labels: Tensor | None  # (K,) int64

    def rotate(self, x: Tensor) -> Tensor:
        """(B, D) -> (B, K, D): U_k^T x for every component."""
        k, d = self.mu.shape
        if self.rot is None:
            return x[:, None, :].expand(x.shape[0], k, d)
        return (x @ self.rot).reshape(x.shape[0], k, d)

    def centered(self, x: Tensor, alpha: Tensor) -> Tensor:
        """(B, D) -> (B, K, D): z_k = U_k^T (x - alpha mu_k), a fresh tensor; alpha () or
        (B, 1, 1). For full covariances one matrix product of [x, -alpha] with [rot; mu_rot]."""
        k, d = self.mu.shape
        if self.rot is None:
            return x[:, None, :] - alpha * self.mu
        a = alpha.reshape(-1, 1).expand(x.shape[0], 1)
        aug = torch.cat([self.rot, self.mu_rot.reshape(1, k * d)])
        return (torch.cat([x, -a], 1) @ aug).reshape(x.shape[0], k, d)

    def unrotate(self, w: Tensor) -> Tensor:
        """(B, K, D) -> (B, D): sum_k U_k w_k."""
        if self.back is None:
            return w.sum(1)
        return w.reshape(w.shape[0], -1) @ self.back


def _softmax(v: Tensor, dim: int) -> Tensor:
    """exp(v - logsumexp(v)): torch.softmax is an order of magnitude slower in float64 on CPU."""
    return torch.exp(v - torch.logsumexp(v, dim, keepdim=True))


def _as_float64(value: object, name: str) -> Tensor:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a tensor or a sequence of floats, got a bool")
    try:
        if isinstance(value, Tensor):
            out = value.detach().to("cpu", torch.float64)
        else:  # Python floats go straight to float64, not through the default dtype
            out = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{name} must be a tensor or a sequence of floats, got {value!r}") from exc
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"{name} must be finite")
    return out


def _validated_labels(labels: object, k: int) -> Tensor | None:
    if labels is None:
        return None
    lab = torch.as_tensor(labels).detach().cpu()
    if lab.is_floating_point() or lab.is_complex() or lab.dtype == torch.bool:
        if lab.is_floating_point() and bool((lab == lab.round()).all()):
            lab = lab.long()
        else:
            raise ValueError(f"labels must be integers, got dtype {lab.dtype}")
    lab = lab.long()
    if lab.shape != (k,):
        raise ValueError(
            f"labels must have shape (K,) = ({k},), one per component, got shape {tuple(lab.shape)}"
        )
    if bool((lab < 0).any()):
        raise ValueError(f"labels must be >= 0, got {lab.tolist()}")
    return lab


class GaussianMixture:
    """A Gaussian mixture ``sum_k w_k N(mu_k, Sigma_k)`` on R^D, optionally class-labelled.

    Args:
        weights: (K,) non-negative, summing to 1 (within 1e-6; renormalised exactly).
        means: (K, D).
        covs: (K, D, D) full symmetric positive-definite matrices, (K, D) diagonals or (K,)
            isotropic variances (all > 0).
        labels: optional (K,) non-negative integer class of each component; classes are
            0 .. n_classes - 1 with ``n_classes = max(labels) + 1``.

    Raises:
        ValueError: naming the argument, for negative weights or weights not summing to 1,
            covariances that are not symmetric positive definite, inconsistent shapes, labels
            of the wrong length or type.
    """

    def __init__(
        self,
        weights: ArrayLike,
        means: ArrayLike,
        covs: ArrayLike,
        labels: Tensor | Sequence[int] | None = None,
    ) -> None:
        w = _as_float64(weights, "weights")
        mu = _as_float64(means, "means")
        cov = _as_float64(covs, "covs")
        if w.ndim != 1 or w.numel() < 1:
            raise ValueError(f"weights must have shape (K,) with K >= 1, got {tuple(w.shape)}")
        k = w.shape[0]
        if bool((w < 0).any()):
            raise ValueError(f"weights must be >= 0, got {w.tolist()}")
        if abs(float(w.sum()) - 1.0) > _WEIGHT_TOL:
            raise ValueError(
                f"weights must sum to 1 (within {_WEIGHT_TOL}), got sum {float(w.sum())!r}"
            )
        if mu.ndim != 2 or mu.shape[0] != k or mu.shape[1] < 1:
            raise ValueError(
                f"means must have shape (K, D) = ({k}, D) to match weights of shape ({k},), "
                f"got shape {tuple(mu.shape)}"
            )
        d = mu.shape[1]
        self._cov_kind: str
        if cov.shape == (k, d, d):
            asym = (cov - cov.transpose(1, 2)).abs().amax((1, 2))
            bad_sym = torch.nonzero(asym > 1e-6 * cov.abs().amax((1, 2))).flatten()
            if bad_sym.numel():
                i = int(bad_sym[0])
                raise ValueError(f"covs must be symmetric; covs[{i}] differs from its transpose")
            cov = 0.5 * (cov + cov.transpose(1, 2))
            lam, u = torch.linalg.eigh(cov)
            self._cov_kind = "full"
        elif cov.shape == (k, d):
            lam, u = cov.clone(), None
            self._cov_kind = "diagonal"
        elif cov.shape == (k,):
            lam, u = cov[:, None].expand(k, d).clone(), None
            self._cov_kind = "isotropic"
        else:
            raise ValueError(
                f"covs must have shape (K, D, D) = ({k}, {d}, {d}) (full), (K, D) = ({k}, {d}) "
                f"(diagonal) or (K,) = ({k},) (isotropic) for weights ({k},) and means "
                f"({k}, {d}), got shape {tuple(cov.shape)}"
            )
        scale = lam.abs().amax(1) if u is not None else torch.zeros(k)
        bad = torch.nonzero((lam <= _PD_REL_TOL * scale[:, None]).any(1)).flatten()
        if bad.numel():
            i = int(bad[0])
            raise ValueError(
                f"covs must be positive definite; covs[{i}] has smallest eigenvalue "
                f"{float(lam[i].min())!r}"
            )
        self._labels = _validated_labels(labels, k)
        self._weights = w / w.sum()
        self._means = mu
        self._covs = cov
        self._lam = lam
        self._u = u
        self._cache: dict[torch.device, _Params] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def gaussian(cls, mean: ArrayLike, cov: ArrayLike) -> GaussianMixture:
        """A single Gaussian N(mean, cov) as a K = 1 mixture.

        Args:
            mean: (D,).
            cov: (D, D) full, (D,) diagonal, or a float / 0-d tensor (isotropic variance).
        """
        m = _as_float64(mean, "mean")
        c = _as_float64(cov, "cov")
        if m.ndim != 1:
            raise ValueError(f"mean must have shape (D,), got shape {tuple(m.shape)}")
        if c.ndim > 2:
            raise ValueError(f"cov must have shape (D, D), (D,) or (), got {tuple(c.shape)}")
        return cls(torch.ones(1, dtype=torch.float64), m[None], c[None])

    def __repr__(self) -> str:
        lab = "" if self._labels is None else f", n_classes={self.n_classes}"
        return f"GaussianMixture(K={self.n_components}, D={self.dim}, covs={self._cov_kind}{lab})"

    # ------------------------------------------------------------------ properties
    @property
    def n_components(self) -> int:
        return int(self._weights.shape[0])

    @property
    def dim(self) -> int:
        return int(self._means.shape[1])

    @property
    def weights(self) -> Tensor:
        """(K,) float64."""
        return self._weights.clone()

    @property
    def means(self) -> Tensor:
        """(K, D) float64."""
        return self._means.clone()

    @property
    def covs(self) -> Tensor:
        """(K, D, D) float64 full covariance matrices, whatever form was given."""
        if self._u is None:
            return torch.diag_embed(self._lam)
        return self._covs.clone()

    @property
    def labels(self) -> Tensor | None:
        """(K,) int64 class labels, or None."""
        return None if self._labels is None else self._labels.clone()

    @property
    def n_classes(self) -> int:
        """``max(labels) + 1``; ValueError if the mixture has no labels."""
        return int(self._require_labels().max()) + 1

    @property
    def mean(self) -> Tensor:
        """Mean of the mixture, (D,) float64."""
        return self._weights @ self._means

    @property
    def covariance(self) -> Tensor:
        """Covariance of the mixture, (D, D) float64 (law of total covariance)."""
        m = self.mean
        second = torch.einsum("k,kij->ij", self._weights, self.covs) + torch.einsum(
            "k,ki,kj->ij", self._weights, self._means, self._means
        )
        return second - torch.outer(m, m)

    def _require_labels(self) -> Tensor:
        if self._labels is None:
            raise ValueError(
                "this GaussianMixture has no labels; pass labels=(K,) ints to use classes"
            )
        return self._labels

    def _params(self, device: torch.device) -> _Params:
        dtype = torch.float64
        key = torch.device(device)
        if key not in self._cache:
            k, d = self._means.shape
            mu = self._means
            if self._u is None:
                rot = back = None
                mu_rot = mu
            else:
                rot = self._u.permute(1, 0, 2).reshape(d, k * d)
                back = self._u.permute(0, 2, 1).reshape(k * d, d)
                mu_rot = torch.einsum("kdj,kd->kj", self._u, mu)

            def mv(v: Tensor | None) -> Tensor | None:
                return None if v is None else v.to(device=device, dtype=dtype)

            labels = None if self._labels is None else self._labels.to(device)
            self._cache[key] = _Params(
                log_w=torch.log(self._weights).to(device=device, dtype=dtype),
                mu=mu.to(device=device, dtype=dtype),
                lam=self._lam.to(device=device, dtype=dtype),
                mu_rot=mu_rot.to(device=device, dtype=dtype),
                rot=mv(rot),
                back=mv(back),
                labels=labels,
            )
        return self._cache[key]

    # ------------------------------------------------------------------ core (float64)
    def _flat(self, x: Tensor, name: str = "x") -> Tensor:
        _check_state(x, name)
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != self.dim:
            raise ValueError(
                f"{name} of shape {tuple(x.shape)} has {flat.shape[1]} features per sample; the "
                f"mixture has dimension D = {self.dim}"
            )
        return flat.to(torch.float64)

    @staticmethod
    def _terms(p: _Params, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """Per-component quantities of p_t at flat x (B, D); alpha, sigma () or (B, 1, 1).

        With ``z_k = U_k^T (x - alpha mu_k)`` and ``V_k = alpha^2 l_k + sigma^2`` (the
        eigenvalues of the component's covariance at time t), returns
        ``(log_joint (B, K) = log w_k + log N_k(x), zw (B, K, D) = z_k / V_k)``; the score of
        component k is ``-U_k zw_k``. ``zw`` is a fresh tensor that callers may modify.
        """
        z = p.centered(x, alpha)
        var = torch.addcmul(sigma * sigma, alpha * alpha, p.lam)
        zw = z / var
        quad = torch.einsum("bkd,bkd->bk", z, zw)
        log_n = -0.5 * (quad + torch.log(var).sum(-1) + x.shape[1] * math.log(2 * math.pi))
        return p.log_w + log_n, zw

    def _log_prob_flat(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        p = self._params(x.device)
        log_joint, _ = self._terms(p, x, alpha, sigma)
        return torch.logsumexp(log_joint, -1)

    def _score_flat(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """grad log p_t = -sum_k r_k (alpha^2 Sigma_k + sigma^2 I)^-1 (x - alpha mu_k)."""
        p = self._params(x.device)
        log_joint, zw = self._terms(p, x, alpha, sigma)
        r = _softmax(log_joint, -1)
        return -p.unrotate(zw * r[..., None])

    def _posterior_mean_flat(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """E[x0 | x_t] = sum_k r_k (mu_k + alpha Sigma_k (alpha^2 Sigma_k + sigma^2 I)^-1
        (x - alpha mu_k)), the mixture of the per-component Gaussian posterior means."""
        p = self._params(x.device)
        log_joint, zw = self._terms(p, x, alpha, sigma)
        r = _softmax(log_joint, -1)
        return r @ p.mu + p.unrotate(zw * r[..., None] * p.lam * alpha)

    # ------------------------------------------------------------------ data distribution
    def log_prob(self, x: Tensor) -> Tensor:
        """log p_0(x) of the mixture itself.

        Args:
            x: (B, ...) with prod(...) = D.

        Returns:
            (B,), dtype of x.
        """
        flat = self._flat(x)
        one = torch.ones((), dtype=flat.dtype, device=flat.device)
        return self._log_prob_flat(flat, one, torch.zeros_like(one)).to(x.dtype)

    def sample_with_labels(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> LabeledSample:
        """Draw n samples with their component (and class) ids.

        Components are drawn first (``torch.multinomial``), then one (n, D) standard normal
        block, both from ``generator`` (on the generator's device): the same seed gives the
        same samples.

        Args:
            n: number of samples, >= 1.
            generator: source of randomness (None: torch's global generator).
            dtype: dtype of ``x`` (default ``torch.get_default_dtype()``).
            device: device of the result (default: the generator's, else CPU).
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1, got n={n!r}")
        gen_device = generator.device if generator is not None else torch.device("cpu")
        out_device = torch.device(device) if device is not None else gen_device
        work = torch.float64
        comp = torch.multinomial(
            self._weights.to(gen_device, work), n, replacement=True, generator=generator
        )
        noise = torch.randn(n, self.dim, generator=generator, dtype=work, device=gen_device)
        p = self._params(gen_device)
        scaled = noise * p.lam[comp].sqrt()
        if self._u is None:
            x = p.mu[comp] + scaled
        else:
            u = self._u.to(gen_device, work)
            x = p.mu[comp].clone()
            for k in torch.unique(comp).tolist():
                idx = comp == k
                x[idx] += scaled[idx] @ u[k].T
        label = None if p.labels is None else p.labels[comp].to(out_device)
        return LabeledSample(
            x.to(device=out_device, dtype=dtype or torch.get_default_dtype()),
            comp.to(out_device),
            label,
        )

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Draw n samples, shape (n, D) (see :meth:`sample_with_labels`)."""
        return self.sample_with_labels(n, generator, dtype=dtype, device=device).x

    # ------------------------------------------------------------------ classes
    def condition(self, y: int | Tensor) -> GaussianMixture:
        """The class-conditional mixture p(x | y): class y's components, weights renormalised.

        Args:
            y: a class in [0, n_classes) with positive total weight (an int or a 0-d tensor).
        """
        labels = self._require_labels()
        if isinstance(y, Tensor) and y.numel() == 1 and not y.is_floating_point():
            y = int(y)
        if isinstance(y, bool) or not isinstance(y, int) or not 0 <= y < self.n_classes:
            raise ValueError(f"y must be an int class in [0, {self.n_classes}), got y={y!r}")
        keep = labels == y
        total = float(self._weights[keep].sum())
        if total <= 0:
            raise ValueError(f"class y={y} has no component with positive weight")
        return GaussianMixture(
            self._weights[keep] / total, self._means[keep], self._covs[keep], labels[keep]
        )

    @property
    def class_weights(self) -> Tensor:
        """p(y) = total weight of each class's components, (n_classes,) float64."""
        labels = self._require_labels()
        return torch.zeros(self.n_classes, dtype=torch.float64).index_add_(0, labels, self._weights)

    # ------------------------------------------------------------------ diffused
    def score_model(self, sde: SDE) -> GaussianMixtureOracle:
        """The exact score model of this mixture diffused by ``sde`` (see
        :class:`GaussianMixtureOracle`)."""
        return GaussianMixtureOracle(self, sde)

    def flow_map(self, sde: SDE, x_s: Tensor, s: TimeLike, t: TimeLike) -> Tensor:
        """Closed-form flow map of the probability-flow ODE for a single Gaussian (K = 1).

        With ``V(t) = alpha(t)^2 l + sigma(t)^2`` per eigen-direction of ``Sigma = U diag(l)
        U^T``, the PF-ODE ``dx/dt = f x - g^2 score / 2`` is solved by

            x_t = alpha_t mu + U diag(sqrt(V(t) / V(s))) U^T (x_s - alpha_s mu)

        (isotropic: ``x_t = alpha_t mu + sqrt(v_t / v_s) (x_s - alpha_s mu)``), since
        ``dV/dt = 2 f V + g^2``. The exact reference for solver convergence tests.

        Args:
            sde: the diffusion.
            x_s: state at time s, shape (B, ...) with prod(...) = D.
            s: start time, float, 0-d or (B,) in [t_min, T].
            t: end time, float, 0-d or (B,) in [t_min, T] (before or after s).

        Returns:
            x_t, shape and dtype of x_s.
        """
        if self.n_components != 1:
            raise ValueError(
                f"flow_map is closed-form only for a single Gaussian (K = 1); this mixture has "
                f"K = {self.n_components}"
            )
        flat = self._flat(x_s, "x_s")
        p = self._params(flat.device)
        s64, _ = sde._time(s, "s")
        t64, _ = sde._time(t, "t")
        _net_time(s64, flat, "s")
        _net_time(t64, flat, "t")

        def coef(tt: Tensor) -> tuple[Tensor, Tensor]:
            tt = tt.to(flat.device)
            la, ls = sde._log_alpha(tt), sde._log_sigma(tt)
            log_var = torch.logaddexp(
                2.0 * la[..., None] + torch.log(p.lam[0]), 2.0 * ls[..., None]
            )
            return append_dims(torch.exp(la), 2).to(flat.dtype), log_var.to(flat.dtype)

        alpha_s, log_v_s = coef(s64)
        alpha_t, log_v_t = coef(t64)
        y = p.rotate(flat - alpha_s * p.mu[0])[:, 0]
        x_t = alpha_t * p.mu[0] + p.unrotate((torch.exp(0.5 * (log_v_t - log_v_s)) * y)[:, None])
        return x_t.reshape(x_s.shape).to(x_s.dtype)


class GaussianMixtureOracle(ScoreModel):
    """The exact score model of a :class:`GaussianMixture` diffused by an SDE.

    A :class:`~scoresde.ScoreModel` whose "network" is the closed-form score (``prediction =
    "score"``): :meth:`eps`, :meth:`x0` and :meth:`v` come from it through the same conversion
    functions every ScoreModel uses, exactly at every t for every SDE. In addition:
    :meth:`log_prob_t` (exact log p_t), :meth:`posterior_mean` (E[x0 | x_t] computed directly,
    not via the score), :meth:`class_log_prob` / :meth:`class_score` (p_t(y | x)),
    :meth:`condition` and :meth:`flow_map`. Times t may be per sample, shape (B,).

    Args:
        gmm: the data distribution.
        sde: the diffusion.
    """

    def __init__(self, gmm: GaussianMixture, sde: SDE) -> None:
        if not isinstance(gmm, GaussianMixture):
            raise TypeError(f"gmm must be a GaussianMixture, got {type(gmm).__name__}")
        super().__init__(self._score_net, sde, prediction="score")
        self.gmm = gmm

    def __repr__(self) -> str:
        return f"GaussianMixtureOracle({self.gmm!r}, sde={self.sde!r})"

    def _coefs(self, flat: Tensor, t64: Tensor) -> tuple[Tensor, Tensor]:
        """alpha(t), sigma(t) in flat's dtype, shaped () or (B, 1, 1) for (B, K, D) terms."""
        _net_time(t64, flat)
        t64 = t64.to(flat.device)
        alpha = torch.exp(self.sde._log_alpha(t64)).to(flat.dtype)
        sigma = torch.exp(self.sde._log_sigma(t64)).to(flat.dtype)
        return append_dims(alpha, 3), append_dims(sigma, 3)

    def _prepare(self, x: Tensor, t: TimeLike) -> tuple[Tensor, Tensor, Tensor]:
        flat = self.gmm._flat(x)
        t64, _ = self.sde._time(t)
        alpha, sigma = self._coefs(flat, t64)
        return flat, alpha, sigma

    def _native(self, x: Tensor, t64: Tensor) -> Tensor:
        flat = self.gmm._flat(x)
        alpha, sigma = self._coefs(flat, t64)
        return self.gmm._score_flat(flat, alpha, sigma).reshape(x.shape)

    def _score_net(self, x: Tensor, t: Tensor) -> Tensor:
        """The exact score as a raw network ``net(x, t)`` (t: (B,) tensor)."""
        t64, _ = self.sde._time(t)
        return self._native(x, t64).to(x.dtype)

    def log_prob_t(self, x: Tensor, t: TimeLike) -> Tensor:
        """Exact log p_t(x), the log-density of sum_k w_k N(alpha mu_k, alpha^2 Sigma_k +
        sigma^2 I).

        Args:
            x: (B, ...) with prod(...) = D.
            t: float, 0-d or (B,) in [t_min, T].

        Returns:
            (B,), dtype of x.
        """
        flat, alpha, sigma = self._prepare(x, t)
        return self.gmm._log_prob_flat(flat, alpha, sigma).to(x.dtype)

    def posterior_mean(self, x: Tensor, t: TimeLike) -> Tensor:
        """E[x0 | x_t = x] in closed form: the per-component Gaussian posterior means
        ``mu_k + alpha Sigma_k (alpha^2 Sigma_k + sigma^2 I)^-1 (x - alpha mu_k)`` weighted by
        the responsibilities p_t(k | x). Computed directly, not from the score.

        Returns:
            Shape and dtype of x.
        """
        flat, alpha, sigma = self._prepare(x, t)
        return self.gmm._posterior_mean_flat(flat, alpha, sigma).reshape(x.shape).to(x.dtype)

    def class_log_prob(self, x: Tensor, t: TimeLike) -> Tensor:
        """log p_t(y | x) for every class y (Bayes: p(y) p_t(x | y) / p_t(x)).

        Returns:
            (B, n_classes), dtype of x; classes without components get -inf.
        """
        labels = self.gmm._require_labels()
        n_classes = self.gmm.n_classes
        flat, alpha, sigma = self._prepare(x, t)
        p = self.gmm._params(flat.device)
        log_joint, _ = self.gmm._terms(p, flat, alpha, sigma)
        member = torch.arange(n_classes, device=flat.device)[:, None] == labels.to(flat.device)
        mask = torch.zeros(member.shape, dtype=flat.dtype, device=flat.device)
        mask = mask.masked_fill(~member, -math.inf)
        per_class = torch.logsumexp(log_joint[:, None, :] + mask, -1)
        return (per_class - torch.logsumexp(log_joint, -1, keepdim=True)).to(x.dtype)

    def class_score(self, x: Tensor, t: TimeLike, y: int | Tensor) -> Tensor:
        """grad_x log p_t(y | x) = score of p_t(x | y) - score of p_t(x), in closed form (the
        classifier guidance direction).

        Args:
            x: (B, ...).
            t: float, 0-d or (B,).
            y: class, an int or a (B,) integer tensor (one class per sample).

        Returns:
            Shape and dtype of x.
        """
        labels = self.gmm._require_labels()
        flat, alpha, sigma = self._prepare(x, t)
        yy = torch.as_tensor(y, device=flat.device)
        if yy.is_floating_point() or yy.ndim > 1 or (yy.ndim == 1 and yy.shape[0] != x.shape[0]):
            raise ValueError(
                f"y must be an int or a (batch,) = ({x.shape[0]},) integer tensor, got {y!r}"
            )
        if yy.device.type == "cpu" and bool(((yy < 0) | (yy >= self.gmm.n_classes)).any()):
            raise ValueError(f"y must be in [0, {self.gmm.n_classes}), got {yy.tolist()}")
        p = self.gmm._params(flat.device)
        log_joint, zw = self.gmm._terms(p, flat, alpha, sigma)
        member = labels.to(flat.device)[None, :] == yy.reshape(-1, 1)
        r_y = _softmax(log_joint.masked_fill(~member, -math.inf), -1)
        r = _softmax(log_joint, -1)
        grad = -p.unrotate(zw * (r_y - r)[..., None])
        return grad.reshape(x.shape).to(x.dtype)

    def condition(self, y: int | Tensor) -> GaussianMixtureOracle:
        """The exact score model of p(x | y) under the same SDE (``y``: an int or a 0-d
        tensor, as :meth:`GaussianMixture.condition`)."""
        return GaussianMixtureOracle(self.gmm.condition(y), self.sde)

    def flow_map(self, x_s: Tensor, s: TimeLike, t: TimeLike) -> Tensor:
        """Closed-form PF-ODE flow map from time s to time t (K = 1 only); see
        :meth:`GaussianMixture.flow_map`."""
        return self.gmm.flow_map(self.sde, x_s, s, t)
