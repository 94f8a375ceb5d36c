"""Sample distances: sliced W2 against closed forms, MMD detects shifts, floors and errors."""

from __future__ import annotations

import math

import pytest
import torch

import scoresde as sd
from scoresde.metrics import median_distance, mmd, noise_floor, sliced_wasserstein


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_sliced_w2_of_a_translation_is_its_projected_length() -> None:
    # W2 between x and x + c along direction u is |<u, c>| exactly; averaged over the sphere
    # E[<u, c>^2] = |c|^2 / D.
    x = torch.randn(500, 4, generator=_g(1), dtype=torch.float64)
    c = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    sw = sliced_wasserstein(x, x + c, n_projections=20000, generator=_g(2))
    assert sw == pytest.approx(float(c.norm()) / 2.0, rel=0.02)


def test_sliced_w2_is_zero_for_permuted_copies_and_symmetric() -> None:
    x = torch.randn(300, 3, generator=_g(3))
    y = torch.randn(300, 3, generator=_g(4))
    perm = torch.randperm(300, generator=_g(5))
    assert sliced_wasserstein(x, x[perm], generator=_g(6)) == pytest.approx(0.0, abs=1e-12)
    assert sliced_wasserstein(x, y, generator=_g(7)) == pytest.approx(
        sliced_wasserstein(y, x, generator=_g(7)), rel=1e-12
    )


def test_sliced_w2_unequal_sizes_matches_equal_sizes_for_duplicated_sample() -> None:
    x = torch.randn(200, 2, generator=_g(8))
    y = torch.randn(200, 2, generator=_g(9)) + 0.7
    a = sliced_wasserstein(x, y, generator=_g(10))
    b = sliced_wasserstein(x, torch.cat([y, y]), generator=_g(10))
    assert b == pytest.approx(a, rel=1e-9)


def test_sliced_w2_scales_with_the_data() -> None:
    x = torch.randn(400, 5, generator=_g(11), dtype=torch.float64)
    y = torch.randn(400, 5, generator=_g(12), dtype=torch.float64) * 2
    assert sliced_wasserstein(3 * x, 3 * y, generator=_g(0)) == pytest.approx(
        3 * sliced_wasserstein(x, y, generator=_g(0)), rel=1e-9
    )


def test_mmd_separates_a_shift_from_the_noise_floor() -> None:
    gmm = sd.GaussianMixture(
        torch.tensor([0.5, 0.5]),
        torch.tensor([[-1.0, 0.0], [1.0, 0.0]]),
        torch.eye(2).expand(2, 2, 2) * 0.1,
    )

    def draw(n: int, g: torch.Generator) -> torch.Tensor:
        return gmm.sample(n, g)

    sw0, mm0 = noise_floor(draw, 400, repeats=3)
    x, y = gmm.sample(400, _g(20)), gmm.sample(400, _g(21))
    shifted = x + torch.tensor([1.0, 0.0])
    assert mmd(shifted, y) > 3 * mm0
    assert sliced_wasserstein(shifted, y, generator=_g(1)) > 3 * sw0
    # and two exact samples sit near the floor
    assert mmd(x, y) < 3 * mm0 + 1e-3


def test_mmd_is_invariant_to_a_common_rigid_motion_with_median_scale() -> None:
    x = torch.randn(150, 3, generator=_g(30), dtype=torch.float64)
    y = torch.randn(150, 3, generator=_g(31), dtype=torch.float64) + 0.3
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=_g(32), dtype=torch.float64))
    shift = torch.tensor([5.0, -1.0, 2.0], dtype=torch.float64)
    assert mmd(x @ q + shift, y @ q + shift) == pytest.approx(mmd(x, y), rel=1e-9)


def test_4d_states_are_flattened() -> None:
    x = torch.randn(50, 1, 2, 2, generator=_g(40))
    assert sliced_wasserstein(x, x.flatten(1) + 1.0, generator=_g(0)) > 0
    assert math.isfinite(mmd(x, x.flatten(1) + 1.0))


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (torch.zeros(1, 2), torch.zeros(5, 2), "n >= 2"),
        (torch.zeros(5, 2), torch.zeros(5, 3), "same number of coordinates"),
        (torch.full((5, 2), float("nan")), torch.zeros(5, 2), "NaN"),
    ],
)
def test_bad_input_is_named(x: torch.Tensor, y: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sliced_wasserstein(x, y)
    with pytest.raises(ValueError, match=match):
        mmd(x, y)


def test_bad_options_are_named() -> None:
    x = torch.zeros(5, 2)
    with pytest.raises(ValueError, match="n_projections"):
        sliced_wasserstein(x, x, n_projections=0)
    with pytest.raises(ValueError, match="bandwidths"):
        mmd(x, x, bandwidths=(0.0,))
    with pytest.raises(TypeError, match="torch.Tensor"):
        mmd([[0.0]], x)  # type: ignore[arg-type]


def test_median_distance_is_the_median_pairwise_distance() -> None:
    # points 0, 1, 3 on a line: pairwise distances 1, 2, 3
    x = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
    assert median_distance(x) == 2.0
    assert median_distance(torch.cat([x, torch.full((5, 1), 9.0)]), max_points=3) == 2.0
    assert median_distance(torch.zeros(4, 1, 2, 2)) == 1.0  # all equal: the fallback scale
