"""The training loop: bitwise resume (in process, and after kill -9 of a real process at
random steps), EMA, learning-rate schedule, autocast, resume safety, metrics files."""

from __future__ import annotations

import math
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.optim.swa_utils import AveragedModel

from scoresde import checkpoint as ck
from scoresde.config import Config, ConfigError, apply_overrides, dumps
from scoresde.training import Trainer, _lr_lambda, load_model, train

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("keep_global_rng")


def tiny(out_dir: Path, *extra: str) -> Config:
    """A model small enough for a few milliseconds per step. 300 examples in batches of 64:
    4 batches per epoch, so a resume at step 6 lands in the middle of an epoch. Dropout is on,
    so the global RNG state has to be restored too."""
    return apply_overrides(
        Config(),
        [
            "data.name=two_moons",
            "data.n_train=300",
            "data.n_test=40",
            "model.width=16",
            "model.depth=1",
            "model.emb_dim=8",
            "model.dropout=0.1",
            "loss.t_sampler=importance",
            "optim.lr=1e-2",
            "optim.warmup_steps=3",
            "optim.schedule=cosine",
            "optim.min_lr=1e-3",
            "optim.weight_decay=0.01",
            "optim.ema_decay=0.9",
            "train.steps=12",
            "train.batch_size=64",
            "train.ckpt_every=1",
            "train.log_every=1",
            "train.keep_last=2",
            "train.threads=1",
            "train.progress=false",
            "train.tensorboard=false",
            "eval.at_end=false",
            f"train.out_dir={out_dir}",
            *extra,
        ],
    )


def assert_same_state(a: Path, b: Path) -> None:
    """Parameters, EMA, optimizer and scheduler state of two final checkpoints: bitwise."""
    ca = ck.load_checkpoint(a, training_state=True)
    cb = ck.load_checkpoint(b, training_state=True)
    assert ca.step == cb.step
    for name in ("model", "ema"):
        ta, tb = getattr(ca, name), getattr(cb, name)
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k]), f"{name}.{k} differs"
    sa, sb = ca.training_state, cb.training_state
    assert sa is not None and sb is not None
    oa, ob = sa["optimizer"], sb["optimizer"]
    assert oa["param_groups"] == ob["param_groups"]
    assert oa["state"].keys() == ob["state"].keys()
    for i in oa["state"]:
        for k in oa["state"][i]:
            assert torch.equal(oa["state"][i][k], ob["state"][i][k]), f"optimizer {i}.{k}"
    assert sa["scheduler"] == sb["scheduler"]
    assert torch.equal(sa["ema_n_averaged"], sb["ema_n_averaged"])
    assert torch.equal(sa["rng"][0]["torch"], sb["rng"][0]["torch"])


def test_resume_in_process_is_bitwise_identical(tmp_path: Path) -> None:
    ref = train(tiny(tmp_path / "ref"))
    part = train(tiny(tmp_path / "run"), max_steps=6)
    assert part.step == 6 and part.resumed_from is None
    rest = train(tiny(tmp_path / "run"))
    assert rest.resumed_from is not None and rest.resumed_from.name == "step_000000006"
    assert rest.steps_this_run == 6 and rest.step == ref.step == 12
    assert ref.checkpoint is not None and rest.checkpoint is not None
    assert_same_state(ref.checkpoint, rest.checkpoint)
    # the metrics file has each step once, and the same losses
    rows_ref = (tmp_path / "ref" / "metrics.csv").read_text().splitlines()
    rows_run = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    steps = [r.split(",")[0] for r in rows_run[1:]]
    assert steps == [str(s) for s in range(1, 13)]
    assert [r.split(",")[2] for r in rows_run] == [r.split(",")[2] for r in rows_ref]
    # the resolved config beside every checkpoint
    saved = (rest.checkpoint / ck.CONFIG_FILE).read_text()
    assert saved == dumps(tiny(tmp_path / "run"))
    assert (tmp_path / "run" / "config.toml").read_text() == saved


