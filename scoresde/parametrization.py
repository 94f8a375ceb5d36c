"""Model parametrisations: eps, x0, score and v predictions, converted in one place.

A network trained by denoising score matching (Vincent 2011) on ``x_t = alpha x0 + sigma eps``
predicts one of four equivalent quantities; Tweedie's formula (Robbins 1956; Efron 2011) links
them:

    eps   : the noise,             eps_hat   = E[eps | x_t]
    x0    : the denoised data,     x0_hat    = E[x0 | x_t] = (x_t + sigma^2 score) / alpha
    score : grad log p_t(x_t),     score     = -eps_hat / sigma
    v     : velocity,              v_hat     = alpha eps_hat - sigma x0_hat
            (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion
            Models", sec. 4 and appendix D)

Every prediction ``p`` is a linear functional of the pair (x0, eps), ``p = a_p x0 + b_p eps``:

    ============  ===========  ============
    prediction    a_p          b_p
    ============  ===========  ============
    eps           0            1
    x0            1            0
    score         0            -1 / sigma
    v             -sigma       alpha
    (state x_t)   alpha        sigma
    ============  ===========  ============

so, given the state ``x`` and one prediction ``y``, the pair (x0, eps) solves a 2 x 2 linear
system and any other prediction is ``c_x x + c_y y`` (:func:`conversion_coefficients`). This
yields, e.g., ``x0 = (x - sigma eps) / alpha``, ``eps = (x - alpha x0) / sigma``, and for
``v`` the general inverse (alpha^2 + sigma^2 need not be 1: VE, EDM, sub-VP)
``x0 = (alpha x - sigma v) / (alpha^2 + sigma^2)``, ``eps = (sigma x + alpha v) /
(alpha^2 + sigma^2)``. The coefficient formulas never subtract two non-zero terms, so they are
exact to a few ulps for every (alpha, sigma) > 0.

Numerical safety. The conversions are computed in float64 and cast once to the state's dtype,
so none of them overflows or produces inf/NaN for any t in [t_min, T] of the built-in SDEs
(alpha, sigma > 0 there). What a conversion *can* do is amplify the error of the network's
prediction by ``|c_y|`` (and the rounding of ``x`` by ``|c_x|``):

    =================  ====================  ==========================================
    conversion         error gain |c_y|      safe where
    =================  ====================  ==========================================
    eps -> x0          sigma / alpha         low noise; unsafe at high noise (VP near T,
                                             VE/EDM at large sigma): divides by alpha
    x0 -> eps          alpha / sigma         high noise; unsafe as sigma -> 0 (t_min)
    eps -> score       1 / sigma             always (score's own scale is 1 / sigma)
    score -> eps       sigma                 always
    x0 -> score        alpha / sigma^2       high noise (alpha / sigma times the score's
                                             natural 1 / sigma); unsafe as sigma -> 0
    score -> x0        sigma^2 / alpha       low noise; unsafe at high noise
    v -> x0            sigma / (a^2 + s^2)   everywhere (<= 1 / sqrt(a^2 + s^2))
    v -> eps           alpha / (a^2 + s^2)   everywhere (<= 1 / sqrt(a^2 + s^2))
    eps -> v           (a^2 + s^2) / alpha   low noise; divides by alpha
    x0 -> v            (a^2 + s^2) / sigma   high noise; divides by sigma
    =================  ====================  ==========================================

Hence eps- (or score-) prediction is the accurate choice near t_min, x0- or v-prediction at
high noise, and v-prediction (or EDM preconditioning, :class:`EDMPrecond`, which keeps the
network's inputs and outputs at unit variance) is well conditioned at every noise level.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from scoresde.sde import SDE, TimeLike, _check_state
from solvers.broadcast import append_dims

__all__ = [
    "Prediction",
    "PREDICTIONS",
    "Net",
    "check_prediction",
    "conversion_coefficients",
    "convert",
    "edm_coefficients",
    "ScoreModel",
    "EDMPrecond",
]

Prediction = Literal["eps", "x0", "score", "v"]
"""What a network predicts: the noise, the clean data, the score or the velocity v."""

PREDICTIONS: tuple[Prediction, ...] = get_args(Prediction)
"""The allowed prediction names, in the order ``("eps", "x0", "score", "v")``."""

Net = Callable[[Tensor, Tensor], Tensor]
"""A raw network ``net(x, t) -> y``: x of shape (B, ...), t of shape (B,) in x's dtype; y has
x's shape. It knows nothing about SDEs."""


