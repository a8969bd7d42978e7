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


def wandb_records(run_dir: Path) -> list[list[dict]]:
    """The records of every offline wandb run under <run_dir>/wandb/, one list per launch in start order, read by wandb's
    own reader (`wandb leet inspect --json`)."""
    import json

    wandb = Path(PYTHON).with_name("wandb")
    legs = []
    for leg in sorted((run_dir / "wandb").glob("offline-run-*")):
        out = subprocess.run([str(wandb), "leet", "inspect", str(leg), "--json"], capture_output=True, text=True,
                             timeout=120, check=True).stdout
        legs.append([json.loads(line) for line in out.splitlines() if line.strip()])
    start = lambda records: next(r["run"]["start_time"] for r in records if r.get("type") == "run")  # noqa: E731
    return sorted(legs, key=start)


def wandb_view(run_dir: Path) -> tuple[set[str], list[dict], dict]:
    """What wandb shows once the run dir's offline launches are synced: (their run ids, the history as metrics.jsonl
    rows, the summary). A launch's branch point (a rewind, `resume_from`) drops the steps after it, as the server does."""
    ids, history, summary = set(), {}, {}
    for records in wandb_records(run_dir):
        for r in records:
            if r.get("type") == "run":
                ids.add(r["run"]["run_id"])
                point = r["run"].get("branch_point")
                if point:
                    assert point["run"] == r["run"]["run_id"] and point["metric"] == "_step", point
                    history = {s: row for s, row in history.items() if s <= point["value"]}
            elif r.get("type") == "history":
                step = int(r["history"]["step"]["num"])
                assert step not in history and all(s < step for s in history), f"step {step} out of order"
                history[step] = {"step": step, **{k: v for k, v in r["history"]["item"].items() if not k.startswith("_")}}
            elif r.get("type") == "summary":
                summary.update({k: v for k, v in r["summary"].get("update", {}).items() if not k.startswith("_")})
    return ids, [history[s] for s in sorted(history)], summary
