"""Tests of the score networks: shapes, gradients, parameter counts, class conditioning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import scoresde as sd
from scoresde.models import ClassEmbedding, FourierEmbedding, SinusoidalEmbedding, count_parameters

UNET_CONFIGS = {
    8: dict(image_size=8),  # the defaults: 8x8 digits
    16: dict(image_size=16, base_channels=16, attn_resolutions=(8,)),
    32: dict(image_size=32, base_channels=16, channel_mult=(1, 2, 2, 2), attn_resolutions=(16,)),
}


@pytest.fixture(autouse=True)
def _single_thread():
    """These networks are small: one intra-op thread is faster than several, and much faster
    when the cores are shared (thread oversubscription)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _unzero(net: nn.Module) -> None:
    """Give the zero-initialised layers (output convs of residual branches, as in DDPM) small
    random weights: at exactly zero they block the gradient to the layers before them."""
    g = _gen(123)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.add_(0.01 * torch.randn(p.shape, generator=g))


def _assert_every_parameter_gets_gradient(net: nn.Module) -> None:
    for name, p in net.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got a zero gradient"


@pytest.mark.parametrize("conditional", [False, True], ids=["uncond", "cond"])
@pytest.mark.parametrize("size", sorted(UNET_CONFIGS))
def test_unet_output_shape_and_gradients(size: int, conditional: bool) -> None:
    torch.manual_seed(0)
    net = sd.UNet(**UNET_CONFIGS[size], num_classes=3 if conditional else None)
    _unzero(net)
    x = torch.randn(4, 1, size, size, generator=_gen(0))
    t = torch.rand(4, generator=_gen(1))
    y = torch.tensor([0, 2, 3, 1]) if conditional else None  # 3 = the null label
    out = net(x, t, y)
    assert out.shape == x.shape and out.dtype == x.dtype
    out.square().mean().backward()
    _assert_every_parameter_gets_gradient(net)
    assert net.n_params == sum(p.numel() for p in net.parameters()) == count_parameters(net)


def test_unet_default_size_suits_cpu_training() -> None:
    assert 100_000 <= sd.UNet().n_params <= 1_500_000


def test_unet_untrained_output_is_zero_and_time_matters_after_training_step() -> None:
    torch.manual_seed(0)
    net = sd.UNet()
    x = torch.randn(2, 1, 8, 8, generator=_gen(0))
    assert not net(x, torch.rand(2)).any()  # zero-initialised output conv (DDPM)
    _unzero(net)
    net.eval()
    a = net(x, torch.full((2,), 0.1))
    b = net(x, torch.full((2,), 0.9))
    assert not torch.allclose(a, b)


def test_unet_works_at_64x64_and_rgb() -> None:
    torch.manual_seed(0)
    net = sd.UNet(
        image_size=64, in_channels=3, base_channels=8, channel_mult=(1, 1, 2, 2, 2),
        attn_resolutions=(16,), dropout=0.0,
    )  # fmt: skip
    x = torch.randn(1, 3, 64, 64, generator=_gen(0))
    assert net(x, torch.rand(1)).shape == x.shape


def test_unet_null_label_is_unconditional() -> None:
    """y=None, and the explicit null label num_classes, give the same output; a real label
    gives a different one (once the class embedding matters)."""
    torch.manual_seed(0)
    net = sd.UNet(num_classes=10, dropout=0.0)
    _unzero(net)
    net.eval()
    x = torch.randn(3, 1, 8, 8, generator=_gen(0))
    t = torch.rand(3, generator=_gen(1))
    null = torch.full((3,), 10)
    torch.testing.assert_close(net(x, t), net(x, t, null))
    assert not torch.allclose(net(x, t, torch.tensor([1, 2, 3])), net(x, t, null))


def test_unet_validates_its_configuration_and_inputs() -> None:
    with pytest.raises(ValueError, match="divisible"):
        sd.UNet(image_size=12, channel_mult=(1, 2, 2, 2))
    with pytest.raises(ValueError, match="attn_resolutions"):
        sd.UNet(image_size=8, attn_resolutions=(16,))
    net = sd.UNet(num_classes=2)
    with pytest.raises(ValueError, match="y must lie"):
        net(torch.randn(2, 1, 8, 8), torch.rand(2), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="t must have shape"):
        net(torch.randn(2, 1, 8, 8), torch.rand(3))
    with pytest.raises(ValueError, match="unconditional"):
        sd.UNet()(torch.randn(2, 1, 8, 8), torch.rand(2), torch.tensor([0, 1]))


@pytest.mark.parametrize("embedding", ["sinusoidal", "fourier"])
@pytest.mark.parametrize("conditional", [False, True], ids=["uncond", "cond"])
def test_mlp_shape_gradients_and_counts(embedding: str, conditional: bool) -> None:
    torch.manual_seed(0)
    net = sd.MLP(
        2, width=32, depth=2, time_embedding=embedding, num_classes=4 if conditional else None
    )
    x = torch.randn(8, 2, generator=_gen(0))
    y = torch.tensor([0, 1, 2, 3, 4, 4, 0, 1]) if conditional else None  # 4 = null
    out = net(x, torch.rand(8, generator=_gen(1)), y)
    assert out.shape == x.shape
    out.square().mean().backward()
    _assert_every_parameter_gets_gradient(net)
    assert net.n_params == sum(p.numel() for p in net.parameters())


def test_mlp_flattens_any_sample_shape_and_accepts_scalar_time() -> None:
    net = sd.MLP(6, width=16, depth=1)
    x = torch.randn(3, 2, 3)
    assert net(x, torch.tensor(0.5)).shape == x.shape
    with pytest.raises(ValueError, match="features"):
        net(torch.randn(3, 5), torch.rand(3))


def test_mlp_null_label() -> None:
    torch.manual_seed(0)
    net = sd.MLP(2, width=16, depth=1, num_classes=3)
    x, t = torch.randn(4, 2), torch.rand(4)
    torch.testing.assert_close(net(x, t), net(x, t, torch.full((4,), 3)))
    assert not torch.allclose(net(x, t, torch.zeros(4, dtype=torch.long)), net(x, t))


def test_mlp_as_score_model_for_sampling_and_losses() -> None:
    torch.manual_seed(0)
    sde = sd.VPSDE()
    model = sd.ScoreModel(sd.MLP(2, width=16, depth=1), sde, prediction="eps")
    x0 = torch.randn(4, 2, generator=_gen(0))
    assert torch.isfinite(sd.dsm_loss(model, x0, generator=_gen(1)).loss)


def test_embeddings() -> None:
    t = torch.tensor([0.0, 0.25, 1.0])
    sin = SinusoidalEmbedding(8)(t)
    assert sin.shape == (3, 8)
    torch.testing.assert_close(sin[0], torch.tensor([0.0] * 4 + [1.0] * 4))  # sin 0, cos 0
    # sin^2 + cos^2 = 1 for every frequency
    torch.testing.assert_close(sin[:, :4] ** 2 + sin[:, 4:] ** 2, torch.ones(3, 4))
    a, b = FourierEmbedding(16, seed=3), FourierEmbedding(16, seed=3)
    torch.testing.assert_close(a(t), b(t))  # frequencies from their own seeded generator
    assert "freqs" in a.state_dict() and count_parameters(a) == 0
    emb = ClassEmbedding(5, 4)
    assert emb.null_label == 5
    torch.testing.assert_close(
        emb(None, 2, torch.device("cpu")), emb(torch.tensor([5, 5]), 2, torch.device("cpu"))
    )
    with pytest.raises(ValueError, match="time_embedding"):
        sd.MLP(2, time_embedding="learned")