def check_prediction(value: object, name: str = "prediction") -> Prediction:
    """Return ``value`` as a :data:`Prediction`, or raise ``ValueError`` listing the allowed."""
    if not isinstance(value, str) or value not in PREDICTIONS:
        raise ValueError(f"{name} must be one of {list(PREDICTIONS)}, got {name}={value!r}")
    return value


def _linear_form(p: Prediction, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """(a_p, b_p) with ``p = a_p x0 + b_p eps`` (see the module docstring)."""
    zero, one = torch.zeros_like(alpha), torch.ones_like(alpha)
    if p == "eps":
        return zero, one
    if p == "x0":
        return one, zero
    if p == "score":
        return zero, -1.0 / sigma
    return -sigma, alpha  # v


def conversion_coefficients(
    source: Prediction, target: Prediction, alpha: Tensor, sigma: Tensor
) -> tuple[Tensor, Tensor]:
    """Coefficients (c_x, c_y) with ``target = c_x x + c_y y`` for a ``source`` prediction y.

    With ``y = a x0 + b eps`` and ``x = alpha x0 + sigma eps``, Cramer's rule gives
    ``x0 = (sigma y - b x) / det`` and ``eps = (a x - alpha y) / det``, ``det = a sigma -
    b alpha``; substituting into ``target = a' x0 + b' eps``:

        c_y = (a' sigma - b' alpha) / det,    c_x = (b' a - a' b) / det.

    For the four predictions each of these numerators and ``det`` has at most one non-zero
    term (or two of the same sign), so no cancellation happens.

    Args:
        source: what ``y`` is.
        target: what is wanted.
        alpha: signal scale, any shape, > 0.
        sigma: noise scale, broadcastable with ``alpha``, > 0.

    Returns:
        ``(c_x, c_y)``, broadcast shape of alpha and sigma, their dtype.
    """
    source = check_prediction(source, "source")
    target = check_prediction(target, "target")
    alpha, sigma = torch.broadcast_tensors(alpha, sigma)
    a, b = _linear_form(source, alpha, sigma)
    at, bt = _linear_form(target, alpha, sigma)
    if source == target:
        return torch.zeros_like(alpha), torch.ones_like(alpha)
    det = a * sigma - b * alpha
    return (bt * a - at * b) / det, (at * sigma - bt * alpha) / det


def convert(
    y: Tensor,
    x: Tensor,
    alpha: Tensor,
    sigma: Tensor,
    *,
    source: Prediction,
    target: Prediction,
) -> Tensor:
    """Convert a ``source`` prediction ``y`` at state ``x`` into a ``target`` prediction.

    Computes ``c_x x + c_y y`` (:func:`conversion_coefficients`) in the dtype of ``alpha``
    (pass float64 coefficients for the float64 computation used throughout scoresde); the
    result has that dtype: cast it to the state's dtype once, at the end.

    Args:
        y: the prediction, shape (B, ...).
        x: the noisy state x_t, shape (B, ...).
        alpha: alpha(t), shape () or (B, 1, ..., 1) (see ``solvers.broadcast.append_dims``).
        sigma: sigma(t), same shape as ``alpha``.
        source: what ``y`` is.
        target: what is wanted.

    Returns:
        The ``target`` prediction, shape (B, ...), dtype of ``alpha``.
    """
    c_x, c_y = conversion_coefficients(source, target, alpha, sigma)
    dtype = alpha.dtype
    if source == target:
        return y.to(dtype)
    return c_x * x.to(dtype) + c_y * y.to(dtype)


def _net_time(t64: Tensor, x: Tensor, name: str = "t") -> Tensor:
    """``t`` as the (B,) tensor in x's dtype and device that raw networks receive."""
    if t64.ndim > 1 or (t64.ndim == 1 and t64.shape[0] != x.shape[0]):
        raise ValueError(
            f"{name} must have shape () or (batch,) = ({x.shape[0]},) for a state of shape "
            f"{tuple(x.shape)}, got shape {tuple(t64.shape)}"
        )
    return t64.to(device=x.device, dtype=x.dtype).expand(x.shape[0]).contiguous()


def _check_output(y: object, x: Tensor, what: str) -> Tensor:
    if not isinstance(y, Tensor):
        raise TypeError(f"{what} must return a torch.Tensor, got {type(y).__name__}")
    if y.shape != x.shape:
        raise ValueError(
            f"{what} returned shape {tuple(y.shape)} for x of shape {tuple(x.shape)}; it must "
            f"return the shape of x"
        )
    return y


class ScoreModel:
    """A network's output, whatever it predicts, seen as eps, x0, score and v.

    ``net(x, t)`` is a raw network (x of shape (B, ...), t of shape (B,) in x's dtype; a
    scalar or 0-d ``t`` is expanded to (B,)) predicting ``prediction``. Each of :meth:`eps`,
    :meth:`x0`, :meth:`score`, :meth:`v` makes exactly one network evaluation and converts
    with :func:`convert` (Tweedie's formula: Robbins 1956, Efron 2011; v: Salimans & Ho 2022)
    using alpha(t), sigma(t) computed in float64 from the SDE; the result is cast to x's dtype.
    See the module docstring for which conversions are numerically safe where.

    Args:
        net: the raw network.
        sde: the diffusion the network was trained for.
        prediction: what ``net`` predicts: ``"eps"``, ``"x0"``, ``"score"`` or ``"v"``.

    Example::

        model = ScoreModel(net, VPSDE(), prediction="v")
        x0_hat = model.x0(x_t, t)  # one network call
    """

    def __init__(self, net: Net, sde: SDE, prediction: Prediction = "eps") -> None:
        if not callable(net):
            raise TypeError(f"net must be callable as net(x, t), got {type(net).__name__}")
        if not isinstance(sde, SDE):
            raise TypeError(f"sde must be a scoresde.SDE, got {type(sde).__name__}")
        self.net = net
        self.sde = sde
        self.prediction: Prediction = check_prediction(prediction)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prediction={self.prediction!r}, sde={self.sde!r})"

    # ------------------------------------------------------------------ hooks
    def _native(self, x: Tensor, t64: Tensor) -> Tensor:
        """One evaluation of the model's own prediction, shape of x (any float dtype)."""
        y = self.net(x, _net_time(t64, x))
        return _check_output(y, x, "net")

    def _coefficients(self, x: Tensor, t64: Tensor) -> tuple[Tensor, Tensor]:
        """alpha(t), sigma(t) in float64 on x's device, shaped () or (B, 1, ..., 1)."""
        t64 = t64.to(device=x.device, dtype=torch.float64)
        alpha = torch.exp(self.sde._log_alpha(t64))
        sigma = torch.exp(self.sde._log_sigma(t64))
        return append_dims(alpha, x.ndim), append_dims(sigma, x.ndim)

    # ------------------------------------------------------------------ public
    def predict(self, x: Tensor, t: TimeLike, target: Prediction) -> Tensor:
        """The ``target`` prediction at (x, t), from one network evaluation.

        Args:
            x: noisy state, shape (B, ...).
            t: time, a float, a 0-d tensor or a (B,) tensor in [t_min, T].
            target: ``"eps"``, ``"x0"``, ``"score"`` or ``"v"``.

        Returns:
            Tensor of x's shape and dtype.
        """
        target = check_prediction(target, "target")
        _check_state(x, "x")
        t64, _ = self.sde._time(t)
        if t64.ndim > 1 or (t64.ndim == 1 and t64.shape[0] != x.shape[0]):
            raise ValueError(
                f"t must have shape () or (batch,) = ({x.shape[0]},) for a state of shape "
                f"{tuple(x.shape)}, got shape {tuple(t64.shape)}"
            )
        y = self._native(x, t64)
        alpha, sigma = self._coefficients(x, t64)
        out = convert(y, x, alpha, sigma, source=self.prediction, target=target)
        return out.to(x.dtype)

    def eps(self, x: Tensor, t: TimeLike) -> Tensor:
        """Predicted noise E[eps | x_t], shape and dtype of x (one network evaluation)."""
        return self.predict(x, t, "eps")

    def x0(self, x: Tensor, t: TimeLike) -> Tensor:
        """Denoised data E[x0 | x_t] (Tweedie), shape and dtype of x (one network evaluation)."""
        return self.predict(x, t, "x0")

    def score(self, x: Tensor, t: TimeLike) -> Tensor:
        """Score grad_x log p_t(x) = -eps / sigma, shape and dtype of x (one evaluation)."""
        return self.predict(x, t, "score")

    def v(self, x: Tensor, t: TimeLike) -> Tensor:
        """Velocity v = alpha eps - sigma x0 (Salimans & Ho 2022), shape/dtype of x."""
        return self.predict(x, t, "v")


