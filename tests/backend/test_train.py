"""Real verl 0.4.1 PPO runs on CPU through `python -m tre.backend train`, one per paper method, on the tiny model and
Countdown (the real evaluation.tasks reward): run directory, metric names, finite losses, TRE/forking effects,
a loadable HF checkpoint, resume after Ctrl-C without duplicated metric lines, and no stray Ray processes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

PYTHON = sys.executable
METHODS = ("ppo", "entropy", "kl_cov", "tre_k", "tre_p")  # forking_tokens runs in the resume test below
SHORT = ["data.max_response_length=16", "trainer.test_freq=2"]
DIAG = ("actor/top1_prob_sum", "actor/tre_k_entropy", "actor/tre_p_entropy", "actor/tre_p_size", "actor/tail_mass_k", "actor/tail_mass_p")
VAL = "val-core/countdown/reward/mean@1"


def _cmd(method: str, run_dir: Path, model: Path, data: Path, *extra: str) -> list[str]:
    return [PYTHON, "-m", "tre.backend", "train", "--task", "countdown", "--size", "tiny", "--method", method,
            "--model-path", str(model), "--data-dir", str(data), "--run-dir", str(run_dir), *SHORT, *extra]


def _env(mark: str) -> dict[str, str]:
    return {**os.environ, "TRE_TEST_MARK": mark}


def _marked_ray_processes(mark: str) -> list[str]:
    """Live processes (Ray's raylet, gcs_server, workers...) that inherited this test's marker variable."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"TRE_TEST_MARK={mark}".encode() in environ and ("ray" in cmd or "gcs_server" in cmd):
            found.append(f"{pid} {cmd[:120]}")
    return found


def _wait_gone(mark: str, timeout: float = 30.0) -> list[str]:
    deadline = time.time() + timeout
    while (left := _marked_ray_processes(mark)) and time.time() < deadline:
        time.sleep(0.5)
    return left


def _interrupt_then_resume(run_dir: Path, model: Path, data: Path, mark: str) -> dict:
    """forking_tokens: Ctrl-C (SIGINT to the process group) once the step-1 checkpoint exists, then the same command."""
    cmd = _cmd("forking_tokens", run_dir, model, data, "trainer.total_training_steps=2", "trainer.save_freq=1")
    marker = run_dir / "checkpoints" / "latest_checkpointed_iteration.txt"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(mark), start_new_session=True)
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None and not (marker.exists() and marker.read_text().strip()):
        time.sleep(0.2)
    alive_at_kill = proc.poll() is None
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    out, _ = proc.communicate(timeout=120)
    result = {"alive_at_kill": alive_at_kill, "rc1": proc.returncode, "out1": out, "stray1": _wait_gone(mark),
              "summary_after_kill": (run_dir / "summary.json").exists(),
              "steps_after_kill": [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]}
    again = subprocess.run(cmd, capture_output=True, text=True, env=_env(mark), timeout=600)
    result.update(rc2=again.returncode, out2=again.stdout + again.stderr, stray2=_wait_gone(mark))
    return result


@pytest.fixture(scope="module")
def method_runs(tiny_model, countdown_data, tmp_path_factory):
    """One 2-step run per method plus the interrupted-and-resumed forking run, two at a time."""
    root = tmp_path_factory.mktemp("runs")
    mark = uuid.uuid4().hex

    def run(method: str):
        run_dir = root / method
        t0 = time.time()
        if method == "forking_tokens":
            return method, (_interrupt_then_resume(run_dir, tiny_model, countdown_data, uuid.uuid4().hex), run_dir, time.time() - t0)
        proc = subprocess.run(_cmd(method, run_dir, tiny_model, countdown_data, "trainer.total_training_steps=2", "trainer.save_freq=2"),
                              capture_output=True, text=True, env=_env(mark), timeout=600)
        return method, (proc.returncode, run_dir, proc.stdout + proc.stderr, time.time() - t0)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(pool.map(run, ("forking_tokens", *METHODS)))  # the longest job first
    results["_stray"] = _wait_gone(mark)
    return results


