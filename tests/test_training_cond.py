"""Class-conditional training for classifier-free guidance (Ho & Salimans 2022): the
configuration (``model.num_classes``, ``loss.label_dropout``), the labels reaching the network
through label dropout, checkpoints that rebuild a conditional network."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import scoresde as sd
from scoresde import checkpoint as ck
from scoresde.config import Config, ConfigError, apply_overrides, dumps, load_config, loads
from scoresde.training import Trainer, build_network, load_model, train

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("keep_global_rng")


def tiny(out_dir: Path, *extra: str) -> Config:
    """A class-conditional two-moons model small enough for milliseconds per step."""
    return apply_overrides(
        Config(),
        [
            "data.name=two_moons",
            "data.n_train=256",
            "data.n_test=32",
            "model.width=16",
            "model.depth=1",
            "model.emb_dim=8",
            "model.num_classes=2",
            "train.steps=4",
            "train.batch_size=64",
            "train.ckpt_every=2",
            "train.threads=1",
            "train.progress=false",
            "train.tensorboard=false",
            "eval.n_samples=6",
            "eval.nfe=3",
            "eval.method=euler",
            "eval.likelihood=false",
            "eval.elbo=false",
            f"train.out_dir={out_dir}",
            *extra,
        ],
    )


# --------------------------------------------------------------------------- configuration


def test_num_classes_config_values() -> None:
    base = Config()
    assert base.model.num_classes is None and base.label_dropout == 0.0
    cond = apply_overrides(base, ["model.num_classes=10"])
    assert cond.model.num_classes == 10
    assert cond.label_dropout == 0.1  # the default of a conditional model
    assert apply_overrides(cond, ["loss.label_dropout=0.25"]).label_dropout == 0.25
    assert apply_overrides(cond, ["loss.label_dropout=0"]).label_dropout == 0.0
    # 0 and none both mean unconditional; 0 is stored as None, so the TOML round-trips
    for spelling in ("0", "none"):
        unc = apply_overrides(cond, [f"model.num_classes={spelling}"])
        assert unc.model.num_classes is None
        assert loads(dumps(unc)) == unc
    assert loads(dumps(cond)) == cond


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["model.num_classes=-1"], r"model\.num_classes must be an int >= 1 .* got -1"),
        (["model.num_classes=2.5"], r"model\.num_classes must be an int or none, got 2\.5"),
        (["model.num_classes=ten"], r"model\.num_classes must be an int or none, got 'ten'"),
        (["model.n_classes=10"], r"unknown key model\.n_classes; valid keys .*num_classes"),
        (["model.num_classes=3", "loss.label_dropout=1.0"], r"label_dropout must lie in \[0, 1\)"),
        (["model.num_classes=3", "loss.label_dropout=-0.1"], r"label_dropout must lie in \[0, 1\)"),
        (["loss.label_dropout=0.2"], r"label_dropout=0\.2 applies to a class-conditional model"),
        (["data.labels_key=y"], r"data\.labels_key applies to data\.name='npz' only"),
    ],
)
def test_invalid_conditional_configs(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        apply_overrides(Config(), overrides)


def test_invalid_num_classes_in_a_file_names_the_file(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[model]\nnum_classes = -2\n")
    with pytest.raises(ConfigError, match=r"c\.toml: model\.num_classes must be"):
        load_config(f)
    f.write_text("[loss]\nlabel_dropout = 0.1\n")
    with pytest.raises(ConfigError, match=r"c\.toml: loss\.label_dropout=0\.1 applies"):
        load_config(f)


def test_digits_cond_config() -> None:
    cfg = load_config(REPO / "configs" / "digits_cond.toml")
    assert cfg.data.name == "digits"
    assert cfg.model.num_classes == 10 and cfg.label_dropout == 0.1
    net = build_network(cfg.model, (1, 8, 8), sd.VPSDE())
    assert isinstance(net, sd.MLP) and net.num_classes == 10


def test_labels_must_exist_and_fit(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'swiss_roll' has no labels; labelled datasets: "):
        Trainer(tiny(tmp_path, "data.name=swiss_roll"))
    with pytest.raises(ConfigError, match=r"labels of 'eight_gaussians' lie in \[0, 7\]"):
        Trainer(tiny(tmp_path, "data.name=eight_gaussians", "model.num_classes=5"))


def test_npz_labels_key(tmp_path: Path) -> None:
    g = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x=g.normal(size=(50, 3)).astype(np.float32), y=np.arange(50) % 4)
    cfg = tiny(
        tmp_path / "run",
        "data.name=npz",
        f"data.path={path}",
        "data.key=x",
        "data.labels_key=y",
        "model.num_classes=4",
        "train.batch_size=16",
    )
    trainer = Trainer(cfg)
    assert trainer.train_y is not None
    assert trainer.train_y.shape == (trainer.dataset.train.shape[0],)
    assert set(trainer.train_y.tolist()) == {0, 1, 2, 3}


# --------------------------------------------------------------------------- labels reach the net


class Spy(nn.Module):
    """Records the labels every call of the wrapped network receives."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.seen: list[Tensor] = []

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        assert y is not None, "the conditional trainer called the network without labels"
        self.seen.append(y.clone())
        return self.net(x, t, y=y)


