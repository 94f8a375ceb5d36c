"""Divergence of a vector field: exact (batched vector-Jacobian products over the basis) and
the Hutchinson-Skilling trace estimator.

For ``F: R^D -> R^D`` applied sample by sample to a batch ``x`` of shape ``(B, *dims)``
(``D = prod(dims)``), ``div F(x) = tr(dF/dx) = sum_j e_j^T (dF/dx) e_j``.

* **Exact** (:func:`exact_divergence`): one forward pass, then the ``D`` vector-Jacobian
  products ``e_j^T dF/dx`` (row ``j`` of the Jacobian of every sample at once, since samples do
  not interact) evaluated ``chunk`` basis vectors at a time as one batched backward pass
  (``torch.autograd.grad(..., is_grads_batched=True)``, i.e. ``torch.func.vmap`` over the
  cotangents). Only the backward pass is vectorised: the function itself runs once, on the
  ordinary batch, so any network that runs forward works. Cost: one forward and ``D`` VJPs; memory
  ``chunk * B * D`` for the cotangents and results.
* **Hutchinson-Skilling** (:func:`hutchinson_divergence`; Skilling 1989, Hutchinson 1990, used
  for continuous normalising flows by Grathwohl et al. 2019, FFJORD): for probes ``eps`` with
  ``E[eps] = 0`` and ``E[eps eps^T] = I``, ``E[eps^T (dF/dx) eps] = div F``. One VJP per probe;
  the ``K`` probes go through one batched backward pass. Rademacher probes (entries +-1) have
  the smallest variance among i.i.d. probes: ``Var = 2 sum_{i != j} ((J_ij + J_ji) / 2)^2``
  for a Jacobian ``J`` (Gaussian probes add ``2 sum_i J_ii^2``).

Both return the function value too, so a caller (the likelihood ODE) evaluates the network once
per step for the velocity and its divergence.

Under ``torch.inference_mode`` autograd records nothing, even inside ``torch.enable_grad()``,
and a Jacobian would silently be zero: both functions run their autograd with inference mode
turned off (:func:`solvers.autograd.autograd_enabled`), on a normal copy of an inference-tensor
``x``, and :func:`scoresde.log_likelihood` runs its whole solve that way
(:func:`outside_inference_mode`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_args

import torch
from torch import Tensor

from solvers.autograd import autograd_enabled, normal_tensor

__all__ = [
    "Divergence",
    "ProbeKind",
    "PROBE_KINDS",
    "autograd_enabled",
    "exact_divergence",
    "hutchinson_divergence",
    "normal_tensor",
    "outside_inference_mode",
    "sample_probes",
]

ProbeKind = Literal["rademacher", "gaussian"]
"""Distribution of the Hutchinson probes: entries uniform in {-1, +1}, or standard normal."""

PROBE_KINDS: tuple[ProbeKind, ...] = get_args(ProbeKind)

_CHUNK_ELEMENTS = 1 << 24
"""Default bound on ``chunk * B * D``, the elements of one batch of cotangents (128 MiB in
float64)."""


@dataclass(frozen=True)
class Divergence:
    """A function value and its divergence.

    Attributes:
        value: ``F(x)``, shape ``(B, *dims)``, detached.
        divergence: ``(B,)`` exact divergence, or ``(B, K)``: one Hutchinson estimate per probe.
    """

    value: Tensor
    divergence: Tensor


_F = TypeVar("_F", bound=Callable[..., Any])


def outside_inference_mode(fn: _F) -> _F:
    """Run ``fn`` with inference mode off when it is called under ``torch.inference_mode``,
    its tensor arguments made normal tensors (:func:`normal_tensor`): for functions whose
    work needs autograd throughout (a likelihood solve: every divergence is a Jacobian of the
    network at times and states made during the solve)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_inference_mode_enabled():
            return fn(*args, **kwargs)
        with torch.inference_mode(False):
            args = tuple(normal_tensor(a) if isinstance(a, Tensor) else a for a in args)
            kwargs = {
                k: normal_tensor(v) if isinstance(v, Tensor) else v for k, v in kwargs.items()
            }
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _forward(fn: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """``(x_leaf, F(x_leaf))`` with a graph from the leaf to the output (grad enabled)."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 1:
        raise TypeError(f"x must be a floating tensor of shape (B, ...), got {x!r:.80}")
    x_leaf = normal_tensor(x).requires_grad_(True)
    out = fn(x_leaf)
    if not isinstance(out, Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"fn must return a tensor of x's shape {tuple(x.shape)}, got {got}")
    return x_leaf, out


_NOT_DIFFERENTIABLE = (
    "the function's output (for a likelihood: the model's score) is not differentiable in x "
    "(it has no autograd graph back to x: computed under torch.no_grad, detached, or outside "
    "torch), so its divergence would come out as zero; compute it with torch operations on "
    "x, with gradients enabled"
)


def _batched_vjp(
    out: Tensor, x_leaf: Tensor, cotangents: Tensor, retain: bool, strict: bool
) -> Tensor:
    """``(C, *x.shape)``: ``c^T dF/dx`` for each of the C cotangents, one backward pass.
    ``strict``: an output without a graph back to ``x`` is an error, not a zero Jacobian."""
    if not out.requires_grad:  # F does not depend on x (or hides it from autograd)
        if strict:
            raise ValueError(_NOT_DIFFERENTIABLE)
        return torch.zeros_like(cotangents)
    (grads,) = torch.autograd.grad(
        out, x_leaf, cotangents, retain_graph=retain, is_grads_batched=True, allow_unused=True
    )
    if grads is None:
        if strict:
            raise ValueError(_NOT_DIFFERENTIABLE)
        return torch.zeros_like(cotangents)
    return grads


def exact_divergence(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    chunk_size: int | None = None,
    strict: bool = False,
) -> Divergence:
    """Exact divergence ``tr(dF/dx)`` of a per-sample map, by ``D`` batched VJPs.

    Args:
        fn: ``F``, maps ``(B, *dims)`` to ``(B, *dims)``; samples must not interact (the
            Jacobian is block-diagonal), as for any network without batch statistics.
        x: the points, ``(B, *dims)``.
        chunk_size: basis vectors per backward pass (default: as many as fit in about
            ``2^24`` elements of cotangents, ``chunk * B * D``; at least 1).
        strict: raise if ``F(x)`` has no autograd graph back to ``x`` (default: a constant
            ``F``, divergence 0). :func:`scoresde.log_likelihood` sets it: a score computed
            under ``torch.no_grad`` or through NumPy would otherwise give a silently wrong
            likelihood.

    Returns:
        :class:`Divergence` with ``value = F(x)`` (detached) and ``divergence`` of shape (B,).

    Raises:
        ValueError: with ``strict``, ``F(x)`` is not differentiable in ``x``.
    """
    with autograd_enabled():
        x_leaf, out = _forward(fn, x)
        b = x.shape[0]
        d = math.prod(x.shape[1:])
        chunk = _chunk(chunk_size, b, d)
        div = torch.zeros(b, dtype=out.dtype, device=out.device)
        for start in range(0, d, chunk):
            stop = min(d, start + chunk)
            rows = torch.arange(stop - start, device=x.device)
            basis = torch.zeros(stop - start, b, d, dtype=out.dtype, device=out.device)
            basis[rows, :, start + rows] = 1.0
            grads = _batched_vjp(out, x_leaf, basis.reshape(-1, *x.shape), stop < d, strict)
            div = div + grads.reshape(stop - start, b, d)[rows, :, start + rows].sum(0)
    return Divergence(out.detach(), div.detach())


def hutchinson_divergence(
    fn: Callable[[Tensor], Tensor], x: Tensor, probes: Tensor, *, strict: bool = False
) -> Divergence:
    """Hutchinson-Skilling estimates ``eps_k^T (dF/dx) eps_k`` of ``div F``, one per probe.

    Args:
        fn: ``F``, maps ``(B, *dims)`` to ``(B, *dims)`` sample by sample.
        x: the points, ``(B, *dims)``.
        probes: ``(K, B, *dims)`` with ``E[eps] = 0``, ``E[eps eps^T] = I`` (see
            :func:`sample_probes`); keep them fixed over an ODE solve.
        strict: as for :func:`exact_divergence`.

    Returns:
        :class:`Divergence` with ``value = F(x)`` and ``divergence`` of shape ``(B, K)``; their
        mean over K is unbiased for the divergence.
    """
    if not isinstance(probes, Tensor) or probes.shape[1:] != x.shape or probes.ndim < 2:
        got = tuple(probes.shape) if isinstance(probes, Tensor) else type(probes).__name__
        raise ValueError(
            f"probes must have shape (K, *x.shape) = (K, *{tuple(x.shape)}), got {got}"
        )
    with autograd_enabled():
        x_leaf, out = _forward(fn, x)
        eps = probes.to(dtype=out.dtype, device=out.device)
        grads = _batched_vjp(out, x_leaf, eps, False, strict)
        est = (grads * eps).flatten(2).sum(-1)  # (K, B)
    return Divergence(out.detach(), est.detach().T)


def sample_probes(
    shape: tuple[int, ...] | torch.Size,
    n_probes: int,
    kind: ProbeKind = "rademacher",
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Draw ``n_probes`` Hutchinson probes for states of shape ``shape`` = ``(B, *dims)``.

    Drawn on the generator's device (CPU without one) and moved to ``device``: the same seed
    gives the same probes on every device.

    Returns:
        ``(n_probes, *shape)`` tensor of ``dtype`` (default: the default dtype).
    """
    if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 1:
        raise ValueError(f"n_probes must be an int >= 1, got n_probes={n_probes!r}")
    if kind not in PROBE_KINDS:
        raise ValueError(f"probe must be one of {list(PROBE_KINDS)}, got probe={kind!r}")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    full = (n_probes, *tuple(shape))
    dtype = dtype or torch.get_default_dtype()
    if kind == "gaussian":
        eps = torch.randn(full, generator=generator, device=gen_device, dtype=dtype)
    else:
        bits = torch.randint(0, 2, full, generator=generator, device=gen_device)
        eps = (2 * bits - 1).to(dtype)
    return eps if device is None else eps.to(device)


def _chunk(chunk_size: int | None, b: int, d: int) -> int:
    if chunk_size is None:
        return max(1, min(d, _CHUNK_ELEMENTS // max(1, b * d)))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1 or None, got chunk_size={chunk_size!r}")
    return min(chunk_size, d)
