"""Time (noise-level) and class embeddings shared by the networks.

Networks in :mod:`scoresde.models` know nothing about SDEs: they receive a (B,) tensor that is
a time, a noise level or EDM's ``c_noise``, and embed it with one of

* :class:`SinusoidalEmbedding`: the transformer position encoding (Vaswani et al. 2017) used
  for diffusion time steps by Ho et al. 2020; fixed geometric frequencies.
* :class:`FourierEmbedding`: Gaussian random Fourier features (Tancik et al. 2020), the
  time embedding of Song et al. 2021's NCSN++; fixed random frequencies.

and :class:`ClassEmbedding` embeds class labels with an extra *null* label for
classifier-free guidance (Ho & Salimans 2022).
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor, nn

__all__ = [
    "SinusoidalEmbedding",
    "FourierEmbedding",
    "ClassEmbedding",
    "TimeEmbeddingName",
    "TIME_EMBEDDINGS",
    "time_embedding",
    "check_time",
    "count_parameters",
]

TimeEmbeddingName = Literal["sinusoidal", "fourier"]
"""Names of the time embeddings (keys of :data:`TIME_EMBEDDINGS`)."""


def count_parameters(module: nn.Module) -> int:
    """Number of scalars in ``module``'s parameters (``sum(p.numel())``)."""
    return sum(p.numel() for p in module.parameters())


def check_time(t: object, x: Tensor) -> Tensor:
    """``t`` as a (B,) tensor in x's dtype and device; a 0-d tensor or a float is expanded.

    Raises:
        TypeError / ValueError: naming ``t``, for a non-tensor or a wrong shape.
    """
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        t = torch.tensor(float(t))
    if not isinstance(t, Tensor):
        raise TypeError(f"t must be a (batch,) tensor or a float, got {type(t).__name__}")
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != x.shape[0]):
        raise ValueError(
            f"t must have shape () or (batch,) = ({x.shape[0]},) for x of shape "
            f"{tuple(x.shape)}, got shape {tuple(t.shape)}"
        )
    return t.to(device=x.device, dtype=x.dtype).expand(x.shape[0])


def _check_dim(dim: object) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2 or dim % 2:
        raise ValueError(f"dim must be an even int >= 2, got dim={dim!r}")
    return dim


class SinusoidalEmbedding(nn.Module):
    """Sinusoidal embedding ``[sin(scale t w_k), cos(scale t w_k)]``, ``w_k = max_period^(-k /
    (dim/2))`` (Vaswani et al. 2017; Ho et al. 2020, sec. 4 and appendix B).

    The default ``scale = 1000`` maps t in [0, 1] to DDPM's step range 0..1000; use
    ``scale = 1`` for inputs that already span a wide range (EDM's ``c_noise``, step indices).

    Args:
        dim: embedding size (even).
        scale: multiplier applied to t first.
        max_period: longest period of the sinusoids (10 000).
    """

    freqs: Tensor

    def __init__(self, dim: int, *, scale: float = 1000.0, max_period: float = 10_000.0) -> None:
        super().__init__()
        self.dim = _check_dim(dim)
        self.scale = float(scale)
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / half)
        self.register_buffer("freqs", freqs.float(), persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        """(B,) -> (B, dim)."""
        arg = (self.scale * t.float())[:, None] * self.freqs
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1).to(t.dtype)


class FourierEmbedding(nn.Module):
    """Gaussian random Fourier features ``[sin(2 pi W t), cos(2 pi W t)]`` with fixed ``W ~
    N(0, scale^2)`` (Tancik et al. 2020; Song et al. 2021, NCSN++).

    The frequencies are drawn from a private generator seeded with ``seed`` (not torch's
    global one), so two embeddings built with the same arguments are equal; they are a
    persistent buffer (saved in the state dict), not a parameter.

    Args:
        dim: embedding size (even).
        scale: standard deviation of the frequencies (16 in NCSN++, for inputs of order 1).
        seed: seed of the frequencies.
    """

    freqs: Tensor

    def __init__(self, dim: int, *, scale: float = 16.0, seed: int = 0) -> None:
        super().__init__()
        self.dim = _check_dim(dim)
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(dim // 2, generator=gen) * float(scale))

    def forward(self, t: Tensor) -> Tensor:
        """(B,) -> (B, dim)."""
        arg = 2.0 * math.pi * t.float()[:, None] * self.freqs
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1).to(t.dtype)


TIME_EMBEDDINGS: dict[str, type[nn.Module]] = {
    "sinusoidal": SinusoidalEmbedding,
    "fourier": FourierEmbedding,
}
"""Time embeddings by name."""
assert set(TIME_EMBEDDINGS) == set(get_args(TimeEmbeddingName))


def time_embedding(name: str, dim: int, scale: float | None = None) -> nn.Module:
    """The time embedding ``name`` of size ``dim`` (``scale``: None for its default).

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if not isinstance(name, str) or name not in TIME_EMBEDDINGS:
        raise ValueError(f"time_embedding must be one of {sorted(TIME_EMBEDDINGS)}, got {name!r}")
    if scale is None:
        return TIME_EMBEDDINGS[name](dim)
    return TIME_EMBEDDINGS[name](dim, scale=scale)


class ClassEmbedding(nn.Module):
    """Learned class embedding with a null label for classifier-free guidance (Ho & Salimans
    2022): labels ``0 .. num_classes - 1`` are classes, ``num_classes`` is the null
    (unconditional) label, and ``y = None`` means null for the whole batch.

    Args:
        num_classes: number of real classes (>= 1).
        dim: embedding size.
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got num_classes={num_classes!r}")
        self.num_classes = num_classes
        self.embedding = nn.Embedding(num_classes + 1, dim)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def forward(self, y: Tensor | None, batch: int, device: torch.device) -> Tensor:
        """Embed labels ``y`` of shape (B,) (or None: null), -> (B, dim).

        Raises:
            ValueError: for labels of the wrong shape or (on CPU) outside [0, num_classes].
        """
        if y is None:
            y = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        if not isinstance(y, Tensor) or y.is_floating_point() or y.dtype == torch.bool:
            raise ValueError("y must be an integer tensor of class labels (or None for null)")
        if y.shape != (batch,):
            raise ValueError(f"y must have shape (batch,) = ({batch},), got {tuple(y.shape)}")
        if (
            y.device.type == "cpu"
            and y.numel()
            and (int(y.min()) < 0 or int(y.max()) > self.num_classes)
        ):
            raise ValueError(
                f"y must lie in [0, num_classes] = [0, {self.num_classes}] ({self.num_classes} is "
                f"the null label), got values in [{int(y.min())}, {int(y.max())}]"
            )
        return self.embedding(y.to(device=device, dtype=torch.long))
