"""Data-parallel training with 2 CPU processes (gloo) launched by torchrun on 127.0.0.1.

One launch runs ``WORKER`` in both processes; each writes what it saw to ``rank<r>.pt`` and the
checks run here, in the parent:

* the parameters (and EMA) are identical on the two ranks after the steps;
* they equal a single-process run on the same global batch, with the same per-rank noise
  (gradients of the two halves averaged), within float tolerance;
* the ranks draw different noise; each epoch is a reshuffle, split between the ranks;
* sharded sampling and likelihood are gathered on rank 0, equal to one-process results;
* ``train()`` under torchrun: one set of checkpoints and metrics (rank 0), per-rank RNG
  states, and a distributed resume.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scoresde import checkpoint as ck
from scoresde.config import Config, apply_overrides, dumps
from scoresde.distributed import DistInfo, ShardedBatches, gather_cat, shard_bounds
from scoresde.parametrization import ScoreModel
from scoresde.sampling import sample
from scoresde.training import Trainer, bits_per_dim_sharded

REPO = Path(__file__).resolve().parents[1]
STEPS = 5
TIMEOUT_S = 240

WORKER = """
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from scoresde import distributed as du
from scoresde.config import apply_overrides, loads
from scoresde.training import Trainer, bits_per_dim_sharded, sample_sharded, train

out, cfg = Path(sys.argv[1]), loads(Path(sys.argv[2]).read_text())
steps = int(sys.argv[3])
torch.set_num_threads(1)
info = du.init_distributed("cpu")
assert info.enabled and info.world_size == 2 and info.backend == "gloo"
trainer = Trainer(cfg, dist=info)
record = {
    "draws": [torch.rand(8, generator=trainer.step_generator(s)) for s in range(steps)],
    "indices": [trainer.batches.indices(s) for s in range(steps)],
    "epochs": [trainer.batches.epoch_order(e).clone() for e in range(3)],
}
for _ in range(steps):
    trainer.train_step()
record["params"] = {k: v.clone() for k, v in trainer.net.state_dict().items()}
record["ema"] = {k: v.clone() for k, v in trainer.ema.module.state_dict().items()}
model = trainer.eval_model()
record["samples"] = sample_sharded(model, (2,), 7, method="euler", nfe=4, seed=3, info=info)
test = trainer.dataset.test[:5]
lik = bits_per_dim_sharded(model, test, info=info, rtol=1e-3, atol=1e-3, batch_size=2)
record["bpd"] = None if lik is None else lik.per_example
torch.save(record, out / f"rank{info.rank}.pt")

# the whole loop: rank-0 checkpoints and metrics, then a resume under torchrun
run = apply_overrides(cfg, ["train.steps=3", f"train.out_dir={out / 'run'}"])
first = train(run)
second = train(apply_overrides(run, ["train.steps=5"]))
assert first.step == 3 and second.step == 5, (first, second)
assert second.resumed_from is not None and second.resumed_from.name == "step_000000003"
du.barrier(info)
dist.destroy_process_group()
"""


def _config(out_dir: Path) -> Config:
    return apply_overrides(
        Config(),
        [
            "data.name=two_moons",
            "data.n_train=256",
            "data.n_test=16",
            "model.width=16",
            "model.depth=1",
            "model.emb_dim=8",
            "model.dropout=0.0",
            "optim.lr=1e-2",
            "optim.warmup_steps=2",
            "optim.ema_decay=0.5",
            "train.batch_size=64",  # global: 32 per rank, 4 batches per epoch
            "train.ckpt_every=1",
            "train.log_every=1",
            "train.threads=1",
            "train.progress=false",
            "train.tensorboard=false",
            "eval.at_end=false",
            f"train.out_dir={out_dir}",
        ],
    )


@pytest.fixture(autouse=True)
def _one_thread():
    """The reference computations are tiny: one intra-op thread is fastest on shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Config]:
    out = tmp_path_factory.mktemp("ddp")
    cfg = _config(out / "unused")
    (out / "config.toml").write_text(dumps(cfg))
    script = out / "worker.py"
    script.write_text(WORKER)
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        OMP_NUM_THREADS="1",
        GLOO_SOCKET_IFNAME="lo",  # loopback only
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        "--max_restarts=0",
        str(script),
        str(out),
        str(out / "config.toml"),
        str(STEPS),
    ]
    try:
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=out
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"torchrun did not finish in {TIMEOUT_S} s: {exc.stderr!s:.2000}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out, cfg


def _load(out: Path, rank: int) -> dict:
    return torch.load(out / f"rank{rank}.pt", weights_only=True)


