"""Conditional generation: classifier-free guidance, classifier guidance and inpainting.

Every guided model here *is* a :class:`~scoresde.ScoreModel` (``sde``, ``eps``, ``x0``,
``score``, ``v``): the conditioning (labels, guidance scale, classifier) is bound when the
model is built, and :func:`scoresde.sample` then runs it with any registered solver. Nothing
is passed to the sampler as an argument bag.

Classifier-free guidance (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", eq. 6).
One network trained with its labels randomly replaced by a null label (:func:`drop_labels`)
gives both the conditional and the unconditional prediction; sampling uses

    eps_w(x, t, y) = (1 + w) eps(x, t, y) - w eps(x, t, null).

Every prediction is an affine function ``c_x x + c_y p`` of any other (Tweedie; see
:mod:`scoresde.parametrization`), and ``(1 + w) - w = 1``, so combining in the network's own
prediction space (eps, x0, score or v) gives *exactly* the guided eps, x0, score and v: the
combination is done once, on the raw outputs, and converted with the usual functions. In
score form, ``score_w = score(x | y) + w (score(x | y) - score(x))`` =
``score(x) + (1 + w) grad_x log p_t(y | x)``: CFG with scale w is classifier guidance with
gamma = 1 + w and the implicit classifier p_t(y | x) of the network.

Classifier guidance (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis",
sec. 4; the controllable generation of Song et al. 2021, sec. 5, with a scale):

    score_gamma(x, t, y) = score(x, t) + gamma grad_x log p_t(y | x),

with a noise-conditional classifier p_t(y | x_t) (:class:`NoisyClassifier`, trained by
:func:`classifier_loss` on perturbed data). With the exact classifier and gamma = 1 this is
exactly the conditional score grad log p_t(x | y) (Bayes).

Inpainting / imputation (Song et al. 2021, appendix I.2, the "replacement" method; RePaint,
Lugmayr et al. 2022, Algorithm 1, resampling with jump length 1). Entries where ``mask`` is
true are known. After every solver step ``t0 -> t1`` the known entries of the state are
replaced by a fresh draw of their forward marginal, ``alpha(t1) x_known + sigma(t1) z``; with
``resample = r > 1`` the step is repeated r times, each repetition after a jump back to t0 with
the forward transition ``x_t0 = (alpha_0 / alpha_1) x_t1 + sqrt(sigma_0^2 - (alpha_0 /
alpha_1)^2 sigma_1^2) z``. Replacement is *not* exact: the unknown entries follow the score of
the joint, not of the conditional, so their law is biased (docs/guidance.md measures it on a
Gaussian); resampling lets the two parts harmonise and reduces the bias.

NFE accounting (what ``SampleResult.nfe`` counts is always the number of network *calls*):

* :class:`CFGModel`: one evaluation is ONE network call on a batch of 2B (conditional and
  null-label halves concatenated), so ``nfe`` is the number of calls, each costing about two
  B-sized forward passes; ``model.batch_multiplier`` is 2 (1 when w == 0, where the
  unconditional half is skipped).
* :class:`ClassifierGuidedModel`: one evaluation is one call of the score model plus one
  forward and one backward pass of the classifier (not counted in ``nfe``).
* :func:`inpaint`: ``resample`` multiplies the evaluations of every step; a budget of ``nfe``
  buys the steps the base method takes for ``nfe // resample``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

import solvers
from scoresde.losses import (
    TimeSampler,
    get_t_sampler,
    get_weighting,
    perturb,
)
from scoresde.models.embeddings import check_time
from scoresde.models.mlp import MLP
from scoresde.oracle import GaussianMixtureOracle
from scoresde.parametrization import (
    Prediction,
    ScoreModel,
    _check_output,
    _net_time,
    check_prediction,
    conversion_coefficients,
)
from scoresde.sampling import SampleResult, SamplerModel, resolve_solver, sample
from scoresde.sde import SDE, TimeLike, _check_state
from solvers.broadcast import append_dims

__all__ = [
    "ConditionalNet",
    "Classifier",
    "drop_labels",
    "CFGModel",
    "ClassifierGuidedModel",
    "NoisyClassifier",
    "ClassifierLossOutput",
    "classifier_loss",
    "ConditionalOracleNet",
    "InpaintSolver",
    "inpaint_solver",
    "inpaint",
]

ConditionalNet = Callable[..., Tensor]
"""A class-conditional raw network ``net(x, t, y=labels) -> prediction``: x of shape (B, ...),
t of shape (B,) in x's dtype, y a (B,) int64 tensor of labels in ``[0, num_classes]`` where
``num_classes`` is the null (unconditional) label (:class:`scoresde.MLP`, :class:`scoresde.UNet`).
"""

Classifier = Callable[[Tensor, Tensor], Tensor]
"""A noise-conditional classifier ``classifier(x, t) -> logits`` of shape (B, n_classes): x of
shape (B, ...), t of shape (B,) in x's dtype (the SDE's time, as for raw networks). Log-softmax
is applied to the logits, so log-probabilities are valid logits too."""


# --------------------------------------------------------------------------- validation


def _check_scale(value: object, name: str) -> float | Tensor:
    """A finite float, or a 0-d / (B,) floating tensor, for a guidance scale."""
    if isinstance(value, Tensor):
        if not value.is_floating_point() or value.ndim > 1:
            raise ValueError(
                f"{name} must be a float or a 0-d / (batch,) floating tensor, got a tensor of "
                f"dtype {value.dtype} and shape {tuple(value.shape)}"
            )
        if value.device.type == "cpu" and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name} must be finite, got {value}")
        return value.detach()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite float, got {name}={value!r}")
    return float(value)


def _check_labels(y: object, name: str = "y") -> int | Tensor:
    """An int >= 0, or a 0-d / (B,) integer tensor of labels >= 0."""
    if isinstance(y, Tensor):
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or y.ndim > 1:
            raise ValueError(
                f"{name} must be an int or a (batch,) integer tensor of class labels, got a "
                f"tensor of dtype {y.dtype} and shape {tuple(y.shape)}"
            )
        if y.device.type == "cpu" and y.numel() and int(y.min()) < 0:
            raise ValueError(f"{name} must hold labels >= 0, got {y.tolist()}")
        return y.detach().long()
    if isinstance(y, bool) or not isinstance(y, int) or y < 0:
        raise ValueError(f"{name} must be an int label >= 0 or a (batch,) tensor, got {y!r}")
    return y


def _batch_labels(y: int | Tensor, x: Tensor, name: str = "y") -> Tensor:
    """``y`` as the (B,) int64 tensor on x's device for a state x of batch B."""
    b = x.shape[0]
    if isinstance(y, int):
        return torch.full((b,), y, dtype=torch.long, device=x.device)
    if y.ndim == 0 or y.shape[0] == 1:
        return y.reshape(1).to(x.device).expand(b)
    if y.shape[0] != b:
        raise ValueError(
            f"{name} has {y.shape[0]} labels for a batch of {b}; give one label per sample "
            f"(shape ({b},)) or a single int. Per-sample labels are bound to the whole batch: "
            f"a solver that evaluates only some of its rows (e.g. a per-sample adaptive SDE "
            f"solver) needs a single int label"
        )
    return y.to(x.device)


