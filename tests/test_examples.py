"""Every script in ``examples/`` runs in its smoke mode (``--smoke``) and exits with status 0.

Scripts are discovered, so a new example is covered as soon as it exists; each checks its own
results with ``assert`` (orders of convergence, exact log-densities, property suites...), so a
zero exit status means those checks passed. Each runs in a fresh process (an example may
register a solver or set torch's thread count), with one intra-op thread. Examples whose smoke
run takes more than about 10 s on a 2-core CPU are marked slow; CI runs them as well
(``.ci/run``: ``pytest tests/test_examples.py tests/test_demo.py -m slow``), so every
example runs in CI.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))

# smoke runs measured at over ~10 s on the 2-core development machine (discrete_model.py: 12 s;
# the others 3-8 s); CI runs these too, in a phase of their own (.ci/run)
SLOW = {"discrete_model.py"}


def _params() -> list[object]:
    return [
        pytest.param(p, id=p.name, marks=[pytest.mark.slow] if p.name in SLOW else [])
        for p in EXAMPLES
    ]


def test_examples_are_discovered() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"quickstart.py", "likelihood.py", "custom_schedule.py", "discrete_model.py"} <= names


@pytest.mark.parametrize("script", _params())
def test_example_runs_in_smoke_mode(script: Path, tmp_path: Path) -> None:
    text = script.read_text()
    assert '"--smoke"' in text, f"{script.name} must accept --smoke (CI runs it that way)"
    assert text.lstrip().startswith('"""'), f"{script.name} must open with a docstring"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, str(script), "--smoke"],
        cwd=tmp_path,  # whatever an example writes lands in the test's folder
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (
        f"{script.name} --smoke exited with {proc.returncode}\n"
        f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
    )
    assert proc.stdout.strip(), f"{script.name} printed nothing"
