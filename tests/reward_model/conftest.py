"""Shared fixtures for the reward-model tests: a tiny random reward model and synthetic preference data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TOPICS = ["bake bread", "fix a bike", "learn chess", "plant tomatoes", "write a poem", "sort a list",
          "tie a knot", "brew tea", "paint a wall", "save money", "clean a pan", "train a dog"]


def preference_records(n: int = 48) -> list[dict]:
    """UltraFeedback-schema pairs (chat-message lists) where the chosen answer is always the polite, helpful one."""
    records = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        prompt = f"How do I {topic}? (question {i})"
        good = f"Sure! Here is a clear, friendly step-by-step guide to {topic}: first prepare, then practise, and finally review."
        bad = f"No. Figure out how to {topic} yourself."
        records.append({
            "chosen": [{"role": "user", "content": prompt}, {"role": "assistant", "content": good}],
            "rejected": [{"role": "user", "content": prompt}, {"role": "assistant", "content": bad}],
            "score_chosen": 9.0,
            "score_rejected": 2.0,
        })
    return records


@pytest.fixture(scope="session")
def prefs_path(tmp_path_factory) -> Path:
    """48 synthetic preference records as jsonl, in trl-lib/ultrafeedback_binarized's schema."""
    path = tmp_path_factory.mktemp("prefs") / "prefs.jsonl"
    with path.open("w") as f:
        for rec in preference_records():
            f.write(json.dumps(rec) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_rm_dir(tmp_path_factory) -> Path:
    """An untrained tiny Qwen2ForSequenceClassification (8k vocab) saved with its tokenizer."""
    from miniature.tiny_model import build

    return build(tmp_path_factory.mktemp("tiny_rm"), vocab_size=8192, seed=0, kind="reward")