def _batch_scale(s: float | Tensor, x: Tensor, name: str) -> float | Tensor:
    """A float, or the scale as a (B, 1, ..., 1) float64 tensor on x's device."""
    if isinstance(s, float):
        return s
    s = s.to(device=x.device, dtype=torch.float64)
    if s.ndim == 1 and s.shape[0] not in (1, x.shape[0]):
        raise ValueError(
            f"{name} has {s.shape[0]} entries for a batch of {x.shape[0]}; give one per sample "
            f"or a float (a solver that evaluates only some rows needs a float)"
        )
    return append_dims(s.reshape(-1).expand(x.shape[0]), x.ndim)


# --------------------------------------------------------------------------- training side


def drop_labels(
    y: Tensor, p: float, num_classes: int, generator: torch.Generator | None = None
) -> Tensor:
    """Replace each label by the null label ``num_classes`` with probability ``p``.

    The label dropout of classifier-free guidance training (Ho & Salimans 2022, Algorithm 1):
    one network learns the conditional (kept labels) and the unconditional (null label) model.
    Use it on each training batch before binding the labels to the network::

        y_in = sd.drop_labels(y, 0.1, net.num_classes, generator=g)
        model = sd.ScoreModel(functools.partial(net, y=y_in), sde, prediction="eps")
        sd.dsm_loss(model, x0, generator=g).loss.backward()

    Args:
        y: (B,) integer labels in ``[0, num_classes)`` (already-null labels stay null).
        p: drop probability in [0, 1].
        num_classes: number of real classes; ``num_classes`` itself is the null label.
        generator: randomness (None: torch's global generator); the uniforms are drawn on the
            generator's device and moved to y's.

    Returns:
        (B,) int64 labels on y's device, a new tensor (``y`` is not modified).
    """
    if not isinstance(y, Tensor) or y.is_floating_point() or y.dtype == torch.bool or y.ndim != 1:
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"y must be a (batch,) integer tensor of labels, got {shape}")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got p={p!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got num_classes={num_classes!r}")
    if y.device.type == "cpu" and y.numel() and (int(y.min()) < 0 or int(y.max()) > num_classes):
        raise ValueError(
            f"y must lie in [0, num_classes] = [0, {num_classes}], got values in "
            f"[{int(y.min())}, {int(y.max())}]"
        )
    gen_device = generator.device if generator is not None else y.device
    u = torch.rand(y.shape, generator=generator, dtype=torch.float64, device=gen_device)
    drop = u.to(y.device) < p
    return torch.where(drop, torch.full_like(y, num_classes), y).long()


# --------------------------------------------------------------------------- CFG


class CFGModel(ScoreModel):
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6) as a :class:`~scoresde.ScoreModel`.

    The guided prediction is ``(1 + w) p(x, t, y) - w p(x, t, null)`` for the network's own
    prediction p; since every conversion is affine with a shared ``x`` term, it equals the
    guided eps ``(1 + w) eps(x, t, y) - w eps(x, t, null)`` and likewise for x0, score and v,
    exactly. Conditional and unconditional passes run as ONE network call on the
    concatenated batch ``[x; x]`` with labels ``[y; null]`` (``batch_multiplier = 2``): one
    evaluation counted by :func:`scoresde.sample` is one call on a 2B batch. With ``w == 0``
    (a Python number) only the conditional pass runs.

    Args:
        net: a class-conditional network ``net(x, t, y=labels)``
            (:data:`ConditionalNet`), e.g. :class:`scoresde.MLP` with ``num_classes``.
        sde: the diffusion it was trained for.
        y: the class to generate: an int (every sample) or a (B,) integer tensor.
        w: guidance scale (0: plain conditional; w > 0 sharpens towards the class; -1 is the
            unconditional model): a float, or a (B,) tensor (one scale per sample).
        prediction: what ``net`` predicts (``"eps"``, ``"x0"``, ``"score"``, ``"v"``).
        null_label: the unconditional label (default ``net.num_classes``).

    Example::

        model = sd.CFGModel(net, sde, y=torch.full((64,), 3), w=2.0, prediction="eps")
        res = sd.sample(model, "dpmpp_2m", nfe=20, shape=(64, 2), generator=g)
        res.nfe  # network calls, each on a batch of 128
    """

    def __init__(
        self,
        net: ConditionalNet,
        sde: SDE,
        *,
        y: int | Tensor,
        w: float | Tensor,
        prediction: Prediction = "eps",
        null_label: int | None = None,
    ) -> None:
        super().__init__(net, sde, prediction)
        if null_label is None:
            null_label = getattr(net, "num_classes", None)
            if null_label is None:
                raise ValueError(
                    "null_label is required: net has no num_classes attribute to take the null "
                    "label from"
                )
        if isinstance(null_label, bool) or not isinstance(null_label, int) or null_label < 0:
            raise ValueError(f"null_label must be an int >= 0, got null_label={null_label!r}")
        self.cond_net: ConditionalNet = net
        self.y = _check_labels(y)
        self.w = _check_scale(w, "w")
        self.null_label = null_label

    def __repr__(self) -> str:
        w = self.w if isinstance(self.w, float) else f"tensor{tuple(self.w.shape)}"
        return (
            f"CFGModel(w={w}, null_label={self.null_label}, prediction={self.prediction!r}, "
            f"sde={self.sde!r})"
        )

    @property
    def batch_multiplier(self) -> int:
        """Batch size of one network call relative to the state's batch: 2 (conditional and
        unconditional halves), or 1 when ``w == 0`` (conditional only)."""
        return 1 if isinstance(self.w, float) and self.w == 0.0 else 2

    def _native(self, x: Tensor, t64: Tensor) -> Tensor:
        t = _net_time(t64, x)
        y = _batch_labels(self.y, x)
        if self.batch_multiplier == 1:
            return _check_output(self.cond_net(x, t, y=y), x, "net")
        null = torch.full_like(y, self.null_label)
        out = self.cond_net(torch.cat([x, x]), torch.cat([t, t]), y=torch.cat([y, null]))
        if not isinstance(out, Tensor) or out.shape != (2 * x.shape[0], *x.shape[1:]):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"net returned {got} for the concatenated batch of shape "
                f"{(2 * x.shape[0], *x.shape[1:])}; it must return the shape of its input"
            )
        cond, uncond = out.chunk(2)
        w = _batch_scale(self.w, x, "w")
        if isinstance(w, float):
            return (1.0 + w) * cond - w * uncond
        guided = (1.0 + w) * cond.to(torch.float64) - w * uncond.to(torch.float64)
        return guided.to(out.dtype)


# --------------------------------------------------------------------------- classifier guidance


def _class_log_probs(classifier: Classifier, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
    """(B, C) log p_t(. | x) = log_softmax(classifier(x, t)), checked against the labels y."""
    logits = classifier(x, t)
    if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != x.shape[0]:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(
            f"classifier must return logits of shape (batch, n_classes) = ({x.shape[0]}, C), "
            f"got {got}"
        )
    if logits.device.type == "cpu" and int(y.max()) >= logits.shape[1]:
        raise ValueError(
            f"y has label {int(y.max())} but the classifier has {logits.shape[1]} classes"
        )
    return torch.log_softmax(logits, -1)


def _pick(log_probs: Tensor, y: Tensor) -> Tensor:
    """(B,) entries log_probs[i, y_i]."""
    return log_probs.gather(1, y[:, None]).squeeze(1)


class ClassifierGuidedModel(ScoreModel):
    """Classifier guidance (Dhariwal & Nichol 2021, Algorithm 1 with scale; Song et al. 2021,
    sec. 5) as a :class:`~scoresde.ScoreModel`:

        score_gamma(x, t) = score(x, t) + gamma grad_x log p_t(y | x).

    The gradient is converted to the base model's own prediction space with the conversion
    coefficient ``c_y`` from ``"score"`` (eps: ``-sigma``, x0: ``sigma^2 / alpha``, ...), so
    ``eps``/``x0``/``score``/``v`` are the guided ones, each from one evaluation of the base
    model. The gradient is taken with autograd inside the call, under
    ``torch.inference_mode(False)`` and ``torch.enable_grad()`` on detached clones of x and t:
    it works when sampling runs under ``torch.no_grad()`` (as :func:`scoresde.sample` does) and
    under ``torch.inference_mode()``. The guided output is not differentiable through the
    classifier term (no second-order graph is built). Put a classifier with batch norm or
    dropout in ``eval()`` mode: the samples of a batch must be independent.

    Args:
        model: the (unconditional) score model: a :class:`~scoresde.ScoreModel`, an oracle,
            or another guided model.
        classifier: ``classifier(x, t) -> logits`` (B, C) (:data:`Classifier`), e.g. a
            :class:`NoisyClassifier` or an oracle's ``class_log_prob``.
        y: the target class: an int or a (B,) integer tensor.
        gamma: guidance scale (1: the exact conditional score for an exact classifier): a
            float, or a (B,) tensor.
    """

    def __init__(
        self,
        model: ScoreModel,
        classifier: Classifier,
        *,
        y: int | Tensor,
        gamma: float | Tensor = 1.0,
    ) -> None:
        if not isinstance(model, ScoreModel):
            raise TypeError(f"model must be a scoresde.ScoreModel, got {type(model).__name__}")
        if not callable(classifier):
            raise TypeError(
                f"classifier must be callable as classifier(x, t) -> logits, got "
                f"{type(classifier).__name__}"
            )
        super().__init__(self._guided_net, model.sde, model.prediction)
        self.model = model
        self.classifier = classifier
        self.y = _check_labels(y)
        self.gamma = _check_scale(gamma, "gamma")

    def __repr__(self) -> str:
        g = self.gamma if isinstance(self.gamma, float) else f"tensor{tuple(self.gamma.shape)}"
        return f"ClassifierGuidedModel(gamma={g}, model={self.model!r})"

    def class_score(self, x: Tensor, t: TimeLike) -> Tensor:
        """grad_x log p_t(y | x) of the classifier, shape and dtype of x (one forward and one
        backward pass of the classifier)."""
        _check_state(x, "x")
        t64, _ = self.sde._time(t)
        return self._class_grad(x, t64)

    def _class_grad(self, x: Tensor, t64: Tensor) -> Tensor:
        # a fresh autograd graph even under no_grad / inference_mode: clones of inference
        # tensors made outside inference mode are normal tensors that autograd may record
        with torch.inference_mode(False), torch.enable_grad():
            xg = x.detach().clone().requires_grad_(True)
            t = _net_time(t64, x).detach().clone()
            y = _batch_labels(self.y, x).clone()
            logp = _pick(_class_log_probs(self.classifier, xg, t, y), y)
            (grad,) = torch.autograd.grad(logp.sum(), xg)
        return grad.detach()

    def _native(self, x: Tensor, t64: Tensor) -> Tensor:
        base = self.model.predict(x, t64, self.model.prediction)
        if isinstance(self.gamma, float) and self.gamma == 0.0:
            return base
        grad = self._class_grad(x, t64)
        alpha, sigma = self._coefficients(x, t64)
        _, c = conversion_coefficients("score", self.prediction, alpha, sigma)
        gamma = _batch_scale(self.gamma, x, "gamma")
        guided = base.to(torch.float64) + (gamma * c) * grad.to(torch.float64)
        return guided.to(x.dtype)

    def _guided_net(self, x: Tensor, t: Tensor) -> Tensor:
        """The guided model as a raw network ``net(x, t)`` in the base model's prediction."""
        t64, _ = self.sde._time(t)
        return self._native(x, t64)


