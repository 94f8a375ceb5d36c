"""The one place where a per-sample coefficient meets a state tensor (k-diffusion
``append_dims``, flow_matching ``expand_like``). Never write ``[:, None, None, None]``."""

from __future__ import annotations

from torch import Tensor

__all__ = ["append_dims", "coef"]


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dimensions to ``v`` until it has ``ndim`` dimensions.

    A coefficient of shape ``()`` or ``(B,)`` becomes ``()`` / ``(B, 1, ..., 1)`` and then
    broadcasts against a state of shape ``(B, *dims)`` with ``ndim = 1 + len(dims)``. Returns a
    view (no copy).

    Args:
        v: tensor of shape ``(*lead,)`` with ``len(lead) <= ndim``.
        ndim: target number of dimensions (usually ``x.ndim``).

    Returns:
        ``v`` reshaped to ``(*lead, 1, ..., 1)`` with ``ndim`` dimensions (a 0-d ``v`` is
        returned unchanged: it already broadcasts against anything).

    Raises:
        ValueError: if ``v`` has more than ``ndim`` dimensions, or ``ndim`` is negative.
    """
    if isinstance(ndim, bool) or not isinstance(ndim, int) or ndim < 0:
        raise ValueError(f"append_dims: ndim must be an int >= 0, got ndim={ndim!r}")
    missing = ndim - v.ndim
    if missing < 0:
        raise ValueError(
            f"append_dims: v has {v.ndim} dims (shape {tuple(v.shape)}), more than the target "
            f"ndim={ndim}; a per-sample coefficient must have shape () or (B,) for a state of "
            f"shape (B, ...)"
        )
    if v.ndim == 0 or missing == 0:
        return v
    return v.reshape(*v.shape, *([1] * missing))


def coef(c: Tensor, x: Tensor) -> Tensor:
    """A (float64) coefficient of shape ``()`` or ``(B,)`` made ready to meet the state ``x``:
    broadcast with :func:`append_dims` and cast to ``x.dtype`` (no host synchronisation).

    Args:
        c: coefficient, shape ``()`` or ``(B,)``, any float dtype (solvers compute in float64).
        x: the state it multiplies, shape ``(B, *dims)``.

    Returns:
        ``c`` with shape ``()`` or ``(B, 1, ..., 1)`` and dtype ``x.dtype``.
    """
    return append_dims(c, x.ndim).to(dtype=x.dtype)
