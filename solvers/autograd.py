"""Autograd inside solvers and samplers, whatever the caller's grad mode.

Sampling runs under ``torch.no_grad`` or ``torch.inference_mode``, yet a few computations need
a derivative: the time derivatives of a schedule, the state-dependence of a diffusion
coefficient, the divergence of a likelihood ODE. ``torch.enable_grad()`` lifts ``no_grad`` but
not inference mode, where it records nothing and a derivative silently comes out as zero.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = ["autograd_enabled", "normal_tensor"]


@contextlib.contextmanager
def autograd_enabled() -> Iterator[None]:
    """Gradients recorded whatever the caller's mode: ``torch.no_grad`` is lifted by
    ``enable_grad`` and ``torch.inference_mode`` by ``inference_mode(False)``. Tensors made in
    inference mode must pass through :func:`normal_tensor` before autograd may save them."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def normal_tensor(x: Tensor) -> Tensor:
    """``x`` detached, as a normal tensor: a copy only if it was made under inference mode."""
    return x.detach().clone() if x.is_inference() else x.detach()
