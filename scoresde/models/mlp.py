"""A residual MLP score network for tabular and 2-D data."""

from __future__ import annotations

import math

from torch import Tensor, nn

from scoresde.models.embeddings import (
    ClassEmbedding,
    check_time,
    count_parameters,
)
from scoresde.models.embeddings import time_embedding as make_time_embedding

__all__ = ["MLP"]


class _ResidualBlock(nn.Module):
    """``h + Linear(SiLU(Linear(SiLU(LayerNorm(h))) + temb))``."""

    def __init__(self, width: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.emb = nn.Linear(emb_dim, width)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(width, width)
        self.act = nn.SiLU()

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        z = self.fc1(self.act(self.norm(h))) + self.emb(emb)
        return h + self.fc2(self.drop(self.act(z)))


class MLP(nn.Module):
    """Residual MLP ``net(x, t, y=None)`` for vectors (tabular data, 2-D toy sets).

    ``x`` of shape (B, *shape) with ``prod(shape) = dim`` is flattened, lifted to ``width``,
    passed through ``depth`` residual blocks (pre-LayerNorm, SiLU, the time embedding added
    inside each block, as the DDPM residual block of Ho et al. 2020) and projected back; the
    output has x's shape. It knows nothing about SDEs: ``t`` is any (B,) time or noise level.

    Args:
        dim: number of features per sample.
        width: hidden width.
        depth: number of residual blocks.
        emb_dim: size of the time embedding.
        time_embedding: ``"sinusoidal"`` or ``"fourier"`` (see
            :mod:`scoresde.models.embeddings`).
        time_scale: the embedding's input scale (None: its default, 1000 for sinusoidal, 16
            for Fourier features, both suited to t in [0, 1]).
        num_classes: number of classes for class conditioning (None: unconditional); label
            ``num_classes`` is the null label, and ``y=None`` means null.
        dropout: dropout rate inside the blocks.
        out_dim: output features (default ``dim``: an output shaped like the input; another
            value gives a ``(B, out_dim)`` head, e.g. class logits).
    """

    def __init__(
        self,
        dim: int,
        *,
        width: int = 128,
        depth: int = 3,
        emb_dim: int = 64,
        time_embedding: str = "sinusoidal",
        time_scale: float | None = None,
        num_classes: int | None = None,
        dropout: float = 0.0,
        out_dim: int | None = None,
    ) -> None:
        super().__init__()
        out_dim = dim if out_dim is None else out_dim
        for name, value in (("dim", dim), ("width", width), ("depth", depth), ("out_dim", out_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {name}={value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got dropout={dropout!r}")
        self.dim = dim
        self.num_classes = num_classes
        self.time_embed = nn.Sequential(
            make_time_embedding(time_embedding, emb_dim, time_scale),
            nn.Linear(emb_dim, emb_dim),
            nn.SiLU(),
            nn.Linear(emb_dim, emb_dim),
        )
        self.class_embed = None if num_classes is None else ClassEmbedding(num_classes, emb_dim)
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(_ResidualBlock(width, emb_dim, dropout) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width)
        self.out_dim = out_dim
        self.out = nn.Linear(width, out_dim)
        self.act = nn.SiLU()

    @property
    def n_params(self) -> int:
        """Number of trainable scalars."""
        return count_parameters(self)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Evaluate the network.

        Args:
            x: (B, *shape) with prod(shape) = dim.
            t: (B,) times or noise levels (a 0-d tensor or float is broadcast).
            y: (B,) int labels in [0, num_classes] (num_classes = null) or None (null);
                only for a class-conditional network.

        Returns:
            (B, *shape), x's dtype; (B, out_dim) when ``out_dim`` differs from ``dim``.
        """
        if x.ndim < 2 or math.prod(x.shape[1:]) != self.dim:
            raise ValueError(
                f"x must have shape (B, ...) with {self.dim} features per sample, got "
                f"{tuple(x.shape)}"
            )
        emb = self.time_embed(check_time(t, x))
        if self.class_embed is not None:
            emb = emb + self.class_embed(y, x.shape[0], x.device)
        elif y is not None:
            raise ValueError("y was given, but this network is unconditional (num_classes=None)")
        h = self.inp(x.flatten(1))
        for block in self.blocks:
            h = block(h, emb)
        out = self.out(self.act(self.out_norm(h)))
        return out.reshape(x.shape) if self.out_dim == self.dim else out
