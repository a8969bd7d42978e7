"""collect: tidy tables, idempotence, provenance, and broken run dirs reported by path."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from figures.collect import (SkipRun, collect, config_hash, infer_val_metric, parse_metrics_lines, tidy_metrics,
                             val_summary)


def test_parse_and_tidy_keep_the_last_value_of_a_repeated_step():
    rows = parse_metrics_lines('{"step": 0, "a": 1}\n{"step": 1, "a": 2.5, "b": true, "c": "x"}\n{"step": 1, "a": 3}\n')
    assert tidy_metrics(rows) == {(0, "a"): 1.0, (1, "a"): 3.0}


@pytest.mark.parametrize("text, why", [
    ("", "empty"),
    ('{"step": 0, "a": 1}\n{"step": 1, "a"', "truncated at line 2"),
    ('{"step": 0, "a": 1}\n{"step": 1, "a"\n', "truncated at line 2"),
    ('{"step": 0, "a": 1}\nnot json\n{"step": 2}\n', "corrupt at line 2"),
    ('{"a": 1}\n', "line 1 has no integer 'step'"),
])
def test_broken_metrics_files_are_rejected_with_the_reason(text, why):
    with pytest.raises(SkipRun, match=f"^m.jsonl: {why}$"):
        parse_metrics_lines(text, "m.jsonl")


def test_val_summary_final_best_and_first_best_step():
    values = {(0, "v"): 0.1, (2, "v"): 0.5, (4, "v"): 0.5, (6, "v"): 0.3, (6, "other"): 9.0}
    assert val_summary(values, "v") == (0.3, 0.5, 2)
    final, best, step = val_summary(values, "missing")
    assert math.isnan(final) and math.isnan(best) and step is None


def test_infer_val_metric_needs_exactly_one_candidate():
    assert infer_val_metric(["actor/entropy", "val-core/hh/reward/mean@1"]) == "val-core/hh/reward/mean@1"
    assert infer_val_metric(["val-core/a/reward/mean@1", "val-core/b/reward/mean@1"]) is None


def test_config_hash_ignores_where_and_when_but_not_what():
    a = {"task": "math", "seed": 0, "overrides": ["x=1"], "git_commit": "a", "created": "t1", "device": "cpu", "packages": {}}
    b = dict(a, git_commit="b", created="t2", device="cuda:H100", packages={"torch": "2"})
    assert config_hash(a) == config_hash(b) and len(config_hash(a)) == 12
    assert config_hash(a) != config_hash(dict(a, overrides=["x=2"]))


def test_collect_writes_tidy_tables(archive):
    metrics = pd.read_csv(archive / "metrics.csv")
    runs = pd.read_csv(archive / "runs.csv")
    assert list(metrics.columns) == ["task", "size", "method", "seed", "step", "metric", "value", "git_commit",
                                     "config_hash", "provenance"]
    # 9 runs x (2 val rows + 2 train steps x 8 metrics)
    assert len(metrics) == 9 * (2 + 16)
    assert set(metrics["provenance"]) == {"ours:tiny:cpu"} and set(metrics["git_commit"]) == {"abc123"}
    row = runs[(runs["task"] == "math") & (runs["method"] == "tre_k") & (runs["seed"] == 1)].iloc[0]
    assert (row["final_val_score"], row["best_val_score"], row["best_step"], row["last_step"]) == (0.7, 0.8, 0, 2)
    assert row["status"] == "completed" and row["val_metric"] == "val-core/math/reward/mean@1" and row["run_dir"] == "math/tiny/tre_k/seed1"
    v = metrics[(metrics["method"] == "ppo") & (metrics["task"] == "countdown") & (metrics["seed"] == 1)
                & (metrics["metric"] == "response_length/mean")]
    assert v[["step", "value"]].values.tolist() == [[1, 21.0], [2, 22.0]]


def test_recollect_is_idempotent_and_replaces_reruns(archive, runs_dir, make_run):
    before = {p: (archive / p).read_bytes() for p in ("metrics.csv", "metrics.parquet", "runs.csv", "eval.csv")}
    collect(runs_dir, archive)
    assert {p: (archive / p).read_bytes() for p in before} == before
    # A second runs dir with a re-run of one seed and a new method: the re-run replaces, the rest accumulates.
    other = runs_dir.parent / "runs2"
    make_run(other, "math", "tiny", "ppo", 0, {0: 0.0, 2: 0.9})
    make_run(other, "math", "tiny", "new_method", 0, {0: 0.0, 2: 0.45})
    collect(other, archive)
    runs = pd.read_csv(archive / "runs.csv")
    assert len(runs) == 10
    assert runs[(runs["method"] == "ppo") & (runs["task"] == "math") & (runs["seed"] == 0)]["final_val_score"].tolist() == [0.9]


def test_broken_runs_are_reported_by_path_and_skipped(tmp_path, make_run):
    root = tmp_path / "runs"
    make_run(root, "math", "tiny", "ppo", 0, {0: 0.0, 2: 0.2})
    trunc = make_run(root, "math", "tiny", "ppo", 1, {0: 0.0, 2: 0.2})
    (trunc / "metrics.jsonl").write_text('{"step": 0, "val-core/math/reward/mean@1": 0.0}\n{"step": 2, "val-')
    gone = make_run(root, "math", "tiny", "ppo", 2, {0: 0.0, 2: 0.2})
    (gone / "metrics.jsonl").unlink()
    report = collect(root, tmp_path / "results")
    assert report.collected == ["math/tiny/ppo/seed0"]
    assert report.skipped == [(str(trunc), f"{trunc / 'metrics.jsonl'}: truncated at line 2"),
                              (str(gone), f"{gone / 'metrics.jsonl'}: missing")]


def test_incomplete_run_is_collected_with_its_status_and_inferred_val_metric(tmp_path, make_run):
    make_run(tmp_path / "runs", "math", "tiny", "ppo", 0, {0: 0.1, 2: 0.3}, summary=False)
    collect(tmp_path / "runs", tmp_path / "results")
    run = pd.read_csv(tmp_path / "results" / "runs.csv").iloc[0]
    assert (run["status"], run["val_metric"], run["final_val_score"]) == ("incomplete", "val-core/math/reward/mean@1", 0.3)


def test_eval_scores_are_collected(tmp_path, make_run):
    d = make_run(tmp_path / "runs", "math", "tiny", "ppo", 0, {0: 0.1, 2: 0.3})
    (d / "eval" / "2").mkdir(parents=True)
    (d / "eval" / "2" / "scores.json").write_text(json.dumps({
        "step": 2, "split": "test", "n": 4, "metrics": {"pass@1": 0.25, "pass@4": 0.5, "mean@4": 0.25},
        "lm_eval": {"task": "tre_math_local", "metrics": {"exact_match": 0.0, "math_verify": 0.5}}}))
    collect(tmp_path / "runs", tmp_path / "results")
    ev = pd.read_csv(tmp_path / "results" / "eval.csv")
    assert ev[["metric", "value"]].values.tolist() == [["lm_eval/exact_match", 0.0], ["lm_eval/math_verify", 0.5],
                                                       ["mean@4", 0.25], ["pass@1", 0.25], ["pass@4", 0.5]]
    assert set(ev["n"]) == {4} and set(ev["split"]) == {"test"}


def test_recollect_keeps_all_digit_commits_verbatim(tmp_path, make_run):
    d = make_run(tmp_path / "runs", "math", "tiny", "ppo", 0, {0: 0.1, 2: 0.3})
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "git_commit": "0012345"}))
    make_run(tmp_path / "runs2", "math", "tiny", "ppo", 1, {0: 0.1, 2: 0.3})
    collect(tmp_path / "runs", tmp_path / "results")
    collect(tmp_path / "runs2", tmp_path / "results")  # merges with the rows already on disk
    runs = pd.read_csv(tmp_path / "results" / "runs.csv", dtype={"git_commit": str})
    assert runs["git_commit"].tolist() == ["0012345", "abc123"]