@pytest.mark.parametrize("method", METHODS)
def test_run_directory_and_metrics(method_runs, method):
    rc, run_dir, log, _ = method_runs[method]
    assert rc == 0, log[-3000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert set(rows[0]) == {"step", VAL}  # the step-0 validation row has only validation keys
    for row in rows[1:]:
        for key in ("critic/score/mean", "actor/pg_loss", "actor/entropy", "response_length/mean", "actor/grad_norm",
                    "critic/vf_loss", *DIAG):
            assert isinstance(row.get(key), float) and math.isfinite(row[key]), (key, row.get(key))
    assert VAL in rows[2]
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["task"], config["size"], config["method"], config["profile"], config["device"]) == ("countdown", "tiny", method, "tiny", "cpu")
    assert config["method_spec"]["name"] == method and config["packages"]["verl"] == "0.4.1"
    assert config["resolved"]["trainer"]["default_local_dir"] == str(run_dir / "checkpoints")
    assert any(o.endswith("model.external_lib=tre.backend.plugin") for o in config["overrides"])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 2 and summary["val_metric"] == VAL
    assert summary["final_val_score"] == rows[2][VAL]
    assert summary["best_val_score"] == max(rows[0][VAL], rows[2][VAL])


def test_tre_changes_the_loss_entropy(method_runs):
    for method, diag in (("tre_k", "actor/tre_k_entropy"), ("tre_p", "actor/tre_p_entropy")):
        rows = [json.loads(line) for line in (method_runs[method][1] / "metrics.jsonl").read_text().splitlines()][1:]
        for row in rows:
            assert row["actor/loss_entropy"] == pytest.approx(row[diag], rel=1e-3)  # the loss used TRE...
            assert row["actor/loss_entropy"] != pytest.approx(row["actor/update_full_entropy"], abs=1e-3)  # ...not H
    rows = [json.loads(line) for line in (method_runs["entropy"][1] / "metrics.jsonl").read_text().splitlines()][1:]
    assert all(r["actor/loss_entropy"] == pytest.approx(r["actor/update_full_entropy"], rel=1e-3) for r in rows)
    rows = [json.loads(line) for line in (method_runs["ppo"][1] / "metrics.jsonl").read_text().splitlines()][1:]
    assert all("actor/loss_entropy" not in r for r in rows)


def test_checkpoint_is_loadable_with_transformers(method_runs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = method_runs["tre_p"][1] / "checkpoints" / "global_step_2" / "actor" / "huggingface"
    model = AutoModelForCausalLM.from_pretrained(hf)
    assert model.config.model_type == "qwen2" and AutoTokenizer.from_pretrained(hf).eos_token == "<|im_end|>"
    assert (method_runs["tre_p"][1] / "checkpoints" / "global_step_2" / "critic").is_dir()


def test_no_stray_ray_processes_after_runs(method_runs):
    assert method_runs["_stray"] == []


def test_ctrl_c_then_resume_continues_from_the_checkpoint(method_runs):
    r, run_dir, _ = method_runs["forking_tokens"]
    assert r["alive_at_kill"], "run ended before it could be interrupted"
    assert r["rc1"] == 130 and "rerun the same command to resume" in r["out1"], r["out1"][-3000:]
    assert r["stray1"] == [] and not r["summary_after_kill"]
    assert r["rc2"] == 0, r["out2"][-3000:]
    assert "resuming from checkpoint step" in r["out2"] and r["stray2"] == []
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1, 2], r["steps_after_kill"]  # every step exactly once
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["launches"] == 2
    launches = [json.loads(line) for line in (run_dir / "launches.jsonl").read_text().splitlines()]
    assert [x["status"] for x in launches] == ["interrupted", "completed"] and launches[1]["start_step"] >= 1
    assert summary["wall_time_s"] == round(sum(x["wall_time_s"] for x in launches), 3)  # both legs counted
    for row in rows[1:]:
        # Forking's mask keeps ceil(0.2 N) of each micro-batch's N response tokens: about 20 %.
        assert 0.2 <= row["actor/forking_token_frac"] < 0.26 and math.isfinite(row["actor/pg_loss"])
        assert "actor/loss_entropy" not in row  # entropy only ranks tokens (coefficient 0)


def test_completed_run_is_not_rerun(method_runs, tiny_model, countdown_data):
    run_dir = method_runs["ppo"][1]
    proc = subprocess.run(_cmd("ppo", run_dir, tiny_model, countdown_data), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "already completed" in proc.stdout
