"""Checkpoints: safetensors weights, a plain-data training state, written atomically.

A run directory holds its checkpoints under ``checkpoints/``, one folder per step::

    <out_dir>/checkpoints/step_000001000/
        weights.safetensors   model and EMA weights ("model.<name>", "ema.<name>") with
                              metadata: the resolved config (JSON), the SDE, the prediction
        training_state.pt     optimizer, LR scheduler, step, EMA counter and every RNG state,
                              plain data only: read with torch.load(weights_only=True)
        config.toml           the resolved configuration, human-readable
        manifest.json         written last: step, and size + SHA-256 of every file

**Atomicity.** A checkpoint is written into a temporary folder next to the final one
(``checkpoints/.tmp-step_...``): every file is written, flushed and fsync'ed, the manifest last,
the folder is fsync'ed, then renamed to its final name with :func:`os.replace` and the parent
folder is fsync'ed. A crash at any point leaves either the complete checkpoint or none (a
leftover ``.tmp-*`` folder is ignored and deleted by the next save); the previous checkpoints
are untouched until the new one is in place, and only then are the oldest ones beyond
``keep_last`` deleted. :func:`atomic_write_bytes` does the same for a single file.

**Validation.** :func:`verify_checkpoint` checks the manifest, the files' sizes (truncation)
and SHA-256 digests (corruption) before anything is parsed; :func:`latest_checkpoint` returns
the newest checkpoint that verifies, warning about each newer one it skips.

**No code execution.** Weights are safetensors (no pickle at all). The training state is read
with ``torch.load(weights_only=True)``, whose unpickler only builds tensors and plain
containers: a file whose pickle would import a function or build an arbitrary object is
refused with :class:`CheckpointError` before any such code runs.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import shutil
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "CheckpointError",
    "Checkpoint",
    "FORMAT",
    "WEIGHTS_FILE",
    "STATE_FILE",
    "CONFIG_FILE",
    "MANIFEST_FILE",
    "atomic_write_bytes",
    "save_checkpoint",
    "load_checkpoint",
    "load_training_state",
    "verify_checkpoint",
    "list_checkpoints",
    "latest_checkpoint",
    "resolve_checkpoint",
    "checkpoint_dir",
]

FORMAT = "scoresde-checkpoint/1"
WEIGHTS_FILE = "weights.safetensors"
STATE_FILE = "training_state.pt"
CONFIG_FILE = "config.toml"
MANIFEST_FILE = "manifest.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_TMP_PREFIX = ".tmp-"


class CheckpointError(Exception):
    """A checkpoint that is missing, incomplete, truncated, corrupt or unsafe to load."""


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        path: its folder (or the weights file, for a bare ``.safetensors``).
        step: the optimizer steps done when it was written.
        model: the network's state dict (CPU tensors).
        ema: the EMA network's state dict, or None when the file has none.
        metadata: the safetensors metadata (``config`` JSON, ``sde``, ``prediction``, ...).
        training_state: optimizer, scheduler, RNG states... (None unless asked for).
    """

    path: Path
    step: int
    model: dict[str, Tensor] = field(repr=False)
    ema: dict[str, Tensor] | None = field(repr=False)
    metadata: dict[str, str] = field(repr=False)
    training_state: dict[str, Any] | None = field(default=None, repr=False)


# --------------------------------------------------------------------------- atomic writes


