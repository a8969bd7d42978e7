"""workflow/setup.sh: one line per stage while it builds, nothing when the venv is current (no network: a stub python)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STUB = """#!/bin/sh
# stands in for .venv/bin/python: records each call, prints versions when asked
echo "$*" >> "$(dirname "$0")/../calls.log"
case "$*" in *torch.__version__*) echo "torch 0, verl 0" ;; esac
exit 0
"""


def test_setup_prints_one_line_per_stage_then_nothing_when_current(tmp_path):
    (tmp_path / "workflow").mkdir()
    shutil.copy(REPO / "workflow" / "setup.sh", tmp_path / "workflow" / "setup.sh")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    stub = tmp_path / ".venv" / "bin" / "python"
    stub.parent.mkdir(parents=True)
    stub.write_text(STUB)
    stub.chmod(0o755)
    first = subprocess.run(["bash", "workflow/setup.sh"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        "setup: .venv: updating (pyproject.toml or setup.sh changed)",
        "setup: .venv: pip",
        "setup: .venv: torch 2.13.0 (CPU)",
        "setup: .venv: pip install -e .[test] (the longest stage: the pinned stack)",
        "setup: .venv: pip check",
        "setup: .venv: import check (torch, verl, trl, lm_eval, math_verify, hydra, wandb, this project)",
        "setup: .venv ready (torch 0, verl 0)",
    ]
    installs = [c for c in (tmp_path / ".venv" / "calls.log").read_text().splitlines() if " install " in c]
    assert [c.split(" -q ")[-1] for c in installs] == ["--upgrade pip>=24", "torch==2.13.0", "-e .[test]"]
    again = subprocess.run(["bash", "workflow/setup.sh"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")  # current: silent and instant