def edm_coefficients(s: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EDM preconditioning (Karras et al. 2022, Table 1) at noise level ``s``.

    ``c_skip = sd^2 / (s^2 + sd^2)``, ``c_out = s sd / sqrt(s^2 + sd^2)``,
    ``c_in = 1 / sqrt(s^2 + sd^2)``, ``c_noise = log(s) / 4`` with ``sd = sigma_data``.

    Args:
        s: noise level(s) > 0, any shape.
        sigma_data: standard deviation of the data, > 0.

    Returns:
        ``(c_skip, c_out, c_in, c_noise)``, each of s's shape and dtype.
    """
    sd2 = sigma_data * sigma_data
    r = torch.rsqrt(s * s + sd2)
    return sd2 * r * r, s * sigma_data * r, r, 0.25 * torch.log(s)


class EDMPrecond(nn.Module):
    """EDM preconditioning (Karras et al. 2022, sec. 5 and Table 1) for any SDE: a raw network
    becomes an x0-predicting network (a denoiser).

    The state is mapped to EDM's variable ``x_hat = x / alpha = x0 + s eps`` with noise level
    ``s = sigma / alpha = exp(-log_snr / 2)`` (for :class:`~scoresde.EDMSDE`, alpha = 1 and
    s = t), and

        D(x, t) = c_skip(s) x_hat + c_out(s) F(c_in(s) x_hat, c_noise(s))

    estimates x0, where ``F = raw`` is the raw network (it receives the unit-variance input
    ``c_in x_hat`` and ``c_noise = log(s) / 4`` as its (B,) time argument, and its ideal output
    ``(x0 - c_skip x_hat) / c_out`` has unit variance too). Coefficients are computed in float64
    and the network sees x's dtype. Use as ``ScoreModel(EDMPrecond(raw, sde), sde, "x0")``.
    Keyword arguments of a call (class labels ``y=`` of a class-conditional network) pass
    through to the raw network unchanged, and ``num_classes`` is the raw network's, so a
    conditional network keeps working under classifier-free guidance
    (:class:`~scoresde.CFGModel`).

    Args:
        net: raw network ``net(x_in, c_noise)``.
        sde: the diffusion.
        sigma_data: standard deviation of the data (0.5 in EDM for images in [-1, 1]).
    """

    def __init__(self, net: Net, sde: SDE, sigma_data: float = 0.5) -> None:
        super().__init__()
        if not callable(net):
            raise TypeError(f"net must be callable as net(x, c_noise), got {type(net).__name__}")
        if not isinstance(sde, SDE):
            raise TypeError(f"sde must be a scoresde.SDE, got {type(sde).__name__}")
        if (
            isinstance(sigma_data, bool)
            or not isinstance(sigma_data, (int, float))
            or not math.isfinite(sigma_data)
            or sigma_data <= 0
        ):
            raise ValueError(
                f"sigma_data must be a finite float > 0, got sigma_data={sigma_data!r}"
            )
        self.net = net
        self.sde = sde
        self.sigma_data = float(sigma_data)

    def extra_repr(self) -> str:
        return f"sde={self.sde!r}, sigma_data={self.sigma_data}"

    @property
    def num_classes(self) -> int | None:
        """The raw network's ``num_classes`` (``None`` when it has none: unconditional)."""
        n = getattr(self.net, "num_classes", None)
        return n if isinstance(n, int) else None

    def forward(self, x: Tensor, t: TimeLike, **kwargs: Any) -> Tensor:
        """Denoised estimate of x0.

        Args:
            x: noisy state, shape (B, ...).
            t: time, a float, 0-d or (B,) tensor in [t_min, T].
            **kwargs: passed to the raw network (e.g. ``y=labels``).

        Returns:
            D(x, t), shape and dtype of x.
        """
        _check_state(x, "x")
        t64, _ = self.sde._time(t)
        _net_time(t64, x)  # validates the shape of t
        dtype = torch.float64
        t64 = t64.to(x.device)
        inv_alpha = torch.exp(-self.sde._log_alpha(t64))
        s = torch.exp(-0.5 * self.sde._log_snr(t64))
        c_skip, c_out, c_in, c_noise = edm_coefficients(s, self.sigma_data)
        x_hat = append_dims(inv_alpha, x.ndim) * x.to(dtype)
        f_out = self.net(
            (append_dims(c_in, x.ndim) * x_hat).to(x.dtype),
            _net_time(c_noise, x, "c_noise"),
            **kwargs,
        )
        f_out = _check_output(f_out, x, "net")
        d = append_dims(c_skip, x.ndim) * x_hat + append_dims(c_out, x.ndim) * f_out.to(dtype)
        return d.to(x.dtype)
