"""The run-directory contract without verl: metric rows, no duplicated steps, resume truncation, summary values."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from tre.backend import rundir
from tre.backend.rundir import (MetricsLog, MetricsTail, RunDir, RunDirError, latest_checkpoint_step, metric_row,
                                parse_metrics, read_metrics, summarize, truncate_metrics)

VAL = "val-core/countdown/reward/mean@1"


def test_metric_row_keeps_scalars_only_and_nulls_non_finite():
    row = metric_row({"a": np.float64(1.5), "b": 2, "c": float("nan"), "d": "text", "e": [1, 2], "f": np.array(3.0), "g": True}, 4)
    assert row == {"step": 4, "a": 1.5, "b": 2.0, "c": None, "f": 3.0, "g": 1.0}


def test_metrics_log_appends_and_never_repeats_a_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    assert log.log({VAL: 0.1}, 0) and log.log({"actor/pg_loss": 0.5}, 1)
    assert not log.log({VAL: 0.9}, 0)  # e.g. val_before_train again at a resumed step
    again = MetricsLog(path)  # a restarted process reads what is on disk
    assert not again.log({"actor/pg_loss": 7.0}, 1) and again.log({"actor/pg_loss": 0.4}, 2)
    assert read_metrics(path) == [{"step": 0, VAL: 0.1}, {"step": 1, "actor/pg_loss": 0.5}, {"step": 2, "actor/pg_loss": 0.4}]


def test_truncate_drops_steps_past_the_checkpoint_and_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "x": s}) + "\n" for s in (0, 1, 2, 3)) + '{"step": 4, "x"')
    assert truncate_metrics(path, 2) == 1  # step 3 (the torn line is not a row)
    assert [r["step"] for r in read_metrics(path)] == [0, 1, 2]
    assert truncate_metrics(tmp_path / "absent.jsonl", 5) == 0


@pytest.mark.parametrize("text, rows", [
    ("", []),
    ('{"step": 0, "a": 1}\n{"step": 1, "a"', [{"step": 0, "a": 1}]),  # a kill mid-write: the torn last line is dropped
    ('{"step": 0, "a": 1}\n\n{"step": 1}', [{"step": 0, "a": 1}, {"step": 1}]),  # whole but for its newline: kept
])
def test_parse_metrics_drops_only_a_torn_last_line(text, rows):
    assert parse_metrics(text, "m.jsonl") == rows


@pytest.mark.parametrize("text, why", [
    ('{"step": 0, "a": 1}\n{"step": 1, "a"\n', "corrupt at line 2"),  # it ends in a newline: not torn by a kill
    ('{"step": 0, "a": 1}\nnot json\n{"step": 2}\n', "corrupt at line 2"),
    ('{"a": 1}\n', "line 1 has no integer 'step'"),
    ('{"step": true}\n', "line 1 has no integer 'step'"),
    ('[1]\n', "line 1 has no integer 'step'"),
])
def test_broken_metrics_lines_are_errors_naming_the_line(text, why, tmp_path):
    with pytest.raises(RunDirError, match=f"^m.jsonl: {why}$"):
        parse_metrics(text, "m.jsonl")
    (tmp_path / "metrics.jsonl").write_text(text)
    with pytest.raises(RunDirError, match=f"^{tmp_path / 'metrics.jsonl'}: {why}$"):
        read_metrics(tmp_path / "metrics.jsonl")


def test_metrics_tail_reads_whole_new_lines_and_restarts_on_a_shorter_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path)
    assert tail.read() == ([], False)  # no file yet
    path.write_text('{"step": 0}\n{"step": 1, "x"')
    assert tail.read() == ([{"step": 0}], False)
    with open(path, "a") as f:
        f.write(': 2}\n{"step": 2}\n')
    assert tail.read() == ([{"step": 1, "x": 2}, {"step": 2}], False)
    assert tail.read() == ([], False)
    path.write_text('{"step": 0}\n')  # a resume truncated it
    assert tail.read() == ([{"step": 0}], True)
    with open(path, "a") as f:
        f.write('{"step": 1}\nbad\n')
    with pytest.raises(RunDirError, match="corrupt at line 3$"):  # the file's line, not the chunk's
        tail.read()


def test_run_dir_reads_config_checkpoints_metrics_and_scores(tmp_path):
    run = RunDir.of(tmp_path, "math", "tiny", "ppo", 1)
    assert run.path == tmp_path / "math" / "tiny" / "ppo" / "seed1"
    run.path.mkdir(parents=True)
    rundir.atomic_write_json(run.path / rundir.CONFIG, {
        "task": "math", "total_steps": 8, "resolved": {"actor_rollout_ref": {"model": {"path": "models/warm"}},
                                                       "data": {"val_files": ["t.parquet"], "train_files": "tr.parquet",
                                                                "max_response_length": 64}}})
    assert (run.base_model, run.data_files("test"), run.data_files("train"), run.max_response_length, run.total_steps) == \
        ("models/warm", ["t.parquet"], ["tr.parquet"], 64, 8)
    assert run.field("resolved.data.nope.deeper") is None
    for step in (2, 4, 10):  # step 10 is only verl's resume state, without an HF model
        (run.path / "checkpoints" / f"global_step_{step}" / "actor" / "huggingface").mkdir(parents=True)
        if step != 10:
            (run.path / "checkpoints" / f"global_step_{step}" / "actor" / "huggingface" / "config.json").write_text("{}")
    hf = {s: run.path / "checkpoints" / f"global_step_{s}" / "actor" / "huggingface" for s in (2, 4)}
    assert run.checkpoints() == hf and run.checkpoint() == hf[4] and run.checkpoint(2) == hf[2]
    with pytest.raises(RunDirError, match="no global_step_10/actor/huggingface with a config.json$"):
        run.checkpoint(10)
    log = MetricsLog(run.path / rundir.METRICS)
    for step, val in ((0, 0.1), (2, 0.4), (4, 0.2)):
        log.log({VAL: val, "training/global_step": step}, step)
    assert run.summary is None
    assert run.scores() == {"status": "incomplete", "val_metric": VAL, "final_val_score": 0.2, "best_val_score": 0.4,
                            "best_step": 2}
    first = rundir.start_launch(run.path, start_step=0, now=100.0)
    rundir.end_launch(run.path, first, status="completed", now=112.5)
    summary = rundir.summary_record(run.path, "math", "tiny", "ppo", 1, VAL)
    assert summary == {"task": "math", "size": "tiny", "method": "ppo", "seed": 1, "val_metric": VAL, "final_val_score": 0.2,
                       "best_val_score": 0.4, "best_step": 2, "steps": 4, "wall_time_s": 12.5, "launches": 1,
                       "status": "completed"}
    assert list(summary) == ["task", "size", "method", "seed", "val_metric", "final_val_score", "best_val_score",
                             "best_step", "steps", "wall_time_s", "launches", "status"]  # summary.json's key order
    rundir.atomic_write_json(run.path / rundir.SUMMARY, summary)
    assert RunDir(run.path).scores() == {"status": "completed", "val_metric": VAL, "final_val_score": 0.2,
                                         "best_val_score": 0.4, "best_step": 2}


def test_run_dir_errors_name_the_file_or_the_argument(tmp_path):
    with pytest.raises(rundir.BadFile, match=f"^config.json: no such file '{tmp_path / 'config.json'}'$"):
        RunDir(tmp_path).config
    (tmp_path / "config.json").write_text("[]")
    with pytest.raises(rundir.BadFile, match="^RUN_DIR: .* must hold a JSON object, got a list$"):
        RunDir(tmp_path, what="RUN_DIR").config
    with pytest.raises(RunDirError, match=f"^{tmp_path / 'checkpoints'}: no global_step_<N>/actor/huggingface"):
        RunDir(tmp_path).checkpoint()


def test_importing_the_reader_imports_no_torch_verl_or_pandas():
    probe = ("import sys\nimport tre.backend.rundir\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'verl', 'ray', 'pandas', 'numpy', 'pyarrow')))")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_latest_checkpoint_step_needs_the_marker_and_the_folder(tmp_path):
    assert latest_checkpoint_step(tmp_path) == 0
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("4")
    assert latest_checkpoint_step(tmp_path) == 0
    (tmp_path / "global_step_4").mkdir()
    assert latest_checkpoint_step(tmp_path) == 4


def test_summary_values():
    rows = [{"step": 0, VAL: 0.2},
            {"step": 1, "training/global_step": 1.0},
            {"step": 2, "training/global_step": 2.0, VAL: 0.5},
            {"step": 3, "training/global_step": 3.0},
            {"step": 4, "training/global_step": 4.0, VAL: 0.5, "val-aux/countdown/reward/std@1": 0.1},
            {"step": 5, "training/global_step": 5.0, VAL: 0.3}]
    assert summarize(rows) == {"val_metric": VAL, "final_val_score": 0.3, "best_val_score": 0.5, "best_step": 2, "steps": 5}
    assert summarize([])["steps"] == 0 and summarize([])["val_metric"] is None
    two = [{"step": 1, "val-core/a/reward/mean@1": 1.0, "val-core/b/reward/mean@1": 2.0}]
    assert summarize(two, preferred_metric="val-core/b/reward/mean@1")["final_val_score"] == 2.0


def test_atomic_write_json_leaves_no_temp_files(tmp_path):
    rundir.atomic_write_json(tmp_path / "s.json", {"x": math.pi})
    assert json.loads((tmp_path / "s.json").read_text()) == {"x": math.pi}
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]


def test_config_record_fields():
    from baselines import get_method
    from tre.backend.profiles import RunSpec

    rec = rundir.config_record(RunSpec("math", "1.5b", "forking_tokens", seed=2), get_method("forking_tokens"), ["a=1"], {"k": 1})
    assert set(rec) == {"task", "size", "method", "seed", "profile", "method_spec", "method_registry", "total_steps",
                        "overrides", "resolved", "git_commit", "packages", "device", "created"}
    assert rec["method_spec"]["loss_params"] == {"forking_top_ratio": 0.2, "forking_scope": "micro_batch"}
    assert rec["device"] == "cpu" and rec["packages"]["verl"] == "0.4.1"
    json.dumps(rec)


def test_config_record_holds_the_entropy_coefficient_verl_applied():
    # The miniature (the tiny profile) raises the entropy run's coefficient from the registry's 0.001 to 0.3.
    from baselines import get_method
    from tre.backend.launch import compose, resolve
    from tre.backend.profiles import RunSpec, overrides

    spec = RunSpec("math", "tiny", "entropy", profile="tiny", model_path="m", extra=("actor_rollout_ref.actor.entropy_coeff=0.3",))
    items = overrides(spec)
    resolved = resolve(compose(items))
    rec = rundir.config_record(spec, get_method("entropy"), items, resolved)
    assert resolved["actor_rollout_ref"]["actor"]["entropy_coeff"] == 0.3
    assert rec["method_spec"]["entropy_coeff"] == 0.3 and rec["method_registry"] == {"entropy_coeff": 0.001}
    assert {k: rec["method_spec"][k] for k in ("name", "entropy", "policy_loss")} == {"name": "entropy", "entropy": "full",
                                                                                     "policy_loss": "tre_dual_clip"}
    # where nothing replaces a registry value the record is the registry's method, and nothing is marked as replaced
    plain = RunSpec("math", "tiny", "kl_cov", profile="tiny", model_path="m")
    items = overrides(plain)
    rec = rundir.config_record(plain, get_method("kl_cov"), items, resolve(compose(items)))
    assert rec["method_spec"] == rundir.method_record(get_method("kl_cov")) and rec["method_registry"] == {}
    assert rec["total_steps"] == 16  # the tiny profile's trainer.total_training_steps, for the launcher's "step i/N"


def test_launches_sum_their_wall_times_and_skip_a_torn_line(tmp_path):
    assert rundir.total_wall_time(tmp_path) == 0.0
    first = rundir.start_launch(tmp_path, start_step=0, now=1000.0)
    rundir.end_launch(tmp_path, first, status="interrupted", now=1010.25)
    with open(tmp_path / rundir.LAUNCHES, "a") as f:
        f.write('{"wall_time_s": 99\n')  # a driver killed mid-write
    second = rundir.start_launch(tmp_path, start_step=4, now=2000.0)
    rundir.end_launch(tmp_path, second, status="completed", now=2005.5)
    launches = rundir.read_launches(tmp_path)
    assert [(x["start_step"], x["status"], x["wall_time_s"]) for x in launches] == [(0, "interrupted", 10.25), (4, "completed", 5.5)]
    assert rundir.total_wall_time(tmp_path) == 15.75


def test_a_killed_launch_is_recorded_with_its_time_up_to_its_last_sign_of_life(tmp_path):
    killed = rundir.start_launch(tmp_path, start_step=0, now=time.time() - 100)  # SIGKILL: no end line
    (tmp_path / rundir.METRICS).write_text('{"step": 0}\n')
    os.utime(tmp_path / rundir.METRICS, (killed["started_s"] + 40, killed["started_s"] + 40))  # its last metrics line
    os.utime(tmp_path / rundir.LAUNCHES, (killed["started_s"] + 42, killed["started_s"] + 42))  # its last heartbeat
    assert [(x["status"], x["wall_time_s"]) for x in rundir.read_launches(tmp_path)] == [("running", 42.0)]
    rerun = rundir.start_launch(tmp_path, start_step=0)
    rundir.end_launch(tmp_path, rerun, status="completed", now=rerun["started_s"] + 7)
    launches = rundir.read_launches(tmp_path)
    assert [(x["launch"], x["status"], x["wall_time_s"], x.get("estimated")) for x in launches] == \
        [(killed["launch"], "killed", 42.0, True), (rerun["launch"], "completed", 7.0, None)]
    assert rundir.total_wall_time(tmp_path) == 49.0


def test_launch_lines_of_the_older_format_still_count(tmp_path):
    (tmp_path / rundir.LAUNCHES).write_text('{"finished": "2026-01-01T00:00:00+00:00", "start_step": 0, "wall_time_s": 3.5, '
                                            '"status": "interrupted"}\n')
    launch = rundir.start_launch(tmp_path, start_step=2, now=50.0)
    rundir.end_launch(tmp_path, launch, status="completed", now=51.0)
    assert [(x["status"], x["wall_time_s"]) for x in rundir.read_launches(tmp_path)] == [("interrupted", 3.5), ("completed", 1.0)]
