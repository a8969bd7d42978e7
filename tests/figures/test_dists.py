"""Figure 1 data: next-token distributions extracted from real (tiny) policies, via the API and the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from figures.__main__ import main
from figures.next_token import extract, models_from_runs


@pytest.fixture(scope="module")
def policies(tmp_path_factory) -> dict[str, Path]:
    """A tiny base policy, and two 'trained' ones: final-norm gain 0.3 (flatter) and 3.0 (sharper)."""
    import torch
    from transformers import AutoModelForCausalLM

    from miniature.tiny_model import build

    root = tmp_path_factory.mktemp("policies")
    base = build(root / "base", vocab_size=1024, seed=0, kind="policy")
    out = {"base": base}
    for stage, gain in (("entropy", 0.3), ("tre", 3.0)):
        model = AutoModelForCausalLM.from_pretrained(base)
        with torch.no_grad():
            model.model.norm.weight.mul_(gain)
        shutil.copytree(base, root / stage)
        model.save_pretrained(root / stage)
        out[stage] = root / stage
    return out


def test_extract_writes_a_sorted_distribution_per_stage(policies, tmp_path):
    path = extract({k: str(v) for k, v in policies.items()}, [{"role": "user", "content": "What is 1 + 1?"}], tmp_path, keep=50)
    df = pd.read_csv(path)
    assert list(df["stage"].unique()) == ["base", "entropy", "tre"] and len(df) == 150
    for stage, d in df.groupby("stage"):
        assert d["rank"].tolist() == list(range(1, 51))
        assert d["prob"].is_monotonic_decreasing and d["vocab_size"].iloc[0] == 1024 + 22  # 1,024 ranks + 22 specials
        assert d["prob"].sum() + d["tail_beyond"].iloc[0] == pytest.approx(1.0, abs=1e-6)
        assert d["context"].iloc[0].endswith("<|im_start|>assistant\n")
    top1 = df[df["rank"] == 1].set_index("stage")["prob"]
    assert top1["entropy"] < top1["base"] < top1["tre"]  # flatter / sharper as built
    sizes = df.groupby("stage")["nucleus_size"].first()
    assert sizes["tre"] <= sizes["base"] <= sizes["entropy"] <= 256


def test_dists_cli_from_a_runs_dir(policies, tmp_path):
    runs = tmp_path / "runs"
    for method, stage in (("entropy", "entropy"), ("tre_p", "tre")):
        d = runs / "countdown" / "tiny" / method / "seed0"
        shutil.copytree(policies[stage], d / "checkpoints" / "global_step_4" / "actor" / "huggingface")
        (d / "config.json").write_text(json.dumps({"resolved": {"actor_rollout_ref": {"model": {"path": str(policies["base"])}}}}))
    assert models_from_runs(runs, "countdown", "tiny", 0, "tre_p") == {
        "base": str(policies["base"]),
        "entropy": str(runs / "countdown/tiny/entropy/seed0/checkpoints/global_step_4/actor/huggingface"),
        "tre": str(runs / "countdown/tiny/tre_p/seed0/checkpoints/global_step_4/actor/huggingface")}
    results = tmp_path / "results"
    assert main(["dists", "--runs", str(runs), "--prompt", "Using 1 and 2, make 3.", "--keep", "20", "--results", str(results)]) == 0
    assert main(["figure1", "--results", str(results), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "figure1.png").stat().st_size > 10_000


def test_dists_store_repo_relative_paths_and_name_the_runs(policies, tmp_path, monkeypatch):
    # A clone at tmp_path whose entropy run names its base model by absolute path (as verl's config does).
    monkeypatch.chdir(tmp_path)
    shutil.copytree(policies["base"], tmp_path / "models" / "tiny" / "warm")
    for method, stage in (("entropy", "entropy"), ("tre_k", "tre")):
        d = tmp_path / "runs" / "math" / "tiny" / method / "seed2"
        shutil.copytree(policies[stage], d / "checkpoints" / "global_step_4" / "actor" / "huggingface")
        (d / "config.json").write_text(json.dumps({"resolved": {"actor_rollout_ref": {"model": {
            "path": str(tmp_path / "models" / "tiny" / "warm")}}}}))
    assert main(["dists", "--runs", "runs", "--task", "math", "--seed", "2", "--tre-method", "tre_k", "--prompt",
                 "What is $1 + 1$?", "--response-prefix", "$1 + 1 =", "--keep", "3", "--results", "results"]) == 0
    df = pd.read_csv(tmp_path / "results" / "next_token_dists.csv", keep_default_na=False)
    firsts = df.groupby("stage", sort=False).first()
    assert firsts["model"].tolist() == ["models/tiny/warm", "runs/math/tiny/entropy/seed2/checkpoints/global_step_4/actor/huggingface",
                                        "runs/math/tiny/tre_k/seed2/checkpoints/global_step_4/actor/huggingface"]
    assert str(tmp_path) not in (tmp_path / "results" / "next_token_dists.csv").read_text()
    assert firsts["method"].tolist() == ["", "entropy", "tre_k"] and firsts["seed"].tolist() == ["", "2", "2"]
    assert set(df["prompt"]) == {"What is $1 + 1$?"} and set(df["response_prefix"]) == {"$1 + 1 ="}


def test_dists_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["dists", "--base", "x"])
    assert e.value.code == 2 and "give --runs RUNS_DIR, or all of --base, --entropy and --tre" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["dists", "--runs", str(tmp_path), "--prompt", "hi"])
    assert e.value.code == 2 and "config.json" in capsys.readouterr().err
