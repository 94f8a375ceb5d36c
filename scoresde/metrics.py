"""Distances between two samples: sliced Wasserstein-2 and the kernel MMD.

Both compare a generated sample ``x`` (n, ...) with a reference sample ``y`` (m, ...) (held-out
data, or exact draws of an oracle); states of any shape are flattened to (n, D).

* :func:`sliced_wasserstein` — the sliced 2-Wasserstein distance (Rabin et al. 2011; Bonneel et
  al. 2015): the root mean over random unit directions of the squared 1-D W2 between the
  projections, each 1-D W2 computed exactly from quantile functions. Unequal sample sizes are
  compared at common quantile levels.
* :func:`mmd` — the maximum mean discrepancy (Gretton et al. 2012) with a sum of Gaussian
  kernels whose bandwidths are multiples of the median pairwise distance of the pooled sample
  (the median heuristic), unbiased U-statistic of MMD^2; returned as ``sqrt(max(MMD^2, 0))``.

Both are random (directions; nothing else) only through an injected generator, run in float64
and return plain floats. Neither is zero for two finite samples of the same distribution: its
*noise floor* at a sample size is the value for two independent exact samples of that size,
which :func:`noise_floor` measures for a sampler function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["sliced_wasserstein", "mmd", "median_distance", "noise_floor"]


def _flat(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 2 or x.shape[0] < 2:
        raise ValueError(f"{name} must have shape (n, ...) with n >= 2, got {tuple(x.shape)}")
    x = x.detach().reshape(x.shape[0], -1).to(torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _pair(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    xf, yf = _flat(x, "x"), _flat(y, "y")
    if xf.shape[1] != yf.shape[1]:
        raise ValueError(
            f"x and y must have the same number of coordinates per sample, got "
            f"{tuple(x.shape[1:])} and {tuple(y.shape[1:])}"
        )
    return xf, yf.to(xf.device)


def _quantiles(v: Tensor, levels: Tensor) -> Tensor:
    """Empirical quantile function of the columns of ``v`` (n, P) at ``levels`` (L,): (L, P)."""
    s, _ = torch.sort(v, dim=0)
    idx = torch.clamp((levels * s.shape[0]).long(), max=s.shape[0] - 1)
    return s[idx]


def median_distance(x: Tensor, max_points: int | None = None) -> float:
    """Median Euclidean distance between distinct samples of ``x`` (n, ...) (flattened; its
    first ``max_points`` rows when given), the median heuristic for a kernel's length scale;
    1.0 when it is 0 (e.g. all samples equal). Computed in ``x``'s dtype."""
    if max_points is not None:
        x = x[:max_points]
    flat = x.reshape(x.shape[0], -1)
    return _median_off_diagonal(torch.cdist(flat, flat))


def _median_off_diagonal(d: Tensor) -> float:
    """Median of a square distance matrix's off-diagonal entries (1.0 if it is 0)."""
    s = float(d[~torch.eye(d.shape[0], dtype=torch.bool, device=d.device)].median())
    return s if s > 0 else 1.0


def sliced_wasserstein(
    x: Tensor,
    y: Tensor,
    *,
    n_projections: int = 256,
    generator: torch.Generator | None = None,
) -> float:
    """Sliced 2-Wasserstein distance between samples ``x`` (n, ...) and ``y`` (m, ...).

    ``SW2(x, y)^2 = E_u[W2(<u, x>, <u, y>)^2]`` over directions u uniform on the sphere, averaged
    over ``n_projections`` directions drawn from ``generator``. With n == m the 1-D distance is
    the exact one between the sorted projections; otherwise both quantile functions are
    evaluated at the midpoints of max(n, m) equal bins.

    Raises:
        ValueError: for fewer than two samples, mismatched sample shapes, non-finite values or
            ``n_projections < 1``.
    """
    if isinstance(n_projections, bool) or not isinstance(n_projections, int) or n_projections < 1:
        raise ValueError(f"n_projections must be an int >= 1, got {n_projections!r}")
    xf, yf = _pair(x, y)
    d = xf.shape[1]
    u = torch.randn(d, n_projections, generator=generator, dtype=torch.float64)
    u = (u / u.norm(dim=0, keepdim=True)).to(xf.device)
    px, py = xf @ u, yf @ u
    if px.shape[0] == py.shape[0]:
        qx, _ = torch.sort(px, dim=0)
        qy, _ = torch.sort(py, dim=0)
    else:
        n = max(px.shape[0], py.shape[0])
        levels = (torch.arange(n, dtype=torch.float64, device=xf.device) + 0.5) / n
        qx, qy = _quantiles(px, levels), _quantiles(py, levels)
    return float(((qx - qy) ** 2).mean().sqrt())


def mmd(
    x: Tensor,
    y: Tensor,
    *,
    bandwidths: Sequence[float] = (0.5, 1.0, 2.0),
    scale: float | None = None,
) -> float:
    """Kernel maximum mean discrepancy between samples ``x`` (n, ...) and ``y`` (m, ...).

    The kernel is ``k(a, b) = sum_j exp(-|a - b|^2 / (2 (b_j s)^2))`` for the ``bandwidths``
    b_j, with length scale ``s`` = ``scale`` or, when None, the median pairwise distance of the
    pooled sample. Returns ``sqrt(max(MMD_u^2, 0))`` with the unbiased estimate MMD_u^2 of
    Gretton et al. (2012), Eq. 3; it can be 0 for two samples of the same distribution.
    Pass a fixed ``scale`` to compare several ``x`` against one ``y`` on the same kernel.
    """
    if not bandwidths or any(not b > 0 for b in bandwidths):
        raise ValueError(f"bandwidths must be positive numbers, got {bandwidths!r}")
    if scale is not None and not scale > 0:
        raise ValueError(f"scale must be positive (or None: median heuristic), got {scale!r}")
    xf, yf = _pair(x, y)
    n, m = xf.shape[0], yf.shape[0]
    z = torch.cat([xf, yf])
    d = torch.cdist(z, z)
    s2 = (_median_off_diagonal(d) if scale is None else float(scale)) ** 2
    d2 = d.pow(2)
    k = sum(torch.exp(-d2 / (2 * b * b * s2)) for b in bandwidths)
    assert isinstance(k, Tensor)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    mmd2 = (
        (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
        + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        - 2 * kxy.mean()
    )
    return float(mmd2.clamp_min(0).sqrt())


def noise_floor(
    draw: Callable[[int, torch.Generator], Tensor],
    n: int,
    *,
    repeats: int = 5,
    seed: int = 0,
    n_projections: int = 256,
) -> tuple[float, float]:
    """Mean (sliced W2, MMD) between two independent exact samples of size ``n``.

    ``draw(n, generator)`` returns n exact samples (e.g. ``gmm.sample``). A sampler whose
    distance to an exact sample is near this floor is indistinguishable at this sample size.
    """
    g = torch.Generator().manual_seed(seed)
    sw, mm = 0.0, 0.0
    for _ in range(repeats):
        a, b = draw(n, g), draw(n, g)
        sw += sliced_wasserstein(a, b, n_projections=n_projections, generator=g)
        mm += mmd(a, b)
    return sw / repeats, mm / repeats