class NoisyClassifier(nn.Module):
    """A small noise-conditional classifier ``p_t(y | x_t)``: a residual MLP on the flattened
    input with a time embedding in every block (as :class:`scoresde.MLP`) and a linear head to
    the class logits. For vectors and small images (it flattens); train it with
    :func:`classifier_loss` and use it in :class:`ClassifierGuidedModel`.

    Args:
        dim: number of features per sample (``prod`` of the non-batch shape).
        num_classes: number of classes.
        width: hidden width.
        depth: number of residual blocks.
        emb_dim: size of the time embedding.
        time_embedding: ``"sinusoidal"`` or ``"fourier"``.
        time_scale: the embedding's input scale (None: its default, for t in [0, 1]).
        dropout: dropout rate inside the blocks.
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        *,
        width: int = 128,
        depth: int = 3,
        emb_dim: int = 64,
        time_embedding: str = "sinusoidal",
        time_scale: float | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got num_classes={num_classes!r}")
        self.dim = dim
        self.num_classes = num_classes
        # the trunk of scoresde.MLP (unconditional) with a head to the class logits
        self.trunk = MLP(
            dim,
            width=width,
            depth=depth,
            emb_dim=emb_dim,
            time_embedding=time_embedding,
            time_scale=time_scale,
            dropout=dropout,
            out_dim=num_classes,
        )

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Class logits.

        Args:
            x: (B, *shape) with prod(shape) = dim.
            t: (B,) times (a 0-d tensor or float is broadcast).

        Returns:
            (B, num_classes) logits, x's dtype.
        """
        return self.trunk(x, t)


