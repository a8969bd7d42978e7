"""Run directories written through the backend's run-directory writers, for the figures tests."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import pytest

VAL = {"math": "val-core/math/reward/mean@1", "countdown": "val-core/countdown/reward/mean@1"}


def write_run(root: Path, task: str, size: str, method: str, seed: int, val: dict[int, float],
              train: Optional[dict[int, dict[str, float]]] = None, summary: bool = True) -> Path:
    """One run dir through the backend's own writers: config.json, metrics.jsonl (val + train rows), launches.jsonl
    and the summary.json that `tre.backend.launch.train` writes (rundir.summary_record)."""
    from tre.backend import rundir

    d = root / task / size / method / f"seed{seed}"
    d.mkdir(parents=True)
    config = {"task": task, "size": size, "method": method, "seed": seed, "profile": "tiny",
              "method_spec": {"name": method}, "overrides": [f"trainer.seed={seed}"], "resolved": {"x": 1},
              "git_commit": "abc123", "packages": {"torch": "2.13.0"}, "device": "cpu", "created": "2026-11-24T00:00:00Z"}
    rundir.atomic_write_json(d / rundir.CONFIG, config)
    log = rundir.MetricsLog(d / rundir.METRICS)
    for s in sorted(set(val) | set(train or {})):
        log.log({**(train or {}).get(s, {}), **({VAL[task]: val[s]} if s in val else {})}, step=s)
    if summary:
        launch = rundir.start_launch(d, start_step=0, now=1e9)
        rundir.end_launch(d, launch, status="completed", now=1e9 + 10.0 + seed)
        rundir.atomic_write_json(d / rundir.SUMMARY, rundir.summary_record(d, task, size, method, seed, VAL[task]))
    return d


def train_rows(base: float) -> dict[int, dict[str, float]]:
    """Training metrics of steps 1 and 2 (the entropy-dynamics and length metrics)."""
    return {s: {"actor/entropy": base + s, "actor/top1_prob_sum": 0.5 + 0.1 * s, "actor/tre_p_size": 10.0 * s,
                "actor/tail_mass_p": 0.01 * s, "actor/tail_mass_k": 0.1 * s, "response_length/mean": 20.0 + s,
                "actor/pg_loss": -0.1, "timing_s/step": 1.5}
            for s in (1, 2)}


# final (step 2) scores: math ppo 0.2 / 0.3 / 0.4, math tre_k 0.5 / 0.7 / 0.6, math entropy 0.1 (one seed),
# countdown ppo 0.15 / 0.25
GRID = [
    ("math", "ppo", 0, {0: 0.0, 2: 0.2}), ("math", "ppo", 1, {0: 0.0, 2: 0.3}), ("math", "ppo", 2, {0: 0.1, 2: 0.4}),
    ("math", "tre_k", 0, {0: 0.0, 2: 0.5}), ("math", "tre_k", 1, {0: 0.8, 2: 0.7}), ("math", "tre_k", 2, {0: 0.0, 2: 0.6}),
    ("math", "entropy", 0, {0: 0.0, 2: 0.1}),
    ("countdown", "ppo", 0, {0: 0.0, 2: 0.15}), ("countdown", "ppo", 1, {0: 0.0, 2: 0.25}),
]


@pytest.fixture
def make_run() -> Callable[..., Path]:
    return write_run


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for i, (task, method, seed, val) in enumerate(GRID):
        write_run(root, task, "tiny", method, seed, val, train_rows(float(i)))
    return root


@pytest.fixture
def archive(tmp_path: Path, runs_dir: Path) -> Path:
    from figures.collect import collect

    results = tmp_path / "results"
    report = collect(runs_dir, results)
    assert len(report.collected) == len(GRID) and not report.skipped
    return results
