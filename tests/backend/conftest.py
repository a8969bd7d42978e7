"""Shared assets for the backend tests: the project's tiny Qwen2 policy and a small Countdown data set."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """miniature.tiny_model's policy: real Qwen2.5 tokenizer cut to 8,192 ranks, 2 layers, hidden 64."""
    from miniature.tiny_model import build

    return build(tmp_path_factory.mktemp("tiny_model") / "policy", vocab_size=8192, seed=0, kind="policy")


@pytest.fixture(scope="session")
def countdown_data(tmp_path_factory) -> Path:
    """The miniature's Countdown (three numbers 1..9, + and *: its prompts fit the tiny profile's 144-token budget),
    48 train and 4 test rows made by `evaluation.tasks prepare`."""
    out = tmp_path_factory.mktemp("data") / "countdown"
    subprocess.run([PYTHON, "-m", "evaluation.tasks", "prepare", "countdown", "--generate", "--numbers", "3",
                    "--max-number", "9", "--max-target", "50", "--ops", "+*", "--train-size", "48", "--test-size", "4",
                    "--seed", "0", "--out", str(out)], check=True, capture_output=True, cwd=REPO)
    return out