def test_parameters_identical_across_ranks(ddp_run: tuple[Path, Config]) -> None:
    out, _ = ddp_run
    r0, r1 = _load(out, 0), _load(out, 1)
    for part in ("params", "ema"):
        for k in r0[part]:
            assert torch.equal(r0[part][k], r1[part][k]), f"{part}.{k} differs between ranks"


def test_equal_to_single_process_on_the_same_global_batch(ddp_run: tuple[Path, Config]) -> None:
    """One process, the same global batch (both ranks' halves) and the same per-rank noise,
    each half's gradient weighted 1/2: DDP's gradient average."""
    out, cfg = ddp_run
    r0 = _load(out, 0)
    with torch.random.fork_rng(devices=[]):
        ref = Trainer(cfg)
    shards = [ShardedBatches(256, 64, DistInfo(rank=r, world_size=2), seed=0) for r in (0, 1)]
    for step in range(STEPS):
        for r, shard in enumerate(shards):
            idx = shard.indices(step)
            assert torch.equal(idx, r0["indices"][step]) == (r == 0)
            ref.forward_backward(ref.train_x[idx], ref.step_generator(step, rank=r), scale=0.5)
        ref.optimizer_step()
    for k, v in ref.net.state_dict().items():
        torch.testing.assert_close(r0["params"][k], v, rtol=1e-5, atol=1e-6)
    for k, v in ref.ema.module.state_dict().items():
        torch.testing.assert_close(r0["ema"][k], v, rtol=1e-5, atol=1e-6)


def test_ranks_draw_different_noise_and_share_each_epoch(ddp_run: tuple[Path, Config]) -> None:
    out, _ = ddp_run
    r0, r1 = _load(out, 0), _load(out, 1)
    for a, b in zip(r0["draws"], r1["draws"]):
        assert not torch.equal(a, b)
    for step in range(STEPS):  # disjoint halves of one global batch
        both = torch.cat([r0["indices"][step], r1["indices"][step]])
        assert both.unique().numel() == 64
    for e in range(3):  # every epoch: the two ranks partition the training set
        both = torch.cat([r0["epochs"][e], r1["epochs"][e]])
        assert torch.equal(both.sort().values, torch.arange(256))
    assert not torch.equal(r0["epochs"][0], r0["epochs"][1])  # set_epoch reshuffles
    assert not torch.equal(r0["epochs"][1], r0["epochs"][2])


def test_sharded_sampling_and_likelihood_gathered_on_rank_0(
    ddp_run: tuple[Path, Config],
) -> None:
    out, cfg = ddp_run
    r0, r1 = _load(out, 0), _load(out, 1)
    assert r1["samples"] is None and r1["bpd"] is None
    with torch.random.fork_rng(devices=[]):
        ref = Trainer(cfg)
    ref.ema.module.load_state_dict(r0["ema"])
    model = ScoreModel(ref.ema.module, ref.sde, prediction="eps")
    expected = sample(model, "euler", 4, shape=(7, 2), seeds=list(range(3, 10))).x
    torch.testing.assert_close(r0["samples"], expected, rtol=1e-5, atol=1e-6)
    # rank r evaluated its contiguous slice in batches of 2: the same solves here, in order
    test = ref.dataset.test[:5]
    parts = []
    for r in (0, 1):
        start, stop = shard_bounds(5, DistInfo(rank=r, world_size=2))
        lik = bits_per_dim_sharded(model, test[start:stop], rtol=1e-3, atol=1e-3, batch_size=2)
        assert lik is not None
        parts.append(lik.per_example)
    torch.testing.assert_close(r0["bpd"], torch.cat(parts), rtol=1e-6, atol=1e-6)


def test_train_under_torchrun_writes_once_and_resumes(ddp_run: tuple[Path, Config]) -> None:
    out, _ = ddp_run
    run = out / "run"
    assert [p.name for p in ck.list_checkpoints(run / "checkpoints")][-1] == "step_000000005"
    state = ck.load_checkpoint(run, training_state=True).training_state
    assert state is not None and state["world_size"] == 2 and len(state["rng"]) == 2
    rows = (run / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4", "5"]


def test_shard_bounds_and_gather_in_one_process() -> None:
    for n in (0, 1, 5, 8):
        bounds = [shard_bounds(n, DistInfo(rank=r, world_size=3)) for r in range(3)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1
    x = torch.arange(4.0)
    gathered = gather_cat(x, DistInfo())
    assert gathered is not None and torch.equal(gathered, x)
    with pytest.raises(ValueError, match="divisible by the number of processes"):
        ShardedBatches(100, 63, DistInfo(rank=0, world_size=2), seed=0)
    with pytest.raises(ValueError, match="larger than the training set"):
        ShardedBatches(10, 64, DistInfo(), seed=0)