@dataclass(frozen=True)
class ClassifierLossOutput:
    """Result of :func:`classifier_loss`.

    Attributes:
        loss: mean cross-entropy, a 0-d tensor to call ``backward()`` on.
        per_sample: (B,) cross-entropy of each sample.
        t: (B,) float64 times drawn.
        accuracy: 0-d fraction of samples whose arg-max class is the label (no gradient).
    """

    loss: Tensor
    per_sample: Tensor
    t: Tensor
    accuracy: Tensor


def classifier_loss(
    classifier: Classifier,
    sde: SDE,
    x0: Tensor,
    y: Tensor,
    *,
    generator: torch.Generator | None = None,
    t_sampler: str | TimeSampler = "uniform",
) -> ClassifierLossOutput:
    """Cross-entropy of a noise-conditional classifier on perturbed data (Dhariwal & Nichol
    2021, sec. 4; Song et al. 2021, appendix I).

    Draws t (default uniform on [t_min, T]) and ``x_t = alpha(t) x0 + sigma(t) eps``
    (:func:`scoresde.perturb`), both from ``generator``, and returns ``-log p_t(y | x_t)``
    with ``classifier(x_t, t)`` called with t as a (B,) tensor in x0's dtype, as
    :class:`ClassifierGuidedModel` calls it. Its minimiser is the exact p_t(y | x).

    Args:
        classifier: ``classifier(x, t) -> logits`` (B, C).
        sde: the diffusion of the score model it will guide.
        x0: clean data, shape (B, ...).
        y: (B,) integer labels in [0, C).
        generator: the only source of randomness (None: torch's global generator).
        t_sampler: a name in :data:`scoresde.T_SAMPLERS` or a :class:`scoresde.TimeSampler`
            (the importance sampler uses the eps weighting).

    Returns:
        :class:`ClassifierLossOutput` (``loss``, ``per_sample``, ``t``, ``accuracy``).
    """
    if not callable(classifier):
        raise TypeError(f"classifier must be callable, got {type(classifier).__name__}")
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scoresde.SDE, got {type(sde).__name__}")
    _check_state(x0, "x0")
    labels = _check_labels(y)
    if not isinstance(labels, Tensor) or labels.shape != (x0.shape[0],):
        raise ValueError(f"y must be a ({x0.shape[0]},) integer tensor, one label per sample")
    labels = labels.to(x0.device)
    draw = get_t_sampler(t_sampler).sample(
        x0.shape[0], sde, get_weighting("eps"), generator=generator, device=x0.device
    )
    x_t = perturb(sde, x0, draw.t, generator=generator).x_t
    log_probs = _class_log_probs(classifier, x_t, _net_time(draw.t, x0), labels)
    logp = _pick(log_probs, labels)
    per_sample = -draw.importance.to(logp.dtype) * logp
    correct = log_probs.detach().argmax(-1) == labels
    return ClassifierLossOutput(
        loss=per_sample.mean(),
        per_sample=per_sample,
        t=draw.t,
        accuracy=correct.to(x0.dtype).mean(),
    )


