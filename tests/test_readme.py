"""The README works as written.

* the two set-up commands are Makefile targets (``make -n`` resolves them);
* the Python example runs, in a quick form (100 training steps, a looser likelihood solve),
  and produces what it claims: samples of the right shape and finite bits/dim;
* every ``scoresde`` command line in it parses with the real parser, and the files it names
  exist.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from scoresde import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


def _section(title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert m is not None, f"README has no section '## {title}'"
    return m.group(1)


def test_the_two_setup_commands_are_make_targets() -> None:
    block = re.search(r"```bash\n(.*?)```", _section("Set-up on a fresh machine"), re.S)
    assert block is not None
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    commands = [c for c in commands if c]
    assert commands == ["make demo", "make test"]
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    for cmd in commands:
        dry = subprocess.run(
            [*shlex.split(cmd), "-n", "VENV=.venv-never-created"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert dry.returncode == 0, dry.stderr
    dry = subprocess.run(
        ["make", "-n", "demo", "VENV=.venv-never-created"], cwd=ROOT, capture_output=True, text=True
    )
    assert "scoresde demo" in dry.stdout  # the target runs the demo


def test_the_python_example_runs() -> None:
    code = _blocks("python")
    example = [c for c in code if "sd.log_likelihood" in c and "sd.sample" in c]
    assert len(example) == 1, "one Python example trains, samples and computes bits/dim"
    src = example[0]
    body = [
        line
        for line in src.splitlines()
        if line.strip() and not line.startswith(("#", "import ", "from "))
    ]
    assert len(body) <= 10, f"the example has {len(body)} lines besides its imports"
    # the quick form: 100 training steps, the likelihood on 100 points with rtol = atol = 1e-3
    quick = src.replace("range(2000)", "range(100)")
    quick = quick.replace(
        "sd.log_likelihood(model, ds.test[:500])",
        "sd.log_likelihood(model, ds.test[:100], rtol=1e-3, atol=1e-3)",
    )
    assert quick.count("range(100)") == 1 and "rtol=1e-3" in quick, "the example changed"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scope: dict[str, object] = {}
        exec(compile(quick, "README.md", "exec"), scope)
    finally:
        torch.set_num_threads(threads)
    x, bpd = scope["x"], scope["bpd"]
    assert isinstance(x, torch.Tensor) and x.shape == (1000, 2)
    assert bool(torch.isfinite(x).all())
    assert isinstance(bpd, torch.Tensor) and bpd.ndim == 0 and bool(torch.isfinite(bpd))


def test_every_command_line_parses() -> None:
    parser = cli.build_parser()
    seen = set()
    for block in _blocks("bash"):
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            words = shlex.split(line) if line else []
            if not words:
                continue
            if words[0].endswith("scoresde"):
                args = words[1:]
            elif words[0] == "torchrun" and "scoresde.cli" in words:
                args = words[words.index("scoresde.cli") + 1 :]
            else:
                continue
            ns = parser.parse_args(args)  # SystemExit on a bad command line
            seen.add(ns.command)
            config = getattr(ns, "config", None)
            if config is not None:
                assert (ROOT / config).is_file(), config
    assert {"train", "sample", "likelihood", "demo"} <= seen


def test_links_to_the_docs_exist() -> None:
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        if target.startswith("http"):
            continue
        assert (ROOT / target).exists(), target
