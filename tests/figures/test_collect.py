"""collect: tidy tables, idempotence, provenance, scores from summary.json, and broken run dirs reported by path."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from figures.collect import collect, config_hash, read_run, tidy_metrics
from figures.common import PROVENANCE_FILE
from tre.backend.rundir import parse_metrics, summarize

REPO = Path(__file__).resolve().parents[2]


def test_parse_and_tidy_keep_the_last_value_of_a_repeated_step():
    rows = parse_metrics('{"step": 0, "a": 1}\n{"step": 1, "a": 2.5, "b": true, "c": "x"}\n{"step": 1, "a": 3}\n')
    assert tidy_metrics(rows) == {(0, "a"): 1.0, (1, "a"): 3.0}


def _old_scores(run_dir: Path) -> tuple[str, float, float, Optional[int]]:
    """collect's own derivation of a run's scores before summary.json became their one source (verbatim, reduced)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().split("\n")[:-1] if line.strip()]
    values: dict[tuple[int, str], float] = {}
    for row in rows:
        for key, value in row.items():
            if key != "step" and not isinstance(value, bool) and isinstance(value, (int, float)):
                values[(row["step"], key)] = float(value)
    summary = json.loads((run_dir / "summary.json").read_text())
    found = sorted({m for _, m in values if re.match(r"^val-core/.+/reward/mean@1$", m)})
    val_metric = summary.get("val_metric") or (found[0] if len(found) == 1 else None)
    series = sorted((s, v) for (s, m), v in values.items() if m == val_metric and not math.isnan(v))
    if not series:
        return val_metric or "", math.nan, math.nan, None
    best = max(v for _, v in series)
    return val_metric or "", series[-1][1], best, next(s for s, v in series if v == best)


def _same(a: Any, b: Any) -> bool:
    return (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)) or (a == b and type(a) is type(b))


def test_scores_of_completed_runs_equal_the_old_derivation(tmp_path, runs_dir, make_run):
    # the grid, plus the edge cases: ties (first best step), a best before the last, non-finite and missing
    # validations, no validation at all
    root = tmp_path / "edge"
    make_run(root, "math", "tiny", "ppo", 0, {0: 0.5, 2: 0.5, 4: 0.5})
    make_run(root, "math", "tiny", "ppo", 1, {0: 0.1, 2: 0.9, 4: 0.3, 6: 0.9, 8: 0.2})
    make_run(root, "math", "tiny", "ppo", 2, {0: 0.1, 2: float("nan"), 4: float("inf")})
    make_run(root, "math", "tiny", "ppo", 3, {}, {1: {"actor/entropy": 1.0}, 2: {"actor/entropy": 0.5}})
    make_run(root, "countdown", "tiny", "ppo", 4, {1: 1 / 3, 3: 2 / 3, 5: 0.1 + 0.2})
    dirs = sorted(runs_dir.rglob("seed*")) + sorted(root.rglob("seed*"))
    assert len(dirs) == 14
    for d in dirs:
        run = read_run(d, d.name).run
        got = (run["val_metric"], run["final_val_score"], run["best_val_score"], run["best_step"])
        assert all(_same(a, b) for a, b in zip(got, _old_scores(d))), (d, got, _old_scores(d))
        assert run["status"] == "completed"


def test_the_archived_scores_are_the_summary_rule_over_the_archived_validations():
    # results/ was collected from completed runs: its scores equal summarize() of the val series it holds, bit for bit
    def table(name: str) -> list[dict[str, str]]:
        with open(REPO / "results" / name, newline="") as f:
            return list(csv.DictReader(f))

    key = ("task", "size", "method", "seed", "provenance")
    series: dict[tuple, list[dict[str, Any]]] = {}
    for m in table("metrics.csv"):
        series.setdefault(tuple(m[k] for k in key), []).append({"step": int(m["step"]), m["metric"]: float(m["value"])})
    runs = table("runs.csv")
    assert runs and {r["status"] for r in runs} == {"completed"}
    for r in runs:
        got = summarize(series[tuple(r[k] for k in key)], r["val_metric"])
        assert (got["val_metric"], got["final_val_score"], got["best_val_score"], got["best_step"]) == \
            (r["val_metric"], float(r["final_val_score"]), float(r["best_val_score"]), int(r["best_step"])), r["run_dir"]


def test_config_hash_ignores_where_and_when_but_not_what():
    a = {"task": "math", "seed": 0, "overrides": ["x=1"], "git_commit": "a", "created": "t1", "device": "cpu", "packages": {}}
    b = dict(a, git_commit="b", created="t2", device="cuda:H100", packages={"torch": "2"})
    assert config_hash(a) == config_hash(b) and len(config_hash(a)) == 12
    assert config_hash(a) != config_hash(dict(a, overrides=["x=2"]))


def test_collect_writes_tidy_tables(archive):
    metrics = pd.read_csv(archive / "metrics.csv")
    runs = pd.read_csv(archive / "runs.csv")
    assert list(metrics.columns) == ["task", "size", "method", "seed", "step", "metric", "value", "provenance"]
    # 9 runs x (2 val rows + 2 train steps x 7 metrics); timing_s/step goes to provenance.json
    assert len(metrics) == 9 * (2 + 14) and "timing_s/step" not in set(metrics["metric"])
    assert set(metrics["provenance"]) == {"ours:tiny:cpu"}
    prov = json.loads((archive / PROVENANCE_FILE).read_text())["ours:tiny:cpu"]
    assert len(prov) == 9 and prov["math/tiny/ppo/seed1"] == {
        "git_commit": "abc123", "config_hash": prov["math/tiny/ppo/seed1"]["config_hash"], "wall_time_s": 11.0,
        "metrics": [{"step": 1, "timing_s/step": 1.5}, {"step": 2, "timing_s/step": 1.5}]}
    row = runs[(runs["task"] == "math") & (runs["method"] == "tre_k") & (runs["seed"] == 1)].iloc[0]
    assert (row["final_val_score"], row["best_val_score"], row["best_step"], row["last_step"]) == (0.7, 0.8, 0, 2)
    assert row["status"] == "completed" and row["val_metric"] == "val-core/math/reward/mean@1" and row["run_dir"] == "math/tiny/tre_k/seed1"
    v = metrics[(metrics["method"] == "ppo") & (metrics["task"] == "countdown") & (metrics["seed"] == 1)
                & (metrics["metric"] == "response_length/mean")]
    assert v[["step", "value"]].values.tolist() == [[1, 21.0], [2, 22.0]]


