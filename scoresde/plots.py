"""Figures written as PNG files with matplotlib (no display needed): samples and loss curves.

* :func:`save_samples` -- a grid of images ``(N, C, H, W)`` or a scatter of 2-D points
  ``(N, 2)`` (over a reference sample in grey when given);
* :func:`image_grid` -- the grid as an array, for other uses;
* :func:`save_loss_curve` -- the training loss from ``metrics.csv`` (raw and smoothed), with
  the test bits/dim from ``eval.csv`` on a second axis when there are evaluations.

Figures are drawn on a :class:`matplotlib.figure.Figure` with the Agg canvas, never through
``pyplot``, so no GUI backend or global state is touched.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from torch import Tensor

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["image_grid", "save_samples", "save_loss_curve", "read_csv"]


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def image_grid(
    x: Tensor,
    *,
    data_range: tuple[float, float] | None = None,
    nrow: int | None = None,
    pad: int = 1,
) -> np.ndarray:
    """Tile images into one array.

    Args:
        x: (N, C, H, W) images, C in {1, 3}.
        data_range: (lo, hi) mapped to black and white (None: the min and max of x).
        nrow: images per row (None: about sqrt(N)).
        pad: pixels between images.

    Returns:
        (rows * (H + pad) + pad, nrow * (W + pad) + pad, C) float array in [0, 1].
    """
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"x must have shape (N, C, H, W) with C in (1, 3), got {tuple(x.shape)}")
    x = x.detach().float().cpu()
    lo, hi = data_range if data_range is not None else (float(x.min()), float(x.max()))
    x = ((x - lo) / max(hi - lo, 1e-12)).clamp(0.0, 1.0)
    n, c, h, w = x.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = np.ones((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.float32)
    for i in range(n):
        r, k = divmod(i, nrow)
        y0, x0 = pad + r * (h + pad), pad + k * (w + pad)
        grid[y0 : y0 + h, x0 : x0 + w] = x[i].permute(1, 2, 0).numpy()
    return grid


def save_samples(
    x: Tensor,
    path: str | Path,
    *,
    data_range: tuple[float, float] | None = None,
    reference: Tensor | None = None,
    title: str | None = None,
) -> Path:
    """Save samples as a PNG: an image grid for (N, C, H, W), a scatter for (N, 2).

    Args:
        x: the samples.
        path: the PNG file (its folder is created).
        data_range: the data's (lo, hi) for images (black and white).
        reference: for 2-D points, data drawn underneath in grey (e.g. the test split).
        title: the figure's title.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = x.detach().float().cpu()
    if x.ndim == 2 and x.shape[1] == 2:
        fig = _figure(5, 5)
        ax = fig.add_subplot(1, 1, 1)
        if reference is not None:
            ref = reference.detach().float().cpu().numpy()
            ax.scatter(ref[:, 0], ref[:, 1], s=2, c="0.75", label="data", rasterized=True)
        pts = x.numpy()
        finite = np.isfinite(pts).all(1)
        ax.scatter(pts[finite, 0], pts[finite, 1], s=3, c="C0", label="samples", rasterized=True)
        if reference is not None:
            ref_t = reference.detach().float().cpu()
            lo, hi = ref_t.min(0).values, ref_t.max(0).values
            margin = 0.25 * (hi - lo)
            ax.set_xlim(float(lo[0] - margin[0]), float(hi[0] + margin[0]))
            ax.set_ylim(float(lo[1] - margin[1]), float(hi[1] + margin[1]))
            ax.legend(loc="upper right", markerscale=4)
        ax.set_aspect("equal")
    elif x.ndim == 4 and x.shape[1] in (1, 3):
        grid = image_grid(x, data_range=data_range)
        side = min(10.0, max(4.0, max(grid.shape[:2]) / 40))  # inches for the longer side
        scale = side / max(grid.shape[:2])
        fig = _figure(grid.shape[1] * scale, grid.shape[0] * scale + (0.4 if title else 0.0))
        ax = fig.add_subplot(1, 1, 1)
        if grid.shape[2] == 1:
            ax.imshow(grid[:, :, 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        else:
            ax.imshow(grid, interpolation="nearest")
        ax.set_axis_off()
    else:
        raise ValueError(
            f"samples must be 2-D points (N, 2) or images (N, C, H, W) with C in (1, 3), got "
            f"{tuple(x.shape)}"
        )
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    return path


def read_csv(path: str | Path) -> dict[str, np.ndarray]:
    """A CSV file with a header as ``{column: float array}`` (empty cells: NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    out = {}
    for key in rows[0]:
        vals = []
        for r in rows:
            try:
                vals.append(float(r[key]) if r[key] not in ("", None) else math.nan)
            except ValueError:
                vals.append(math.nan)
        out[key] = np.asarray(vals, dtype=np.float64)
    return out


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or y.size < window:
        return y
    kernel = np.ones(window) / window
    valid = np.convolve(y, kernel, mode="valid")
    head = np.array([y[: i + 1].mean() for i in range(window - 1)])
    return np.concatenate([head, valid])


def save_loss_curve(
    metrics_csv: str | Path,
    path: str | Path,
    *,
    eval_csv: str | Path | None = None,
    baselines: Sequence[tuple[str, float]] = (),
    title: str | None = None,
) -> Path:
    """Plot the training loss (log scale, raw and smoothed) against the step, and the test
    bits/dim of each evaluation on a second axis with horizontal ``baselines`` lines.

    Args:
        metrics_csv: the run's ``metrics.csv`` (columns ``step``, ``loss``).
        path: the PNG file.
        eval_csv: the run's ``eval.csv`` (columns ``step``, ``bpd``, ``elbo_bpd``), optional.
        baselines: (label, bits/dim) pairs drawn as dashed lines on the bits/dim axis.
        title: the figure's title.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    m = read_csv(metrics_csv)
    if not m or "loss" not in m:
        raise ValueError(f"{metrics_csv} has no loss column (or no rows)")
    fig = _figure(7, 4)
    ax = fig.add_subplot(1, 1, 1)
    step, loss = m["step"], m["loss"]
    ax.plot(step, loss, color="C0", alpha=0.3, lw=0.8, label="loss")
    ax.plot(step, _smooth(loss, max(1, len(loss) // 20)), color="C0", lw=1.5, label="smoothed")
    if np.all(loss[np.isfinite(loss)] > 0):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    handles, labels = ax.get_legend_handles_labels()
    e = read_csv(eval_csv) if eval_csv is not None and Path(eval_csv).is_file() else {}
    if e and "bpd" in e and np.isfinite(e["bpd"]).any():
        ax2 = ax.twinx()
        ok = np.isfinite(e["bpd"])
        ax2.plot(e["step"][ok], e["bpd"][ok], "o-", color="C3", label="test bits/dim (PF-ODE)")
        if "elbo_bpd" in e and np.isfinite(e["elbo_bpd"]).any():
            okb = np.isfinite(e["elbo_bpd"])
            ax2.plot(e["step"][okb], e["elbo_bpd"][okb], "s--", color="C1", label="ELBO bits/dim")
        for i, (label, value) in enumerate(baselines):
            ax2.axhline(value, ls=":", color=f"C{4 + i}", label=label)
        ax2.set_ylabel("bits/dim")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="center right", fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    return path