def test_training_labels_reach_the_network_through_label_dropout(tmp_path: Path) -> None:
    trainer = Trainer(tiny(tmp_path, "loss.label_dropout=0.3"))
    spy = Spy(trainer.net)
    trainer.ddp = spy
    for _ in range(3):
        step = trainer.step
        trainer.train_step()
        labels = trainer.batch_labels(step)
        assert labels is not None
        # exactly the batch's labels with label dropout drawn first from the step's generator
        expected = sd.drop_labels(labels, 0.3, 2, generator=trainer.step_generator(step))
        assert torch.equal(spy.seen[-1], expected)
        assert torch.equal(labels, trainer.dataset.train_labels[trainer.batches.indices(step)])
    assert len(spy.seen) == 3
    assert trainer.step == 3


def test_label_dropout_rate(tmp_path: Path) -> None:
    """The fraction of null labels seen by the network is p, within 4 binomial std."""
    p, n = 0.3, 4000
    trainer = Trainer(tiny(tmp_path, f"loss.label_dropout={p}"))
    spy = Spy(trainer.net)
    trainer.ddp = spy
    y = torch.arange(n) % 2
    x0 = trainer.dataset.train[:1].expand(n, 2).contiguous()
    trainer.forward_backward(x0, torch.Generator().manual_seed(1), y=y)
    seen = spy.seen[0]
    null = seen == 2
    assert abs(float(null.double().mean()) - p) < 4 * math.sqrt(p * (1 - p) / n)
    assert torch.equal(seen[~null], y[~null])  # kept labels are unchanged
    # gradients reach the class embedding, its null row included
    grad = trainer.net.class_embed.embedding.weight.grad
    assert grad is not None and bool((grad.abs().sum(1) > 0).all())


def test_forward_backward_needs_labels_exactly_when_conditional(tmp_path: Path) -> None:
    cond = Trainer(tiny(tmp_path / "c"))
    x0 = cond.batch(0)
    with pytest.raises(ValueError, match=r"y \(the batch's labels\) is required"):
        cond.forward_backward(x0, cond.step_generator(0))
    unc = Trainer(tiny(tmp_path / "u", "model.num_classes=0"))
    assert unc.batch_labels(0) is None
    with pytest.raises(ValueError, match="model.num_classes=None"):
        unc.forward_backward(x0, unc.step_generator(0), y=torch.zeros(64, dtype=torch.long))


def test_zero_label_dropout_warns_when_evaluating_the_null_model(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="never trains the null label"):
        Trainer(tiny(tmp_path, "loss.label_dropout=0", "eval.likelihood=true"))


# --------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("cond") / "run"
    with torch.random.fork_rng(devices=[]):
        res = train(tiny(run))
    assert res.step == 4 and res.evaluation is not None
    return run


def test_checkpoint_rebuilds_the_conditional_network(cond_run: Path) -> None:
    loaded = load_model(cond_run)
    assert loaded.num_classes == 2
    assert isinstance(loaded.net, sd.MLP) and loaded.net.num_classes == 2
    assert loaded.net.class_embed is not None
    assert loaded.net.class_embed.embedding.weight.shape[0] == 3  # two classes + null
    raw = ck.load_checkpoint(cond_run)
    assert json.loads(raw.metadata["num_classes"]) == 2
    assert json.loads(raw.metadata["label_dropout"]) == 0.1
    for k, v in loaded.net.state_dict().items():
        assert torch.equal(v, raw.ema[k]), k  # the EMA weights, class embedding included