def _interrupt_inside_step(trainer: Trainer, at_step: int, times: int = 1) -> None:
    """Deliver SIGINT from inside the EMA update of step ``at_step`` (after the optimizer step,
    before ``step += 1``): the moment where a checkpoint of the in-memory state would mix two
    steps."""
    update = trainer.ema.update_parameters

    def update_and_interrupt(model):
        update(model)
        if trainer.step + 1 == at_step:
            for _ in range(times):
                signal.raise_signal(signal.SIGINT)

    trainer.ema.update_parameters = update_and_interrupt  # type: ignore[method-assign]


def test_ctrl_c_finishes_the_step_checkpoints_it_and_resumes_bitwise(tmp_path: Path) -> None:
    ref = train(tiny(tmp_path / "ref", "train.ckpt_every=100"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as train() does with train.threads=1: the same float results
    try:
        trainer = Trainer(tiny(tmp_path / "run", "train.ckpt_every=100"))
        _interrupt_inside_step(trainer, 7)
        with pytest.raises(KeyboardInterrupt):
            trainer.fit()
    finally:
        torch.set_num_threads(threads)
    assert trainer.step == 7
    assert [p.name for p in ck.list_checkpoints(tmp_path / "run" / "checkpoints")] == [
        "step_000000007"
    ]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    rest = train(tiny(tmp_path / "run", "train.ckpt_every=100"))
    assert rest.resumed_from is not None and rest.resumed_from.name == "step_000000007"
    assert ref.checkpoint is not None and rest.checkpoint is not None
    assert_same_state(ref.checkpoint, rest.checkpoint)


def test_a_second_ctrl_c_stops_at_once_without_a_checkpoint(tmp_path: Path) -> None:
    trainer = Trainer(tiny(tmp_path / "run", "train.ckpt_every=100"))
    _interrupt_inside_step(trainer, 5, times=2)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert ck.list_checkpoints(tmp_path / "run" / "checkpoints") == []


def test_a_fresh_start_drops_metrics_rows_of_a_run_that_died_before_its_first_checkpoint(
    tmp_path: Path,
) -> None:
    dead = Trainer(tiny(tmp_path / "run", "train.ckpt_every=100", "train.steps=200"))
    dead.out_dir.mkdir(parents=True)
    for _ in range(5):  # five logged steps, then "killed": no checkpoint
        dead.train_step()
        dead._log_row(dead.step, 1.0, 0.0, 1.0, 0.0)
    assert ck.list_checkpoints(tmp_path / "run" / "checkpoints") == []
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["1", "2", "3", "4", "5"]
    train(tiny(tmp_path / "run"), max_steps=3)
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["1", "2", "3"]


def test_resume_with_a_changed_optim_section_applies_it_and_says_so(tmp_path: Path) -> None:
    train(tiny(tmp_path / "run", "optim.schedule=constant", "optim.warmup_steps=0"), max_steps=4)
    new = tiny(
        tmp_path / "run",
        "optim.schedule=constant",
        "optim.warmup_steps=0",
        "optim.lr=3e-3",
        "optim.betas=[0.5, 0.6]",
        "optim.weight_decay=0.5",
    )
    with pytest.warns(UserWarning, match=r"different \[optim\] \(optim\.betas, optim\.lr, "):
        rest = train(new, max_steps=6)
    assert rest.checkpoint is not None
    saved = ck.load_checkpoint(rest.checkpoint, training_state=True).training_state
    assert saved is not None
    (group,) = saved["optimizer"]["param_groups"]
    assert group["lr"] == 3e-3 and tuple(group["betas"]) == (0.5, 0.6)
    assert group["weight_decay"] == 0.5 and saved["scheduler"]["base_lrs"] == [3e-3]
    lrs = [
        float(r.split(",")[3])
        for r in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]
    ]
    assert lrs[-1] == 3e-3 and lrs[0] == 1e-2


def test_metrics_record_the_learning_rate_each_step_used(tmp_path: Path) -> None:
    """Warm-up over 3 steps to 1e-2: steps 1, 2, 3 use 1/3, 2/3 and 3/3 of it."""
    train(tiny(tmp_path / "run"), max_steps=4)
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]
    lrs = [float(r.split(",")[3]) for r in rows]
    assert [round(v / 1e-2, 6) for v in lrs[:3]] == [round(1 / 3, 6), round(2 / 3, 6), 1.0]


