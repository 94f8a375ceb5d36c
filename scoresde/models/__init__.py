"""Score networks that know nothing about SDEs: ``net(x, t_or_noise_level, y=None)``.

:class:`MLP` for vectors (tabular and 2-D toy data), :class:`UNet` (DDPM style) for images;
both optionally class-conditional with a null label for classifier-free guidance, and both
report their size as ``n_params``. Wrap one in :class:`scoresde.ScoreModel` to use it.
"""

from scoresde.models.embeddings import ClassEmbedding as ClassEmbedding
from scoresde.models.embeddings import FourierEmbedding as FourierEmbedding
from scoresde.models.embeddings import SinusoidalEmbedding as SinusoidalEmbedding
from scoresde.models.embeddings import count_parameters as count_parameters
from scoresde.models.mlp import MLP as MLP
from scoresde.models.unet import UNet as UNet

__all__ = [
    "MLP",
    "UNet",
    "SinusoidalEmbedding",
    "FourierEmbedding",
    "ClassEmbedding",
    "count_parameters",
]