# --------------------------------------------------------------------------- oracle helper


class ConditionalOracleNet:
    """The exact class-conditional "network" of a labelled Gaussian-mixture oracle, with the
    interface of a CFG network: ``net(x, t, y)`` returns the exact ``prediction`` of p_t(x | y)
    for labels ``y < n_classes`` and of the unconditional p_t(x) for the null label
    ``y == num_classes``. Use it for tests and examples: ``CFGModel(ConditionalOracleNet(
    oracle), oracle.sde, y=..., w=...)`` is exact classifier-free guidance.

    Args:
        oracle: a :class:`~scoresde.GaussianMixtureOracle` of a mixture with labels.
        prediction: what the net returns (default ``"eps"``).
    """

    def __init__(self, oracle: GaussianMixtureOracle, prediction: Prediction = "eps") -> None:
        if not isinstance(oracle, GaussianMixtureOracle):
            raise TypeError(f"oracle must be a GaussianMixtureOracle, got {type(oracle).__name__}")
        self.oracle = oracle
        self.prediction: Prediction = check_prediction(prediction)
        self.num_classes = oracle.gmm.n_classes
        self._by_class = [oracle.condition(c) for c in range(self.num_classes)]

    def __call__(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        t = check_time(t, x)
        yb = (
            torch.full((x.shape[0],), self.num_classes, device=x.device)
            if y is None
            else _batch_labels(_check_labels(y), x)
        )
        out = torch.empty_like(x)
        for label in torch.unique(yb).tolist():
            if not 0 <= label <= self.num_classes:
                raise ValueError(f"y must lie in [0, {self.num_classes}], got label {label}")
            model = self.oracle if label == self.num_classes else self._by_class[label]
            idx = yb == label
            out[idx] = model.predict(x[idx], t[idx], self.prediction)
        return out


# --------------------------------------------------------------------------- inpainting


def _forward_transition(sde: SDE, t_from: Tensor, t_to: Tensor) -> tuple[Tensor, Tensor]:
    """Mean factor and std of the forward transition p(x_to | x_from), t_to > t_from, float64:
    ``a = alpha_to / alpha_from``, ``s^2 = sigma_to^2 - a^2 sigma_from^2 = sigma_to^2 (1 -
    exp(lambda_to - lambda_from))`` (stable: ``-expm1``)."""
    a = torch.exp(sde._log_alpha(t_to) - sde._log_alpha(t_from))
    d_lam = sde._log_snr(t_to) - sde._log_snr(t_from)
    s = torch.exp(sde._log_sigma(t_to)) * torch.sqrt(-torch.expm1(d_lam))
    return a, s


class InpaintSolver(solvers.Solver[Any, Any]):
    """A fixed-grid solver wrapped for inpainting: every step is the base method's step
    followed by the replacement of the known entries (Song et al. 2021, appendix I.2), with
    optional RePaint resampling (Lugmayr et al. 2022, Algorithm 1, jump length 1).

    ``step(t0 -> t1)``, repeated ``resample`` times:

    1. ``x1 = base.step(x, t0 -> t1)`` (from the same incoming solver state each time);
    2. ``x1[known] = alpha(t1) x_known + sigma(t1) z`` (a fresh forward-marginal draw);
    3. except after the last repetition, jump back: ``x = a x1 + s z'`` with the forward
       transition t1 -> t0 (``a = alpha_0 / alpha_1``, ``s^2 = sigma_0^2 - a^2 sigma_1^2``).

    Network evaluations: ``resample`` times the base method's (``nfe_for_steps``,
    ``for_budget``). Randomness: every draw comes from ``generator`` through
    :func:`solvers.standard_normal_noise`, per repetition in the order: a stochastic base
    method's step noise (``noise_draws`` of them, stacked as ``integrate`` would), z, z'. The
    wrapper declares ``stochastic = False`` so that :func:`solvers.integrate` draws nothing
    itself (one draw per step would not be enough). Multistep base methods work with
    ``resample = 1``; with resampling their history mixes states from before and after a jump
    (docs/guidance.md: the variance blows up), so use a single-step method for RePaint. The
    wrapper exists in one class per term type (a solver's ``term_type`` is a class attribute);
    build it with :func:`inpaint_solver`. Methods that integrate the whole interval
    themselves (adaptive, torchsde) cannot be wrapped.

    Attributes:
        base: the wrapped fixed-grid solver.
        sde: the diffusion (alpha, sigma of the replacement and of the jumps).
        x_known: (B, ...) the data, zero where unknown.
        mask: (B, ...) bool, true where known.
        generator: source of all noise (None: torch's global generator).
        resample: repetitions of every step (1: plain replacement).
    """

    order: ClassVar[int] = 1  # replacement is not a convergent scheme for the conditional
    evals_per_step: ClassVar[int] = 1  # per repetition; see nfe_for_steps

    def __init__(
        self,
        base: solvers.Solver[Any, Any],
        sde: SDE,
        x_known: Tensor,
        mask: Tensor,
        *,
        generator: torch.Generator | None = None,
        resample: int = 1,
    ) -> None:
        self.base = base
        self.sde = sde
        self.x_known = x_known
        self.mask = mask
        self.generator = generator
        self.resample = resample

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base={type(self.base).__name__}, resample={self.resample})"

    def _with_base(self, base: solvers.Solver[Any, Any]) -> InpaintSolver:
        return type(self)(
            base,
            self.sde,
            self.x_known,
            self.mask,
            generator=self.generator,
            resample=self.resample,
        )

    def nfe_for_steps(self, n_steps: int) -> int:
        return self.resample * self.base.nfe_for_steps(n_steps)

    def grid_for(self, schedule: Any, t_start: float, t_end: float) -> str:
        """The base method's default time grid (see :meth:`solvers.Solver.grid_for`)."""
        return self.base.grid_for(schedule, t_start, t_end)

    def for_budget(self, nfe: int) -> tuple[solvers.Solver[Any, Any], int]:
        solvers.base.check_nfe(nfe)
        if nfe < self.resample:
            raise ValueError(
                f"nfe={nfe} is too small for resample={self.resample}: every step is repeated "
                f"{self.resample} times"
            )
        base, n_steps = self.base.for_budget(nfe // self.resample)
        return self._with_base(base), n_steps

    def replace(self, x: Tensor, t: Tensor) -> Tensor:
        """``x`` with its known entries replaced by ``alpha(t) x_known + sigma(t) z``; ``x`` of
        shape (B, ...), ``t`` a 0-d time; the result has x's shape."""
        t64 = t.to(device=x.device, dtype=torch.float64)
        alpha = torch.exp(self.sde._log_alpha(t64)).to(x.dtype)
        sigma = torch.exp(self.sde._log_sigma(t64)).to(x.dtype)
        z = solvers.standard_normal_noise(x, self.generator)
        return torch.where(self.mask, alpha * self.x_known + sigma * z, x)

    def _jump_back(self, x1: Tensor, t1: Tensor, t0: Tensor) -> Tensor:
        a, s = _forward_transition(self.sde, t1, t0)
        z = solvers.standard_normal_noise(x1, self.generator)
        return a.to(x1.dtype) * x1 + s.to(x1.dtype) * z

    def init(self, term: Any, ts: Tensor, x: Tensor) -> Any:
        return self.base.init(term, ts, x)

    def _base_noise(self, x: Tensor) -> Tensor | None:
        """The base method's noise for one step: None (deterministic), one ``N(0, I)`` draw of
        x's shape, or ``k = base.noise_draws`` of them stacked, shape (k, *x.shape), as
        :func:`solvers.integrate` would pass them."""
        if not type(self.base).stochastic:
            return None
        k = int(getattr(self.base, "noise_draws", 1))
        draws = [solvers.standard_normal_noise(x, self.generator) for _ in range(k)]
        return draws[0] if k == 1 else torch.stack(draws)

    def step(
        self, term: Any, t0: Tensor, t1: Tensor, x: Tensor, state: Any, noise: Tensor | None
    ) -> tuple[Tensor, Any]:
        x1, new_state = x, state
        for r in range(self.resample):
            base_noise = self._base_noise(x)
            # every repetition restarts from the incoming state (the history of earlier steps)
            x1, new_state = self.base.step(term, t0, t1, x, state, base_noise)
            x1 = self.replace(x1, t1)
            if r + 1 < self.resample:
                x = self._jump_back(x1, t1, t0)
        return x1, new_state


class _InpaintODE(InpaintSolver):
    term_type = solvers.ODETermLike


class _InpaintSDE(InpaintSolver):
    term_type = solvers.SDETermLike


class _InpaintDenoiser(InpaintSolver):
    term_type = solvers.DenoiserTermLike


_INPAINT_CLASSES: dict[type, type[InpaintSolver]] = {
    solvers.ODETermLike: _InpaintODE,
    solvers.SDETermLike: _InpaintSDE,
    solvers.DenoiserTermLike: _InpaintDenoiser,
}


def _check_mask(mask: Tensor | None, x_known: Tensor) -> Tensor:
    """The known-entries mask as a bool tensor of x_known's shape."""
    if mask is None:
        return ~torch.isnan(x_known)
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a bool tensor (true = known) or None, got {type(mask)}")
    if mask.dtype != torch.bool:
        if mask.device.type == "cpu" and not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must be boolean or hold only 0 and 1 (1 = known)")
        mask = mask != 0
    try:
        return mask.to(x_known.device).expand(x_known.shape)
    except RuntimeError:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to x_known's shape "
            f"{tuple(x_known.shape)}"
        ) from None


