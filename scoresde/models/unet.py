"""A DDPM-style U-Net (Ho et al. 2020, appendix B) for images from 8x8 to 64x64 and beyond."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scoresde.models.embeddings import ClassEmbedding, check_time, count_parameters
from scoresde.models.embeddings import time_embedding as make_time_embedding

__all__ = ["UNet"]


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, channels), channels)


def _zero(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters, so a residual branch starts as the identity (as DDPM)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Residual block: GroupNorm, SiLU, 3x3 conv, + projected embedding, GroupNorm, SiLU,
    dropout, 3x3 conv (zero-initialised), with a 1x1 skip when the width changes."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = _norm(c_in, groups)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = _norm(c_out, groups)
        self.drop = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Multi-head self-attention over the spatial positions (Ho et al. 2020 use it at 16x16),
    GroupNorm first, output projection zero-initialised, residual."""

    def __init__(self, channels: int, heads: int, groups: int) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by attn_heads ({heads})")
        self.heads = heads
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(
            q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2)
        )  # (b, heads, hw, c / heads)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """3x3 convolution with stride 2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """DDPM U-Net ``net(x, t, y=None)`` (Ho et al. 2020, appendix B; the PixelCNN++ backbone).

    Levels ``i = 0 .. L-1`` with ``L = len(channel_mult)`` work at resolution ``image_size /
    2^i`` with ``base_channels * channel_mult[i]`` channels: ``num_res_blocks`` residual blocks
    each (GroupNorm, SiLU, the time embedding added, dropout), self-attention after them at the
    resolutions in ``attn_resolutions``, and a strided-conv downsampling between levels; a
    middle of ResBlock-Attention-ResBlock; the mirror-image upsampling path with skip
    connections (``num_res_blocks + 1`` blocks per level). The time (or noise level) enters
    through a sinusoidal embedding and a 2-layer MLP; with ``num_classes``, a learned class
    embedding (with the null label ``num_classes`` for classifier-free guidance, Ho &
    Salimans 2022) is added to it. The last conv of every residual branch and the output conv
    are zero-initialised, so the untrained network outputs 0.

    The defaults (1.1M parameters) suit 8x8 images (scikit-learn's digits) on a CPU;
    e.g. ``UNet(image_size=32, in_channels=3, base_channels=128, channel_mult=(1, 2, 2, 2),
    num_res_blocks=2, attn_resolutions=(16,))`` is DDPM's CIFAR-10 model (35.7M).

    Args:
        image_size: side of the (square) training images; must be divisible by
            ``2^(L-1)``. Inputs of other sizes divisible by ``2^(L-1)`` also work (attention
            stays at the same levels).
        in_channels: channels of x.
        out_channels: channels of the output (None: in_channels).
        base_channels: channels at level 0.
        channel_mult: channel multiplier of each level (its length sets the depth).
        num_res_blocks: residual blocks per level on the way down.
        attn_resolutions: resolutions (sides) at which self-attention is used; each must be
            one of the levels' resolutions.
        attn_heads: attention heads.
        dropout: dropout rate in the residual blocks.
        num_classes: number of classes for class conditioning (None: unconditional).
        time_embedding: ``"sinusoidal"`` (DDPM) or ``"fourier"``.
        time_scale: the embedding's input scale (None: its default, for t in [0, 1]).
        groups: GroupNorm groups (capped at the channel count).
    """

    def __init__(
        self,
        *,
        image_size: int = 8,
        in_channels: int = 1,
        out_channels: int | None = None,
        base_channels: int = 32,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        attn_resolutions: Sequence[int] = (4,),
        attn_heads: int = 1,
        dropout: float = 0.1,
        num_classes: int | None = None,
        time_embedding: str = "sinusoidal",
        time_scale: float | None = None,
        groups: int = 8,
    ) -> None:
        super().__init__()
        for name, value in (
            ("image_size", image_size),
            ("in_channels", in_channels),
            ("base_channels", base_channels),
            ("num_res_blocks", num_res_blocks),
            ("attn_heads", attn_heads),
            ("groups", groups),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {name}={value!r}")
        mult = tuple(channel_mult)
        if not mult or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in mult):
            raise ValueError(f"channel_mult must be a non-empty tuple of ints >= 1, got {mult!r}")
        self.factor = 2 ** (len(mult) - 1)
        if image_size % self.factor:
            raise ValueError(
                f"image_size must be divisible by 2^(len(channel_mult) - 1) = {self.factor}, got "
                f"image_size={image_size}; use fewer levels (a shorter channel_mult)"
            )
        resolutions = [image_size // 2**i for i in range(len(mult))]
        attn = set(attn_resolutions)
        if not attn <= set(resolutions):
            raise ValueError(
                f"attn_resolutions must be among the levels' resolutions {resolutions} for "
                f"image_size={image_size} and {len(mult)} levels, got {sorted(attn)}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got dropout={dropout!r}")
        self.image_size = image_size
        self.in_channels = in_channels
        self.out_channels = out_channels if out_channels is not None else in_channels
        self.num_classes = num_classes
        ch = base_channels
        emb_dim = 4 * ch
        self.time_embed = nn.Sequential(
            make_time_embedding(time_embedding, ch, time_scale),
            nn.Linear(ch, emb_dim),
            nn.SiLU(),
            nn.Linear(emb_dim, emb_dim),
        )
        self.class_embed = None if num_classes is None else ClassEmbedding(num_classes, emb_dim)

        def res(c_in: int, c_out: int) -> ResBlock:
            return ResBlock(c_in, c_out, emb_dim, dropout, groups)

        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        # down path: record the channels of every skip connection
        self.down = nn.ModuleList()
        skips = [ch]
        c = ch
        for i, m in enumerate(mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(c, base_channels * m)]
                c = base_channels * m
                if resolutions[i] in attn:
                    layers.append(AttnBlock(c, attn_heads, groups))
                self.down.append(nn.ModuleList(layers))
                skips.append(c)
            if i < len(mult) - 1:
                self.down.append(Downsample(c))
                skips.append(c)
        self.mid = nn.ModuleList([res(c, c), AttnBlock(c, attn_heads, groups), res(c, c)])
        # up path: num_res_blocks + 1 blocks per level, each eating one skip
        self.up = nn.ModuleList()
        for i in reversed(range(len(mult))):
            for _ in range(num_res_blocks + 1):
                layers = [res(c + skips.pop(), base_channels * mult[i])]
                c = base_channels * mult[i]
                if resolutions[i] in attn:
                    layers.append(AttnBlock(c, attn_heads, groups))
                self.up.append(nn.ModuleList(layers))
            if i > 0:
                self.up.append(Upsample(c))
        assert not skips
        self.norm_out = _norm(c, groups)
        self.conv_out = _zero(nn.Conv2d(c, self.out_channels, 3, padding=1))

    @property
    def n_params(self) -> int:
        """Number of trainable scalars."""
        return count_parameters(self)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Evaluate the network.

        Args:
            x: (B, in_channels, H, W), H and W divisible by ``2^(L-1)``.
            t: (B,) times or noise levels (a 0-d tensor or float is broadcast).
            y: (B,) int labels in [0, num_classes] (num_classes = null) or None (null);
                only for a class-conditional network.

        Returns:
            (B, out_channels, H, W), x's dtype.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        if x.shape[2] % self.factor or x.shape[3] % self.factor:
            raise ValueError(
                f"H and W must be divisible by {self.factor} (2^(levels - 1)), got "
                f"{tuple(x.shape[2:])}"
            )
        emb = self.time_embed(check_time(t, x))
        if self.class_embed is not None:
            emb = emb + self.class_embed(y, x.shape[0], x.device)
        elif y is not None:
            raise ValueError("y was given, but this network is unconditional (num_classes=None)")
        h = self.conv_in(x)
        hs = [h]
        for layer in self.down:
            h = _apply(layer, h, emb)
            hs.append(h)
        for layer in self.mid:
            h = _apply(layer, h, emb)
        for layer in self.up:
            if isinstance(layer, nn.ModuleList):
                h = torch.cat([h, hs.pop()], dim=1)
            h = _apply(layer, h, emb)
        return self.conv_out(F.silu(self.norm_out(h)))


def _apply(layer: nn.Module, h: Tensor, emb: Tensor) -> Tensor:
    if isinstance(layer, nn.ModuleList):
        for sub in layer:
            h = _apply(sub, h, emb)
        return h
    if isinstance(layer, ResBlock):
        return layer(h, emb)
    return layer(h)