def test_loaded_conditional_model_samples_by_class(cond_run: Path) -> None:
    loaded = load_model(cond_run)
    g = torch.Generator().manual_seed(0)
    model = loaded.guided(1, 2.0)
    assert isinstance(model, sd.CFGModel) and model.batch_multiplier == 2
    res = sd.sample(model, "euler", 4, shape=(5, 2), generator=g)
    assert res.x.shape == (5, 2) and bool(torch.isfinite(res.x).all())
    # guided with w = 0 is the network bound to the label; w = -1 the null-label model
    x = torch.randn(5, 2, generator=g)
    t = torch.full((5,), 0.5)
    y1 = torch.ones(5, dtype=torch.long)
    assert torch.allclose(loaded.guided(1, 0.0).eps(x, t), loaded.net(x, t, y=y1), atol=1e-6)
    assert torch.allclose(loaded.guided(1, -1.0).eps(x, t), loaded.model.eps(x, t), atol=1e-6)
    for bad in (2, -1):
        with pytest.raises(ValueError, match=r"y must be a class in \[0, 2\)"):
            loaded.guided(bad)
    with pytest.raises(ValueError, match=r"y must hold classes in \[0, 2\)"):
        loaded.guided(torch.tensor([0, 1, 2]))


def test_edm_preconditioning_passes_labels_to_the_network(tmp_path: Path) -> None:
    """A class-conditional network under EDM preconditioning: the labels reach the raw network
    through EDMPrecond, and a trained checkpoint samples by class under guidance."""
    cfg = tiny(tmp_path / "run", "model.precond=edm", "model.prediction=x0")
    net = build_network(cfg.model, (2,), sd.VPSDE())
    assert isinstance(net, sd.EDMPrecond) and net.num_classes == 2
    x, t = torch.randn(4, 2), torch.full((4,), 0.3)
    y0, y1 = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    with torch.no_grad():  # a nonzero class embedding, so that the label changes the output
        net.net.class_embed.embedding.weight.normal_()
        assert not torch.allclose(net(x, t, y=y0), net(x, t, y=y1))
        # the same as preconditioning the raw network bound to the label
        bound = sd.EDMPrecond(lambda xi, c: net.net(xi, c, y=y1), sd.VPSDE())
        torch.testing.assert_close(net(x, t, y=y1), bound(x, t))
    assert sd.EDMPrecond(lambda xi, c: xi, sd.VPSDE()).num_classes is None
    with torch.random.fork_rng(devices=[]):
        res = train(cfg)
    assert res.step == 4
    loaded = load_model(tmp_path / "run")
    assert isinstance(loaded.net, sd.EDMPrecond) and loaded.num_classes == 2
    model = loaded.guided(1, 2.0)
    assert model.prediction == "x0" and model.null_label == 2
    out = sd.sample(model, "euler", 4, shape=(3, 2), generator=torch.Generator().manual_seed(0))
    assert out.x.shape == (3, 2) and bool(torch.isfinite(out.x).all())


def test_unconditional_checkpoint_refuses_a_class(tmp_path: Path) -> None:
    run = tmp_path / "u"
    train(tiny(run, "model.num_classes=none", "train.steps=1", "eval.at_end=false"))
    loaded = load_model(run)
    assert loaded.num_classes is None and loaded.net.class_embed is None
    assert json.loads(ck.load_checkpoint(run).metadata["num_classes"]) is None
    with pytest.raises(ValueError, match="is an unconditional model"):
        loaded.guided(0)


def test_resume_refuses_a_different_num_classes(cond_run: Path) -> None:
    trainer = Trainer(tiny(cond_run, "model.num_classes=3"))
    with pytest.raises(ConfigError, match=r"different \[model\] section"):
        trainer.resume()


def test_evaluation_figure_holds_every_class(cond_run: Path) -> None:
    """n_samples // num_classes conditional samples of each class (6 // 2 = 3 each)."""
    trainer = Trainer(tiny(cond_run))
    trainer.resume()
    model = trainer.eval_model()
    samples = trainer._eval_samples(model, seed=7)
    assert samples is not None and samples.shape == (6, 2)
    # class c's block is the conditional model's sample of class c from the same seeds
    for c in range(2):
        cond = sd.CFGModel(model.net, trainer.sde, y=c, w=0.0, prediction="eps")
        ref = sd.sample(cond, "euler", 3, shape=(3, 2), seeds=[7 + 3 * c + i for i in range(3)])
        assert torch.allclose(samples[3 * c : 3 * c + 3], ref.x, atol=1e-6)