def inpaint_solver(
    base: str | solvers.Solver[Any, Any],
    sde: SDE,
    x_known: Tensor,
    mask: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    resample: int = 1,
) -> InpaintSolver:
    """Wrap a fixed-grid solver for inpainting (see :class:`InpaintSolver`).

    Args:
        base: a registry name or a solver instance; not an adaptive one.
        sde: the diffusion.
        x_known: (B, ...) data; only the entries where ``mask`` is true are read (others may
            be NaN).
        mask: bool, broadcastable to x_known's shape, true where known (0/1 numbers are
            accepted); None: known where x_known is not NaN.
        generator: source of the replacement, jump and step noise.
        resample: RePaint repetitions of every step, >= 1.
    """
    solver, name = resolve_solver(base)
    if type(solver).adaptive or callable(getattr(solver, "solve", None)):
        raise ValueError(
            f"inpainting needs a fixed-grid solver that advances step by step; {name!r} "
            f"integrates the whole interval itself (adaptive or torchsde-driven), so the known "
            f"entries cannot be replaced between its steps"
        )
    cls = _INPAINT_CLASSES.get(type(solver).term_type)
    if cls is None:
        raise TypeError(
            f"inpainting supports solvers of term types "
            f"{', '.join(t.__name__ for t in _INPAINT_CLASSES)}; {name!r} declares "
            f"{type(solver).term_type.__name__}"
        )
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scoresde.SDE, got {type(sde).__name__}")
    _check_state(x_known, "x_known")
    if not x_known.is_floating_point():
        raise TypeError(f"x_known must be a floating-point tensor, got {x_known.dtype}")
    if isinstance(resample, bool) or not isinstance(resample, int) or resample < 1:
        raise ValueError(f"resample must be an int >= 1, got resample={resample!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {generator!r}")
    m = _check_mask(mask, x_known)
    if x_known.device.type == "cpu" and not bool(torch.isfinite(x_known[m]).all()):
        raise ValueError("x_known must be finite at the known entries (where mask is true)")
    data = torch.where(m, x_known, torch.zeros_like(x_known))
    return cls(solver, sde, data, m, generator=generator, resample=resample)