def _fsync_dir(path: Path) -> None:
    """fsync a directory so that a rename or a new entry in it is durable (POSIX)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, flushed and
    fsync'ed, renamed over ``path`` with :func:`os.replace`, then the folder fsync'ed. Readers
    see the old content or the new one, never a mix."""
    path = Path(path)
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        _write_synced(tmp, data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- saving


def checkpoint_dir(root: str | Path, step: int) -> Path:
    """The folder of the checkpoint of ``step`` under ``root`` (the ``checkpoints`` folder)."""
    return Path(root) / f"step_{step:09d}"


def _flat(prefix: str, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for k, v in state.items():
        if not isinstance(v, Tensor):
            raise TypeError(f"state dict entry {k!r} is a {type(v).__name__}, not a tensor")
        out[prefix + k] = v.detach().to("cpu", copy=True).contiguous()
    return out


def save_checkpoint(
    root: str | Path,
    step: int,
    *,
    model: Mapping[str, Tensor],
    ema: Mapping[str, Tensor] | None,
    training_state: Mapping[str, Any],
    metadata: Mapping[str, str],
    config_toml: str,
    keep_last: int | None = None,
) -> Path:
    """Write the checkpoint of ``step`` atomically under ``root`` and prune old ones.

    Args:
        root: the ``checkpoints`` folder (created if missing).
        step: optimizer steps done.
        model: the network's state dict.
        ema: the EMA network's state dict (or None).
        training_state: plain data and tensors only (it must load with
            ``weights_only=True``): optimizer, scheduler, RNG states, counters.
        metadata: string metadata stored in the safetensors header.
        config_toml: the resolved configuration as TOML.
        keep_last: keep this many checkpoints (the newest), delete older ones; None: all.

    Returns:
        The checkpoint's folder.
    """
    from safetensors.torch import save as st_save

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tensors = _flat("model.", model)
    if ema is not None:
        tensors.update(_flat("ema.", ema))
    meta = {str(k): str(v) for k, v in metadata.items()}
    meta.update(format=FORMAT, step=str(step))
    weights = st_save(tensors, metadata=meta)
    buf = io.BytesIO()
    torch.save(dict(training_state), buf)
    files = {
        WEIGHTS_FILE: weights,
        STATE_FILE: buf.getvalue(),
        CONFIG_FILE: config_toml.encode("utf-8"),
    }
    manifest = {
        "format": FORMAT,
        "step": step,
        "files": {name: {"size": len(d), "sha256": _sha256(d)} for name, d in files.items()},
    }
    final = checkpoint_dir(root, step)
    staging = root / f"{_TMP_PREFIX}{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        for name, data in files.items():
            _write_synced(staging / name, data)
        _write_synced(staging / MANIFEST_FILE, json.dumps(manifest, indent=1).encode())
        _fsync_dir(staging)
        if final.exists():  # the same step saved again (e.g. after a resume): swap it out
            trash = root / f"{_TMP_PREFIX}old-{final.name}-{uuid.uuid4().hex[:8]}"
            os.replace(final, trash)
            os.replace(staging, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, final)
        _fsync_dir(root)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    _prune(root, keep_last, step)
    return final


def _prune(root: Path, keep_last: int | None, step: int) -> None:
    """Delete leftovers of interrupted writes and, of the checkpoints up to ``step`` (the one
    just written), those beyond the newest ``keep_last``.

    Checkpoints of later steps are left alone: they exist only when a resume passed over them
    (corrupt, or the user resumed from an older one), and counting them would delete the
    checkpoint just written and the valid ones before it."""
    for p in root.iterdir():
        if p.name.startswith(_TMP_PREFIX) and p.is_dir():
            # leftovers of a write that crashed; ours has already been renamed
            shutil.rmtree(p, ignore_errors=True)
    if keep_last is None or keep_last <= 0:
        return
    upto = [p for s, p in _numbered_checkpoints(root) if s <= step]
    for p in upto[:-keep_last]:
        shutil.rmtree(p, ignore_errors=True)


# --------------------------------------------------------------------------- finding


def list_checkpoints(root: str | Path) -> list[Path]:
    """Checkpoint folders under ``root`` (a ``checkpoints`` folder), oldest step first, whether
    valid or not."""
    return [p for _, p in _numbered_checkpoints(Path(root))]


def _numbered_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every checkpoint folder under ``root``, oldest step first."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def _checkpoints_root(path: Path) -> Path:
    """A run folder -> its ``checkpoints`` folder; a ``checkpoints`` folder stays."""
    return path / "checkpoints" if (path / "checkpoints").is_dir() else path


def latest_checkpoint(path: str | Path, *, warn: bool = True) -> Path | None:
    """The newest checkpoint under a run folder (or a ``checkpoints`` folder) that passes
    :func:`verify_checkpoint`, or None if there is none. Invalid newer ones are skipped with a
    warning naming the reason."""
    for p in reversed(list_checkpoints(_checkpoints_root(Path(path)))):
        try:
            verify_checkpoint(p)
        except CheckpointError as exc:
            if warn:
                warnings.warn(f"skipping invalid checkpoint: {exc}", stacklevel=2)
            continue
        return p
    return None


def resolve_checkpoint(path: str | Path) -> Path:
    """What a user may name as a checkpoint -> a checkpoint folder (or a bare weights file).

    Accepted: a run folder or a ``checkpoints`` folder (its newest valid checkpoint), a
    checkpoint folder, or a file inside one (``weights.safetensors``, ...); a ``.safetensors``
    file outside a checkpoint folder is returned as it is (weights only, unverified).

    Raises:
        CheckpointError: nothing loadable there.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"no such checkpoint: {p}")
    if p.is_file():
        if (p.parent / MANIFEST_FILE).is_file() or _STEP_DIR.match(p.parent.name):
            return p.parent
        if p.suffix == ".safetensors":
            return p
        raise CheckpointError(
            f"{p} is not a checkpoint folder, a run folder or a .safetensors file"
        )
    if (p / MANIFEST_FILE).exists() or _STEP_DIR.match(p.name):
        return p
    found = latest_checkpoint(p)
    if found is None:
        n = len(list_checkpoints(_checkpoints_root(p)))
        raise CheckpointError(
            f"no valid checkpoint under {p}"
            + (f" ({n} found, none valid)" if n else " (expected checkpoints/step_*/ folders)")
        )
    return found


# --------------------------------------------------------------------------- loading


def _read_manifest(ckpt: Path) -> dict[str, Any]:
    path = ckpt / MANIFEST_FILE
    if not ckpt.is_dir():
        raise CheckpointError(f"{ckpt}: not a checkpoint folder")
    if not path.is_file():
        raise CheckpointError(
            f"{ckpt}: incomplete checkpoint (no {MANIFEST_FILE}: its write did not finish)"
        )
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        if manifest.get("format") != FORMAT or not isinstance(files, dict):
            raise ValueError(f"format {manifest.get('format')!r}, expected {FORMAT!r}")
        for info in files.values():
            int(info["size"]), str(info["sha256"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{ckpt}: corrupt {MANIFEST_FILE} ({exc})") from None
    return manifest


def _read_verified(ckpt: Path, manifest: Mapping[str, Any], name: str) -> bytes:
    info = manifest["files"].get(name)
    if info is None:
        raise CheckpointError(f"{ckpt}: {MANIFEST_FILE} does not list {name}")
    path = ckpt / name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{ckpt}: {name} is missing") from None
    if len(data) != int(info["size"]):
        raise CheckpointError(
            f"{path}: truncated or altered: {len(data)} bytes, the manifest says {info['size']}"
        )
    if _sha256(data) != info["sha256"]:
        raise CheckpointError(f"{path}: corrupt: its SHA-256 does not match the manifest")
    return data


def verify_checkpoint(path: str | Path) -> None:
    """Check a checkpoint folder without parsing it: manifest present, every file present with
    the recorded size and SHA-256.

    Raises:
        CheckpointError: naming the file and what is wrong.
    """
    ckpt = Path(path)
    manifest = _read_manifest(ckpt)
    for name in manifest["files"]:
        _read_verified(ckpt, manifest, name)


def _load_state_bytes(data: bytes, where: str) -> dict[str, Any]:
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{where}: refused to load: it holds Python objects other than tensors and plain "
            f"data (possibly code), which weights_only loading does not run ({first})"
        ) from None
    except Exception as exc:  # truncated zip, bad magic number, ...
        raise CheckpointError(f"{where}: unreadable training state ({exc})") from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{where}: the training state is a {type(state).__name__}, not a dict"
        )
    return state


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Read a training-state file (``training_state.pt``) with ``weights_only=True``.

    Raises:
        CheckpointError: unreadable, or refused because it would build arbitrary objects.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    return _load_state_bytes(data, str(path))


def _header_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob: 8 bytes of little-endian header length,
    then a JSON header."""
    if len(data) < 8:
        raise ValueError("shorter than the 8-byte header length")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError("header longer than the file")
    header = json.loads(data[8 : 8 + n])
    return {str(k): str(v) for k, v in (header.get("__metadata__") or {}).items()}


def _parse_weights(data: bytes, where: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors.torch import load as st_load

    try:
        return st_load(data), _header_metadata(data)
    except Exception as exc:  # SafetensorError, JSON errors, ...
        raise CheckpointError(f"{where}: unreadable safetensors file ({exc})") from None


def load_checkpoint(path: str | Path, *, training_state: bool = False) -> Checkpoint:
    """Load a checkpoint (see :func:`resolve_checkpoint` for what ``path`` may be).

    The files are verified against the manifest first; the weights are read from safetensors
    and, when ``training_state`` is True, the training state with ``weights_only=True``.

    Raises:
        CheckpointError: missing, incomplete, truncated, corrupt, or refused (see the module
            docstring); the message names the file.
    """
    ckpt = resolve_checkpoint(path)
    if ckpt.is_file():  # a bare weights file
        tensors, meta = _parse_weights(ckpt.read_bytes(), str(ckpt))
        state = None
        if training_state:
            raise CheckpointError(f"{ckpt}: a bare weights file has no training state")
    else:
        manifest = _read_manifest(ckpt)
        tensors, meta = _parse_weights(
            _read_verified(ckpt, manifest, WEIGHTS_FILE), str(ckpt / WEIGHTS_FILE)
        )
        state = None
        if training_state:
            state = _load_state_bytes(
                _read_verified(ckpt, manifest, STATE_FILE), str(ckpt / STATE_FILE)
            )
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{ckpt}: not a scoresde checkpoint (format {meta.get('format')!r}, expected "
            f"{FORMAT!r})"
        )
    model = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    ema = {k[len("ema.") :]: v for k, v in tensors.items() if k.startswith("ema.")}
    if not model:
        raise CheckpointError(f"{ckpt}: no model weights in the file")
    return Checkpoint(
        path=ckpt,
        step=int(meta.get("step", "0")),
        model=model,
        ema=ema or None,
        metadata=meta,
        training_state=state,
    )
