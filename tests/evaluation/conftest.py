"""A tiny random Qwen2 policy and a run directory with a checkpoint and a MATH-style test parquet."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

PROBLEMS = [("Solve for $x$: $3x + 7 = 22$.", "5"), ("What is $1 + 1$?", "2"), ("Simplify $\\sqrt{72}$.", "6\\sqrt{2}")]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from miniature.tiny_model import build

    return build(tmp_path_factory.mktemp("tiny") / "policy", vocab_size=1024, seed=0, kind="policy")


def write_parquet(path: Path, task: str = "math") -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from evaluation.tasks.math_lighteval import DATA_SOURCE, INSTRUCTION

    rows = [{"data_source": DATA_SOURCE if task == "math" else task,
             "prompt": [{"role": "user", "content": f"{p} {INSTRUCTION}"}], "ability": "math",
             "reward_model": {"style": "rule", "ground_truth": a}, "extra_info": {"split": "test", "index": i}}
            for i, (p, a) in enumerate(PROBLEMS)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture
def run_dir(tmp_path, tiny_model) -> Path:
    d = tmp_path / "runs" / "math" / "tiny" / "ppo" / "seed0"
    hf = d / "checkpoints" / "global_step_2" / "actor" / "huggingface"
    shutil.copytree(tiny_model, hf)
    data = write_parquet(tmp_path / "data" / "math" / "test.parquet")
    (d / "config.json").write_text(json.dumps({
        "task": "math", "size": "tiny", "method": "ppo", "seed": 0, "profile": "tiny",
        "resolved": {"data": {"val_files": str(data), "train_files": str(data), "max_response_length": 8},
                     "actor_rollout_ref": {"model": {"path": str(tiny_model)}}}}))
    return d