def inpaint(
    model: SamplerModel,
    x_known: Tensor,
    mask: Tensor | None = None,
    *,
    method: str | solvers.Solver[Any, Any] = "euler",
    nfe: int | None = None,
    grid: str | Tensor | None = None,
    generator: torch.Generator | None = None,
    resample: int = 1,
    denoise_final: bool = False,
    progress: bool = False,
    callback: Callable[[int, Tensor, Tensor], object] | None = None,
    return_trajectory: bool = False,
) -> SampleResult:
    """Fill in the unknown entries of ``x_known`` by sampling from ``model`` (inpainting of
    images, imputation of tabular vectors): replacement (Song et al. 2021, appendix I.2) with
    optional RePaint resampling (Lugmayr et al. 2022), with any fixed-grid solver.

    The initial state is prior noise with its known entries replaced by ``alpha(T) x_known +
    sigma(T) z``; every step is the method's step plus the replacement (:class:`InpaintSolver`);
    the result has the known entries of ``x_known`` exactly. Replacement is approximate: the
    unknown entries are not an exact sample of p(x_unknown | x_known) (see docs/guidance.md for
    the measured bias and how resampling reduces it).

    Args:
        model: a score model (``sde``, ``score``, ``x0``), guided or not.
        x_known: (B, ...) data (any rank: images (B, C, H, W), vectors (B, D)); entries where
            the mask is false are ignored and may be NaN.
        mask: bool, broadcastable to x_known, true where known (0/1 accepted); None: known
            where x_known is not NaN.
        method: a fixed-grid registry name or solver instance (not adaptive).
        nfe: the budget; with ``resample = r`` each step costs r times the method's, so the
            steps are those the method takes for ``nfe // r`` (see :func:`scoresde.sample`).
        grid: a grid name, a decreasing tensor, or None for the method's default grid for
            this SDE (``base.grid_for(sde, T, t_min)``, as :func:`scoresde.sample` picks it).
        generator: the only source of randomness (initial noise, replacement, jumps, steps).
        resample: RePaint repetitions of every step (1: plain replacement).
        denoise_final: Tweedie-denoise the final state (one evaluation; known entries kept).
        progress: show a progress bar.
        callback: ``callback(i, t, x)`` after every step.
        return_trajectory: keep the state at every grid point.

    Returns:
        :class:`scoresde.SampleResult`: ``x`` (x_known's shape, dtype and device), ``nfe``
        (network calls, resampling included), ``ts``, ``method`` (``"inpaint(<name>)"``) and
        the optional ``trajectory``.

    Example::

        mask = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
        mask[..., :4] = True  # the left half is known
        res = sd.inpaint(model, images, mask, method="ddim", nfe=50, resample=4, generator=g)
    """
    sde = model.sde
    base, name = resolve_solver(method)
    solver = inpaint_solver(base, sde, x_known, mask, generator=generator, resample=resample)
    noise = solvers.standard_normal_noise(x_known, generator) * sde.prior_std
    t_start = torch.tensor(sde.T, dtype=torch.float64)
    x_init = solver.replace(noise, t_start)
    res = sample(
        model,
        solver,
        nfe,
        x_init=x_init,
        grid=base.grid_for(sde, sde.T, sde.t_min) if grid is None else grid,
        generator=generator,
        denoise_final=denoise_final,
        progress=progress,
        callback=callback,
        return_trajectory=return_trajectory,
    )
    x = torch.where(solver.mask, x_known, res.x)
    return dataclasses.replace(res, x=x, method=f"inpaint({name})")