def test_a_repeated_final_evaluation_replaces_its_row(tmp_path: Path) -> None:
    cfg = tiny(
        tmp_path / "run",
        "eval.at_end=true",
        "eval.n_samples=4",
        "eval.nfe=2",
        "eval.method=euler",
        "eval.likelihood=false",
        "eval.elbo=false",
        "train.steps=3",
    )
    for _ in range(2):  # the second run has nothing to train and evaluates again
        train(cfg)
    rows = (tmp_path / "run" / "eval.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["3"]


def test_non_finite_weights_are_never_checkpointed(tmp_path: Path) -> None:
    trainer = Trainer(tiny(tmp_path / "run", "train.keep_last=1"))
    trainer.fit(max_steps=2)
    good = trainer.last_checkpoint
    assert good is not None and good.name == "step_000000002"
    trainer.train_step()
    with torch.no_grad():
        next(trainer.net.parameters()).view(-1)[0] = math.nan
    with pytest.raises(FloatingPointError, match=r"weights are not finite .* at step 3: no"):
        trainer.save_checkpoint()
    # nothing written, the good one not pruned
    assert ck.list_checkpoints(tmp_path / "run" / "checkpoints") == [good]
    ck.verify_checkpoint(good)


def _train_in_subprocess(config_file: Path, kill_at: int, timeout: float = 120.0) -> int:
    """Run ``scoresde train`` in a child process and SIGKILL it as soon as it reports a step
    >= ``kill_at``; returns the child's exit status (-9 when killed)."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-m", "scoresde.cli", "train", str(config_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            m = re.match(r"step (\d+)/", line)
            if m and int(m.group(1)) >= kill_at:
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, "".join(lines[-20:])
    return proc.returncode


@pytest.mark.parametrize("n_kills", [1, pytest.param(3, marks=pytest.mark.slow)])
def test_kill_9_at_random_steps_then_resume_is_bitwise_identical(
    tmp_path: Path, n_kills: int
) -> None:
    """kill -9 of a real training process at random steps (often in the middle of a
    checkpoint write, since one is written every step), then a resume to the end: bitwise the
    parameters, EMA and optimizer state of an uninterrupted run. The seed of the kill steps is
    in the failure message."""
    seed = random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    steps = 60
    ref = train(tiny(tmp_path / "ref", f"train.steps={steps}"))
    cfg = tiny(tmp_path / "run", f"train.steps={steps}")
    config_file = tmp_path / "run.toml"
    config_file.write_text(dumps(cfg))
    kills = sorted(rng.sample(range(3, 40), n_kills))
    for kill_at in kills:
        _train_in_subprocess(config_file, kill_at)
        newest = ck.latest_checkpoint(tmp_path / "run", warn=False)
        assert newest is not None, f"seed {seed}: no valid checkpoint after a kill at {kill_at}"
    res = train(cfg)
    assert res.resumed_from is not None
    assert res.step == steps
    assert res.checkpoint is not None and ref.checkpoint is not None
    assert_same_state(ref.checkpoint, res.checkpoint), f"seed {seed}, kills at {kills}"


def test_ema_is_torch_averaged_model_with_the_ema_update(tmp_path: Path) -> None:
    cfg = tiny(tmp_path, "model.dropout=0.0", "optim.ema_decay=0.75")
    trainer = Trainer(cfg)
    assert isinstance(trainer.ema, AveragedModel)
    trainer.train_step()  # first update: a copy
    p1 = [p.detach().clone() for p in trainer.net.parameters()]
    for e, p in zip(trainer.ema.module.parameters(), p1):
        assert torch.equal(e, p)
    trainer.train_step()
    for e, a, b in zip(trainer.ema.module.parameters(), p1, trainer.net.parameters()):
        torch.testing.assert_close(e, 0.75 * a + 0.25 * b.detach(), rtol=1e-6, atol=1e-7)
    assert int(trainer.ema.n_averaged) == 2


def test_learning_rate_warmup_then_cosine() -> None:
    f = _lr_lambda(warmup=4, total=14, schedule="cosine", min_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert math.isclose(f(9), 0.1 + 0.9 * 0.5)  # half-way through the decay
    assert math.isclose(f(14), 0.1) and math.isclose(f(100), 0.1)
    g = _lr_lambda(warmup=0, total=10, schedule="constant", min_ratio=0.0)
    assert {g(s) for s in range(20)} == {1.0}


def test_gradient_clipping_bounds_the_update_norm(tmp_path: Path) -> None:
    trainer = Trainer(tiny(tmp_path, "optim.grad_clip=1e-3", "model.dropout=0.0"))
    trainer.forward_backward(trainer.batch(0), trainer.step_generator(0))
    grads = [p.grad.detach().clone() for p in trainer.net.parameters()]
    raw = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    norm = trainer.optimizer_step()
    assert math.isclose(float(norm), float(raw), rel_tol=1e-6)
    assert float(raw) > 1e-3  # clipping was active


def test_data_order_and_noise_are_functions_of_the_step(tmp_path: Path) -> None:
    a, b = Trainer(tiny(tmp_path)), Trainer(tiny(tmp_path))
    for step in (9, 0, 5, 4):  # any order: no hidden stream position
        assert torch.equal(a.batch(step), b.batch(step))
        ga, gb = a.step_generator(step), b.step_generator(step)
        assert torch.equal(torch.rand(5, generator=ga), torch.rand(5, generator=gb))
    # an epoch covers the training set once, and the next epoch reshuffles it
    per_epoch = a.batches.batches_per_epoch
    e0 = torch.cat([a.batches.indices(s) for s in range(per_epoch)])
    e1 = torch.cat([a.batches.indices(s) for s in range(per_epoch, 2 * per_epoch)])
    assert e0.unique().numel() == e0.numel() == per_epoch * 64
    assert not torch.equal(e0, e1)


def test_bf16_autocast_steps(tmp_path: Path) -> None:
    trainer = Trainer(tiny(tmp_path, "train.amp=bf16"))
    assert trainer.amp_dtype == torch.bfloat16
    loss, norm = trainer.train_step()
    assert math.isfinite(float(loss)) and math.isfinite(float(norm))
    assert all(p.dtype == torch.float32 for p in trainer.net.parameters())


def test_resume_refuses_another_architecture(tmp_path: Path) -> None:
    train(tiny(tmp_path), max_steps=2)
    with pytest.raises(ConfigError, match=r"different \[model\]"):
        train(tiny(tmp_path, "model.width=32"))


def test_fresh_run_refuses_a_folder_with_checkpoints(tmp_path: Path) -> None:
    train(tiny(tmp_path), max_steps=1)
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        train(tiny(tmp_path, "train.resume=false"))


def test_resume_skips_a_corrupt_newest_checkpoint(tmp_path: Path) -> None:
    train(tiny(tmp_path), max_steps=3)
    newest = ck.latest_checkpoint(tmp_path)
    assert newest is not None and newest.name == "step_000000003"
    (newest / ck.WEIGHTS_FILE).write_bytes(b"broken")
    with pytest.warns(UserWarning, match="skipping invalid checkpoint"):
        res = train(tiny(tmp_path), max_steps=4)
    assert res.resumed_from is not None and res.resumed_from.name == "step_000000002"
    assert res.step == 4


def test_time_limit_stops_with_a_checkpoint(tmp_path: Path) -> None:
    res = train(tiny(tmp_path, "train.steps=100000", "train.max_minutes=0.002"))
    assert res.time_limit_reached and 0 < res.step < 100000
    assert res.checkpoint is not None and res.checkpoint.name == f"step_{res.step:09d}"


def test_load_model_gives_the_ema_network(tmp_path: Path) -> None:
    res = train(tiny(tmp_path), max_steps=3)
    loaded = load_model(tmp_path)
    assert loaded.step == 3 and loaded.ema and not loaded.net.training
    saved = ck.load_checkpoint(tmp_path)
    assert saved.ema is not None
    for k, v in loaded.net.state_dict().items():
        assert torch.equal(v, saved.ema[k])
    raw = load_model(res.checkpoint, ema=False)  # type: ignore[arg-type]
    for k, v in raw.net.state_dict().items():
        assert torch.equal(v, saved.model[k])
    x = torch.zeros(4, 2)
    assert loaded.model.eps(x, 0.5).shape == (4, 2)
