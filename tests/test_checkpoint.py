"""Checkpoint files: round trip, atomic writes, pruning, and refusal of truncated, corrupt,
incomplete and malicious checkpoints (whose payload must never run)."""

from __future__ import annotations

import io
import json
import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch

from scoresde import checkpoint as ck
from scoresde.checkpoint import CheckpointError


def _save(root: Path, step: int, value: float = 1.0, **kw) -> Path:
    model = {"w": torch.full((3, 2), value), "b": torch.arange(4.0)}
    ema = {"w": torch.full((3, 2), value / 2), "b": torch.zeros(4)}
    state = {
        "step": step,
        "optimizer": {"state": {0: {"exp_avg": torch.ones(2)}}, "param_groups": [{"lr": 0.1}]},
        "rng": [{"torch": torch.get_rng_state(), "python": (3, (1, 2, 3), None)}],
    }
    return ck.save_checkpoint(
        root,
        step,
        model=model,
        ema=ema,
        training_state=state,
        metadata={"prediction": "eps", "config": "{}"},
        config_toml="[train]\nsteps = 1\n",
        **kw,
    )


def _rewrite_manifest(ckpt: Path) -> None:
    """Make the manifest agree with the files as they are now (what an attacker would do)."""
    manifest = json.loads((ckpt / ck.MANIFEST_FILE).read_text())
    for name in manifest["files"]:
        data = (ckpt / name).read_bytes()
        manifest["files"][name] = {"size": len(data), "sha256": ck._sha256(data)}
    (ckpt / ck.MANIFEST_FILE).write_text(json.dumps(manifest))


def test_round_trip(tmp_path: Path) -> None:
    path = _save(tmp_path, 7, value=0.123456789)
    assert path == tmp_path / "step_000000007"
    assert sorted(p.name for p in path.iterdir()) == sorted(
        [ck.WEIGHTS_FILE, ck.STATE_FILE, ck.CONFIG_FILE, ck.MANIFEST_FILE]
    )
    got = ck.load_checkpoint(path, training_state=True)
    assert got.step == 7
    assert torch.equal(got.model["w"], torch.full((3, 2), 0.123456789))
    assert got.ema is not None and torch.equal(got.ema["w"], torch.full((3, 2), 0.123456789 / 2))
    assert got.metadata["prediction"] == "eps" and got.metadata["format"] == ck.FORMAT
    state = got.training_state
    assert state is not None and state["step"] == 7
    assert state["rng"][0]["python"] == (3, (1, 2, 3), None)
    assert (path / ck.CONFIG_FILE).read_text() == "[train]\nsteps = 1\n"
    # every way of naming it resolves to the same folder
    for name in (tmp_path, path, path / ck.WEIGHTS_FILE):
        assert ck.resolve_checkpoint(name) == path
    assert ck.resolve_checkpoint(tmp_path.parent / tmp_path.name) == path


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    ck.atomic_write_bytes(target, b"one")
    ck.atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_keep_last_prunes_the_oldest(tmp_path: Path) -> None:
    for step in (1, 2, 3, 4, 5):
        _save(tmp_path, step, keep_last=2)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step_000000004", "step_000000005"]


def test_pruning_never_counts_later_checkpoints_that_a_resume_passed_over(tmp_path: Path) -> None:
    """A corrupt step 200 made the resume fall back to step 100; saving step 101 with
    keep_last=1 must keep 101 (not delete it for the corrupt 200) and leave 200 alone."""
    _save(tmp_path, 100, keep_last=1)
    bad = _save(tmp_path, 200)  # e.g. a run that kept every checkpoint, then was damaged
    with open(bad / ck.WEIGHTS_FILE, "ab") as f:
        f.write(b"x")
    with pytest.warns(UserWarning, match="skipping invalid checkpoint"):
        assert ck.latest_checkpoint(tmp_path) == ck.checkpoint_dir(tmp_path, 100)
    _save(tmp_path, 101, keep_last=1)
    names = [p.name for p in ck.list_checkpoints(tmp_path)]
    assert names == ["step_000000101", "step_000000200"]
    with pytest.warns(UserWarning, match="skipping invalid checkpoint"):
        assert ck.latest_checkpoint(tmp_path) == ck.checkpoint_dir(tmp_path, 101)


def test_resaving_a_step_replaces_it(tmp_path: Path) -> None:
    _save(tmp_path, 3, value=1.0)
    _save(tmp_path, 3, value=2.0)
    assert float(ck.load_checkpoint(tmp_path).model["w"][0, 0]) == 2.0
    assert len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_manifest", "missing_file", "garbage"])
