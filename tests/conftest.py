"""Shared pytest configuration: hypothesis profiles, the ``gpu`` marker, devices.

Hypothesis profiles (select with ``HYPOTHESIS_PROFILE=<name>`` or ``--hypothesis-profile``):

- ``ci``: 200 examples, no deadline, derandomized (the same examples every run), no database.
  Default when the ``CI`` environment variable is set.
- ``dev``: 200 random examples, no deadline. Default otherwise.
- ``quick``: 20 examples, no deadline, for fast local iteration.

Tests marked ``@pytest.mark.gpu`` are skipped when ``torch.cuda.is_available()`` is false.
Tests that should run on every available device take the ``device`` fixture (``"cpu"``, plus
``"cuda"`` when available) or loop over ``DEVICES``.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

# --------------------------------------------------------------------------- hypothesis

settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.register_profile("quick", max_examples=20, deadline=None)

_PROFILES = ("ci", "dev", "quick")


def _default_profile() -> str:
    requested = os.environ.get("HYPOTHESIS_PROFILE")
    if requested:
        if requested not in _PROFILES:
            raise ValueError(
                f"HYPOTHESIS_PROFILE={requested!r} is not a known profile; "
                f"choose one of {', '.join(_PROFILES)}"
            )
        return requested
    return "ci" if os.environ.get("CI") else "dev"


settings.load_profile(_default_profile())

# --------------------------------------------------------------------------- devices

CUDA_AVAILABLE: bool = torch.cuda.is_available()
DEVICES: list[str] = ["cpu", "cuda"] if CUDA_AVAILABLE else ["cpu"]
_GPU_SKIP_REASON = "needs CUDA (marked gpu): torch.cuda.is_available() is False"


def available_devices() -> list[str]:
    """Names of the torch devices tests can run on here: ``"cpu"``, plus ``"cuda"`` if present."""
    return list(DEVICES)


@pytest.fixture(
    params=[pytest.param(d, marks=pytest.mark.gpu) if d == "cuda" else d for d in DEVICES]
)
def device(request: pytest.FixtureRequest) -> str:
    """Each available device in turn (the ``cuda`` case carries the ``gpu`` marker)."""
    return str(request.param)


# --------------------------------------------------------------------------- hooks


@pytest.fixture
def keep_global_rng():
    """Give back the global RNG states (torch, NumPy, Python) that a test changes: training
    and the command line seed them (dropout draws from them). Modules that train use it for
    every test: ``pytestmark = pytest.mark.usefixtures("keep_global_rng")``."""
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    with torch.random.fork_rng(devices=[]):
        yield
    np.random.set_state(np_state)  # noqa: NPY002
    random.setstate(py_state)


def pytest_configure(config: pytest.Config) -> None:
    # Under pytest-xdist, share the cores between workers instead of letting every worker start
    # one intra-op thread per core (oversubscription makes CPU tests several times slower).
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))


def pytest_report_header(config: pytest.Config) -> str:
    current = getattr(settings, "get_current_profile_name", None)  # newer hypothesis only
    profile = current() if current is not None else "?"
    return (
        f"torch {torch.__version__}, devices: {', '.join(DEVICES)}, hypothesis profile: {profile}"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if CUDA_AVAILABLE:
        return
    skip_gpu = pytest.mark.skip(reason=_GPU_SKIP_REASON)
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip_gpu)
