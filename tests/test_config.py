"""TOML configurations: the shipped files, validation errors, typed overrides, round trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from scoresde.config import (
    SECTIONS,
    Config,
    ConfigError,
    apply_overrides,
    dumps,
    from_json,
    load_config,
    loads,
    to_json,
)

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))


def test_the_shipped_configs_exist() -> None:
    names = {p.name for p in CONFIGS}
    assert {"two_moons.toml", "digits.toml", "mnist5k.toml", "images32_gpu.toml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_is_valid_and_round_trips(path: Path) -> None:
    cfg = load_config(path, ["data.path=/some/where"] if "images32" in path.name else [])
    assert isinstance(cfg, Config)
    assert loads(dumps(cfg)) == cfg
    assert from_json(to_json(cfg)) == cfg


def test_a_required_value_can_come_from_an_override() -> None:
    path = next(p for p in CONFIGS if p.name == "images32_gpu.toml")
    with pytest.raises(ConfigError, match="data.path is required"):
        load_config(path)
    assert load_config(path, ["data.path=/data/x"]).data.path == "/data/x"


def test_defaults_round_trip_with_optional_fields() -> None:
    cfg = Config()
    assert cfg.sde.T is None and cfg.train.max_minutes is None
    text = dumps(cfg)
    assert "# T = none" in text
    assert loads(text) == cfg


def test_unknown_key_names_it_and_lists_the_valid_ones(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[optim]\nlrr = 1e-3\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    msg = str(exc.value)
    assert "optim.lrr" in msg and str(p) in msg
    for valid in ("lr", "betas", "warmup_steps", "grad_clip", "ema_decay"):
        assert valid in msg


def test_unknown_section_lists_the_sections() -> None:
    with pytest.raises(ConfigError, match=r"unknown section \[optimizer\]") as exc:
        loads("[optimizer]\nlr = 1.0\n")
    for name in SECTIONS:
        assert name in str(exc.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[optim]\nlr = "fast"\n', "optim.lr must be a float"),
        ("[train]\nsteps = 10.5\n", "train.steps must be an int"),
        ("[train]\nsteps = true\n", "train.steps must be an int"),
        ("[train]\nresume = 1\n", "train.resume must be a bool"),
        ('[sde]\nname = "vpp"\n', "sde.name must be one of 'vp', 'subvp'"),
        ("[model]\nchannel_mult = [1, 2.5]\n", "model.channel_mult must be a list of ints"),
        ("[optim]\nbetas = [0.9]\n", "optim.betas must be a list of 2 floats"),
        ("[optim]\nlr = -1.0\n", "optim.lr must be > 0"),
        ('[sde]\nname = "ve"\nbeta_min = 0.1\n', "sde.beta_min does not apply"),
        ('[data]\nname = "npz"\n', "data.path is required"),
        ('[model]\nprecond = "edm"\n', "prediction='x0'"),
        ("[sample]\nn = -4\n", "sample.n must be >= 1, got -4"),
        ("[sample]\nnfe = 0\n", "sample.nfe must be >= 1, got 0"),
        ('[sample]\nmethod = "foo"\n', "sample.method must be a registered solver"),
        ('[eval]\nmethod = "foo"\n', "eval.method must be a registered solver"),
        ('[eval]\node_method = "euler"\n', "eval.ode_method must be an adaptive ODE method"),
        ('[eval]\node_method = "adaptive_sde"\n', "eval.ode_method must be an adaptive ODE"),
        ("[eval]\nrtol = -1.0\n", "eval.rtol must be finite and > 0"),
        ("[eval]\nelbo_steps = 0\n", "eval.elbo_steps must be >= 1"),
        ("[optim\n", "invalid TOML"),
    ],
)
def test_wrong_values_are_errors_naming_the_key(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        loads(text)
    assert fragment in str(exc.value)


def test_overrides_are_typed_by_the_field() -> None:
    cfg = apply_overrides(
        Config(),
        [
            "optim.lr=1e-3",
            "train.steps=7",
            "model.channel_mult=[1,2]",
            "data.name=digits",  # a bare string
            "train.resume=false",
            "train.max_minutes=2",  # an int where a float is expected
            "sde.T=none",
            "train.out_dir=runs/a=b",  # '=' inside the value
        ],
    )
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.train.steps == 7
    assert cfg.model.channel_mult == (1, 2)
    assert cfg.data.name == "digits"
    assert cfg.train.resume is False
    assert cfg.train.max_minutes == 2.0 and isinstance(cfg.train.max_minutes, float)
    assert cfg.sde.T is None
    assert cfg.train.out_dir == "runs/a=b"


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("optim.lr", "must look like section.key=value"),
        ("lr=1", "must be section.key"),
        ("optimizer.lr=1", "unknown section 'optimizer'"),
        ("optim.rate=1", "valid keys of [optim]: lr, betas"),
        ("train.steps=many", "train.steps must be an int"),
        ("train.steps=none", "train.steps must be an int"),
    ],
)
def test_bad_overrides(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        apply_overrides(Config(), [override])
    assert fragment in str(exc.value)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/nonexistent/config.toml")


def test_sections_are_frozen() -> None:
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.optim.lr = 1.0  # type: ignore[misc]