def test_damaged_checkpoint_is_a_clear_error_and_the_previous_one_is_used(
    tmp_path: Path, damage: str
) -> None:
    good = _save(tmp_path, 1, value=1.0)
    bad = _save(tmp_path, 2, value=2.0)
    weights = bad / ck.WEIGHTS_FILE
    data = weights.read_bytes()
    if damage == "truncate":
        weights.write_bytes(data[: len(data) // 2])
        fragment = "truncated"
    elif damage == "flip":
        flipped = bytearray(data)
        flipped[-3] ^= 0xFF
        weights.write_bytes(bytes(flipped))
        fragment = "corrupt"
    elif damage == "no_manifest":
        (bad / ck.MANIFEST_FILE).unlink()
        fragment = "incomplete checkpoint"
    elif damage == "missing_file":
        (bad / ck.STATE_FILE).unlink()
        fragment = "is missing"
    else:  # a manifest that agrees with a file that is not safetensors at all
        weights.write_bytes(b"\x00" * 16)
        _rewrite_manifest(bad)
        fragment = "unreadable safetensors"
    with pytest.raises(CheckpointError, match=fragment) as exc:
        ck.load_checkpoint(bad, training_state=True)
    assert "step_000000002" in str(exc.value)
    if damage != "garbage":  # detected without parsing
        with pytest.raises(CheckpointError, match=fragment):
            ck.verify_checkpoint(bad)
        with pytest.warns(UserWarning, match="skipping invalid checkpoint"):
            assert ck.latest_checkpoint(tmp_path) == good
        with pytest.warns(UserWarning):
            assert float(ck.load_checkpoint(tmp_path).model["w"][0, 0]) == 1.0


def test_crash_during_the_write_leaves_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after part of the new checkpoint is on disk (here: the second file is half
    written when the process 'dies'): the previous checkpoint stays the newest valid one, and
    the leftover is ignored, then cleaned by the next save."""
    good = _save(tmp_path, 1)
    real = ck._write_synced
    calls = {"n": 0}

    class Killed(BaseException):  # not an Exception: nothing may catch and continue
        pass

    def dying_write(path: Path, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
            raise Killed

    monkeypatch.setattr(ck, "_write_synced", dying_write)
    with pytest.raises(Killed):
        _save(tmp_path, 2)
    monkeypatch.setattr(ck, "_write_synced", real)
    assert ck.latest_checkpoint(tmp_path) == good
    assert ck.load_checkpoint(tmp_path).step == 1
    # what a SIGKILL leaves behind (no `finally` runs): a staging folder without a manifest
    leftover = tmp_path / ".tmp-step_000000002-999-deadbeef"
    leftover.mkdir()
    (leftover / ck.WEIGHTS_FILE).write_bytes(b"partial")
    assert ck.latest_checkpoint(tmp_path) == good
    _save(tmp_path, 3)
    assert not leftover.exists()
    assert ck.load_checkpoint(tmp_path).step == 3


class _Payload:
    """Unpickling this calls ``open(path, "w")``: a stand-in for arbitrary code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.path, "w"))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    sentinel = tmp_path / "sentinel"
    payload = pickle.dumps({"step": 1, "x": _Payload(str(sentinel))})
    # the payload is live: plain pickle runs it
    pickle.loads(payload)
    assert sentinel.exists()
    sentinel.unlink()

    buf = io.BytesIO()
    torch.save({"step": 1, "x": _Payload(str(sentinel))}, buf)  # torch's zip format
    ckpt = _save(tmp_path / "run", 1)
    (ckpt / ck.STATE_FILE).write_bytes(buf.getvalue())
    _rewrite_manifest(ckpt)  # the attacker also fixes the checksums
    with pytest.raises(CheckpointError, match="refused to load") as exc:
        ck.load_checkpoint(ckpt, training_state=True)
    assert "not run" in str(exc.value) or "does not run" in str(exc.value)
    with pytest.raises(CheckpointError, match="refused to load"):
        ck.load_training_state(ckpt / ck.STATE_FILE)
    raw = tmp_path / "raw.pt"
    raw.write_bytes(payload)  # a bare (non-zip) pickle
    with warnings.catch_warnings(), pytest.raises(CheckpointError, match="refused"):
        warnings.simplefilter("ignore")  # torch notes the unusual pickle protocol
        ck.load_training_state(raw)
    assert not sentinel.exists()
    # the weights alone (safetensors: no pickle) still load
    assert ck.load_checkpoint(ckpt).step == 1


def test_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        ck.load_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no valid checkpoint"):
        ck.load_checkpoint(tmp_path)
    assert ck.latest_checkpoint(tmp_path) is None
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        ck.resolve_checkpoint(tmp_path / "x.txt")


def test_truncated_state_file_is_a_clear_error(tmp_path: Path) -> None:
    p = tmp_path / "s.pt"
    torch.save({"a": torch.ones(1000)}, p)
    p.write_bytes(p.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="unreadable training state"):
        ck.load_training_state(p)


def test_state_that_is_not_plain_data_is_refused_even_if_harmless(tmp_path: Path) -> None:
    """weights_only loading admits tensors and containers, not arbitrary classes."""
    p = tmp_path / "s.pt"
    torch.save({"path": Path("/tmp")}, p)
    with pytest.raises(CheckpointError, match="refused"):
        ck.load_training_state(p)
    assert os.path.exists(p)