def test_recollect_is_idempotent_and_replaces_reruns(archive, runs_dir, make_run):
    before = {p: (archive / p).read_bytes() for p in ("metrics.csv", "metrics.parquet", "runs.csv", "eval.csv", PROVENANCE_FILE)}
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
    corrupt = make_run(root, "math", "tiny", "ppo", 1, {0: 0.0, 2: 0.2})
    (corrupt / "metrics.jsonl").write_text('{"step": 0, "val-core/math/reward/mean@1": 0.0}\n{"step": 2, "val-\n')
    gone = make_run(root, "math", "tiny", "ppo", 2, {0: 0.0, 2: 0.2})
    (gone / "metrics.jsonl").unlink()
    report = collect(root, tmp_path / "results")
    assert report.collected == ["math/tiny/ppo/seed0"]
    assert report.skipped == [(str(corrupt), f"{corrupt / 'metrics.jsonl'}: corrupt at line 2"),
                              (str(gone), f"{gone / 'metrics.jsonl'}: missing")]


def test_a_killed_run_with_a_torn_last_line_is_collected_with_its_complete_steps(tmp_path, make_run):
    d = make_run(tmp_path / "runs", "math", "tiny", "ppo", 0, {0: 0.1, 2: 0.3}, summary=False)
    with open(d / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "val-core/math/reward/mean@1": 0.')  # SIGKILL mid-write
    assert collect(tmp_path / "runs", tmp_path / "results").collected == ["math/tiny/ppo/seed0"]
    run = pd.read_csv(tmp_path / "results" / "runs.csv").iloc[0]
    assert (run["status"], run["final_val_score"], run["last_step"]) == ("incomplete", 0.3, 2)


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
    prov = json.loads((tmp_path / "results" / PROVENANCE_FILE).read_text())["ours:tiny:cpu"]
    assert [prov[r]["git_commit"] for r in ("math/tiny/ppo/seed0", "math/tiny/ppo/seed1")] == ["0012345", "abc123"]


def _clone_runs(root, config_path: str, wall: float, timing: float, make_run) -> None:
    """The same two runs as another machine/clone makes them: other absolute paths, wall times and timings."""
    for method, seed in (("ppo", 0), ("tre_k", 1)):
        d = make_run(root, "math", "tiny", method, seed, {0: 0.1, 2: 0.3 + seed},
                     {s: {"actor/entropy": 1.0 + s, "timing_s/step": timing * s, "perf/throughput": 100.0 / timing,
                          "perf/total_num_tokens": 64.0} for s in (1, 2)})
        cfg = json.loads((d / "config.json").read_text())
        cfg["resolved"] = {"actor_rollout_ref": {"model": {"path": f"{config_path}/models/tiny/warm"}}}
        (d / "config.json").write_text(json.dumps({**cfg, "git_commit": config_path[-6:], "created": f"t{wall}"}))
        summary = json.loads((d / "summary.json").read_text())
        (d / "summary.json").write_text(json.dumps({**summary, "wall_time_s": wall + seed}))


def test_archive_of_the_same_runs_from_two_clones_differs_only_in_provenance(tmp_path, make_run):
    # Two clones at different absolute paths, different wall times and step timings, same scores.
    a, b = tmp_path / "clone_a", tmp_path / "elsewhere" / "clone_b"
    _clone_runs(a / "runs", str(a), 60.0, 1.5, make_run)
    _clone_runs(b / "runs", str(b), 75.5, 2.25, make_run)
    collect(a / "runs", a / "results")
    collect(b / "runs", b / "results")
    files = sorted(p.name for p in (a / "results").iterdir())
    assert files == ["eval.csv", "metrics.csv", "metrics.parquet", "provenance.json", "runs.csv"]
    for name in files:
        same = (a / "results" / name).read_bytes() == (b / "results" / name).read_bytes()
        assert same != (name == PROVENANCE_FILE), name
    for results in (a / "results", b / "results"):
        assert str(tmp_path) not in "".join((results / n).read_text() for n in files if n != "metrics.parquet" and n != PROVENANCE_FILE)
    # the volatile fields are kept, per run, in the provenance file only
    prov = json.loads((b / "results" / PROVENANCE_FILE).read_text())["ours:tiny:cpu"]["math/tiny/tre_k/seed1"]
    assert prov["wall_time_s"] == 76.5 and prov["git_commit"] == "lone_b" and len(prov["config_hash"]) == 12
    assert prov["metrics"] == [{"step": 1, "perf/throughput": 100.0 / 2.25, "timing_s/step": 2.25},
                               {"step": 2, "perf/throughput": 100.0 / 2.25, "timing_s/step": 4.5}]
    metrics = pd.read_csv(b / "results" / "metrics.csv")
    assert sorted(set(metrics["metric"])) == ["actor/entropy", "perf/total_num_tokens", "val-core/math/reward/mean@1"]
