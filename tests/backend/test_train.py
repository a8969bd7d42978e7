"""Real verl 0.4.1 PPO runs on CPU through `python -m tre.backend train`, one per paper method, on the tiny model and
Countdown (the real evaluation.tasks reward): run directory, metric names, finite losses, TRE/forking effects,
a loadable HF checkpoint, resume after Ctrl-C without duplicated metric lines, no stray Ray processes, and a run
SIGKILLed, then preempted with SIGTERM (as the launcher and Slurm do), then resumed, that ends bit-identical to the
uninterrupted run."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dataclasses
import hashlib

import pytest

from tre.backend import rundir
from common.processes import terminate_group

pytestmark = pytest.mark.slow

PYTHON = sys.executable
METHODS = ("ppo", "entropy", "kl_cov", "tre_k", "tre_p")  # forking_tokens runs in the Ctrl-C test below
PPO_REFERENCE = ("trainer.total_training_steps=2", "trainer.save_freq=1")  # ppo's run, also the uninterrupted reference
CLOCK = ("timing_s/", "timing_per_token_ms/", "perf/")  # wall-clock and memory readings: the only metrics allowed to differ
SHORT = ["data.max_response_length=16", "trainer.test_freq=2"]
DIAG = ("actor/top1_prob_sum", "actor/tre_k_entropy", "actor/tre_p_entropy", "actor/tre_p_size", "actor/tail_mass_k", "actor/tail_mass_p")
VAL = "val-core/countdown/reward/mean@1"


def _cmd(method: str, run_dir: Path, model: Path, data: Path, *extra: str) -> list[str]:
    return [PYTHON, "-m", "tre.backend", "train", "--task", "countdown", "--size", "tiny", "--method", method,
            "--model-path", str(model), "--data-dir", str(data), "--run-dir", str(run_dir), *SHORT, *extra]


def _env(mark: str) -> dict[str, str]:
    return {**os.environ, "TRE_TEST_MARK": mark, "PYTHONUNBUFFERED": "1"}  # the tests watch the logs as they grow


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


def _start(cmd: list[str], log: Path, mark: str) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True, env=_env(mark), start_new_session=True)


def _wait_for(proc: subprocess.Popen, ready, timeout: float = 600) -> bool:
    """Poll until ready() or the process ends; whether it is still alive."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.2)
    return proc.poll() is None


def _watch_shutdown(mark: str, tracker: Path, proc: subprocess.Popen) -> list[tuple[bool, bool, str]]:
    """From the signal on, until the driver has exited: (a Ray worker alive, the raylet alive, the checkpoint tracker)
    at every change."""
    seen: list[tuple[bool, bool, str]] = []
    while True:
        procs = _marked_ray_processes(mark)
        state = (any(" ray::" in p for p in procs), any("/raylet " in p for p in procs), tracker.read_text().strip())
        if not seen or state != seen[-1]:
            seen.append(state)
        if proc.returncode is not None and not procs:
            return seen
        time.sleep(0.05)


def _marked_ray_dirs(mark: str) -> set[str]:
    """The Ray temp dirs (/tmp/tre_ray_*) that this test's marked processes name on their command lines: the run's own,
    not those of other Ray sessions on the machine."""
    found = set()
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and f"TRE_TEST_MARK={mark}".encode() in Path(f"/proc/{pid}/environ").read_bytes():
                found.update(re.findall(r"/tmp/(tre_ray_[^/\s]+)", Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")))
        except OSError:
            continue
    return found


def _killed_preempted_resumed(run_dir: Path, model: Path, data: Path) -> dict:
    """ppo as the reference, but: SIGKILL to the process group once the step-1 checkpoint exists; rerun; SIGTERM to
    the process group (terminate_group, as the launcher stops a step) once its verl workers exist; rerun to the end;
    then, with summary.json removed, rerun once more."""
    cmd = _cmd("ppo", run_dir, model, data, *PPO_REFERENCE)
    marker = run_dir / "checkpoints" / "latest_checkpointed_iteration.txt"
    out: dict = {}
    mark = uuid.uuid4().hex
    proc = _start(cmd, run_dir.parent / "leg1.log", mark)
    out["alive_at_kill"] = _wait_for(proc, lambda: marker.exists() and marker.read_text().strip() == "1")
    os.killpg(proc.pid, signal.SIGKILL)  # a node failure, an OOM kill: no handler runs
    proc.wait()
    # Ray's workers lead process groups of their own, so the kill never reached them; left alone, they lingered
    # (verl's TaskRunner for a while after the driver had died). Each now follows its raylet within a second.
    out["stray_after_kill"] = _wait_gone(mark, timeout=5)
    out["steps_after_kill"] = [r["step"] for r in rundir.read_metrics(run_dir / "metrics.jsonl")]

    mark = uuid.uuid4().hex
    log2 = run_dir.parent / "leg2.log"
    proc = _start(cmd, log2, mark)
    # once verl's workers exist (Ray up, the checkpoint about to load); waiting for a log line instead raced with step 2,
    # whose checkpoint could be saved before Ray forwarded the line
    out["alive_at_term"] = _wait_for(proc, lambda: any("WorkerDict" in p for p in _marked_ray_processes(mark)))
    out["ray_dirs"] = _marked_ray_dirs(mark)
    with ThreadPoolExecutor(max_workers=1) as pool:
        watched = pool.submit(_watch_shutdown, mark, marker, proc)
        out["rc_term"] = terminate_group(proc, grace_s=120)
        out["shutdown"] = watched.result()
    out["log_term"] = log2.read_text()
    out["stray_after_term"] = _wait_gone(mark, timeout=20)
    out["ray_dirs_left"] = sorted(d for d in out["ray_dirs"] if Path("/tmp", d).exists())

    again = subprocess.run(cmd, capture_output=True, text=True, env=_env(mark), timeout=600)
    out["rc_resumed"], out["log_resumed"] = again.returncode, again.stdout + again.stderr
    out["summary"] = json.loads((run_dir / "summary.json").read_text())
    out["launches"] = rundir.read_launches(run_dir)
    out["metrics"] = rundir.read_metrics(run_dir / "metrics.jsonl")
    out["final_checkpoint"] = _checkpoint_contents(run_dir / "checkpoints" / "global_step_2")

    (run_dir / "summary.json").unlink()
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=_env(mark), timeout=600)
    out["rc_rerun"], out["log_rerun"] = rerun.returncode, rerun.stdout + rerun.stderr
    out["stray_at_end"] = _wait_gone(mark)
    return out


def _checkpoint_contents(folder: Path) -> dict[str, object]:
    """Every file under a checkpoint folder by relative path: the .pt files as their loaded values (tensors as bytes;
    FSDP's pickled device mesh differs between processes), the others as sha256 of their bytes."""
    import torch

    def flat(value, key: str):
        if isinstance(value, dict):
            for k, v in value.items():
                yield from flat(v, f"{key}/{k}")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                yield from flat(v, f"{key}[{i}]")
        else:
            value = value.to_local() if hasattr(value, "to_local") else value
            if isinstance(value, torch.Tensor):
                value = (str(value.dtype), tuple(value.shape), value.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
            elif hasattr(value, "tobytes"):
                value = value.tobytes()
            yield key, value

    out: dict[str, object] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = str(path.relative_to(folder))
        if path.suffix == ".pt":
            out.update(flat(torch.load(path, weights_only=False, map_location="cpu"), name))
        else:
            out[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def resume_runs(tiny_model, countdown_data, tmp_path_factory):
    """The uninterrupted ppo run next to the same run killed, preempted and resumed (both start together)."""
    root = tmp_path_factory.mktemp("resume")
    (root / "chain").mkdir()
    mark = uuid.uuid4().hex

    def reference():
        t0 = time.time()
        proc = subprocess.run(_cmd("ppo", root / "ppo", tiny_model, countdown_data, *PPO_REFERENCE), capture_output=True,
                              text=True, env=_env(mark), timeout=600)
        return proc.returncode, root / "ppo", proc.stdout + proc.stderr, time.time() - t0

    with ThreadPoolExecutor(max_workers=2) as pool:
        ref = pool.submit(reference)
        chain = pool.submit(_killed_preempted_resumed, root / "chain" / "ppo", tiny_model, countdown_data)
        return {"ppo": ref.result(), "chain": (chain.result(), root / "chain" / "ppo")}


@pytest.fixture(scope="module")
def method_runs(resume_runs, tiny_model, countdown_data, tmp_path_factory):
    """One 2-step run per method (ppo's is the resume reference) plus the interrupted-and-resumed forking run."""
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
        results = dict(pool.map(run, ("forking_tokens", *[m for m in METHODS if m != "ppo"])))  # the longest job first
    results["ppo"] = resume_runs["ppo"]
    results["_stray"] = _wait_gone(mark)
    return results


WANDB_SECRET = "sekrit-wandb-key-0123456789abcdef0123456789"


@pytest.fixture(scope="module")
def wandb_run(tiny_model, countdown_data, tmp_path_factory):
    """ppo with the wandb mirror offline, 4 steps with checkpoints at 2 and 4: preempted (SIGTERM, as Slurm and the
    launcher do) once step 3 is in metrics.jsonl, past checkpoint 2; resumed to the end; then its checkpoint evaluated
    with --wandb offline. WANDB_API_KEY is set (offline does not need it) to prove it is written nowhere."""
    run_dir = tmp_path_factory.mktemp("wandb") / "ppo"
    # max_prompt_length: the fixture's Countdown prompts are longer than the miniature's generated ones (TINY_LENGTHS)
    cmd = [*_cmd("ppo", run_dir, tiny_model, countdown_data, "trainer.total_training_steps=4", "trainer.save_freq=2",
                 "data.max_prompt_length=256"),
           "--wandb", "offline", "--wandb-group", "mirror-test"]
    mark = uuid.uuid4().hex
    env = {**_env(mark), "WANDB_API_KEY": WANDB_SECRET}
    out: dict = {"run_dir": run_dir}
    metrics = run_dir / "metrics.jsonl"
    proc = subprocess.Popen(cmd, stdout=open(run_dir.parent / "leg1.log", "w"), stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)
    out["alive_at_term"] = _wait_for(proc, lambda: 3 in [r["step"] for r in rundir.read_metrics(metrics)])
    out["rc_term"] = terminate_group(proc, grace_s=120)
    out["log_term"] = (run_dir.parent / "leg1.log").read_text()
    out["steps_after_term"] = [r["step"] for r in rundir.read_metrics(metrics)]
    out["wandb_after_term"] = rundir.read_wandb_run(run_dir)
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    out["rc_resumed"], out["log_resumed"] = again.returncode, again.stdout + again.stderr
    evaluate = subprocess.run([PYTHON, "-m", "evaluation", "evaluate", str(run_dir), "--n", "2", "--limit", "2",
                               "--wandb", "offline"], capture_output=True, text=True, env=env, timeout=600)
    out["rc_eval"], out["log_eval"] = evaluate.returncode, evaluate.stdout + evaluate.stderr
    out["stray"] = _wait_gone(mark)
    return out


def test_wandb_mirror_is_one_run_equal_to_metrics_across_a_preemption(wandb_run):
    """The killed leg logged step 3 past checkpoint 2; the resumed leg rewound the same wandb run to 2 and logged 3 and
    4 again: read back with wandb's own reader, the run's history is metrics.jsonl, step for step, in order."""
    from .conftest import wandb_view

    r, run_dir = wandb_run, wandb_run["run_dir"]
    assert r["alive_at_term"] and r["rc_term"] == 143, r["log_term"][-3000:]
    assert r["steps_after_term"] == [0, 1, 2, 3] and r["wandb_after_term"] is not None
    assert r["rc_resumed"] == 0, r["log_resumed"][-3000:]
    assert "resuming from checkpoint step 2 (dropped 1 metric lines past it)" in r["log_resumed"]
    assert r["rc_eval"] == 0, r["log_eval"][-3000:]
    record = rundir.read_wandb_run(run_dir)
    assert record == {"id": r["wandb_after_term"]["id"], "project": "tre", "entity": None,
                      "group": "mirror-test/countdown_tiny_ppo", "name": "countdown_tiny_ppo_seed0",
                      "tags": ["countdown", "tiny", "ppo", "seed0", record["tags"][-1]], "mirrored_step": 4}
    assert record["tags"][-1].startswith("git:")
    ids, history, summary = wandb_view(run_dir)
    assert ids == {record["id"]}  # every launch (two trainings, one evaluation) is the one wandb run
    rows = rundir.read_metrics(run_dir / "metrics.jsonl")
    assert [row["step"] for row in rows] == [0, 1, 2, 3, 4]
    assert history == [{k: v for k, v in row.items() if v is not None} for row in rows]
    scores = json.loads((run_dir / "eval" / "4" / "scores.json").read_text())["metrics"]
    assert {k: summary[f"eval/{k}"] for k in scores} == scores and summary["eval/step"] == 4
    assert summary["final_val_score"] == json.loads((run_dir / "summary.json").read_text())["final_val_score"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["resolved"]["trainer"]["logger"] == ["console"]  # verl's own wandb logger never ran
    written = [p for p in run_dir.parent.rglob("*") if p.is_file() and WANDB_SECRET.encode() in p.read_bytes()]
    assert written == [] and WANDB_SECRET not in r["log_resumed"] + r["log_eval"] and r["stray"] == []


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
    assert config["resolved"]["trainer"]["logger"] == ["console"]
    assert not (run_dir / rundir.WANDB_RUN).exists() and not (run_dir / rundir.WANDB_FILES).exists()  # mirror disabled
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
    launches = rundir.read_launches(run_dir)
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


def test_sigkill_leaves_no_worker_behind(resume_runs):
    r, _ = resume_runs["chain"]
    assert r["alive_at_kill"], "run ended before it could be killed"
    assert r["steps_after_kill"][:2] == [0, 1]
    assert r["stray_after_kill"] == []


def test_sigterm_stops_cleanly_and_leaves_nothing_behind(resume_runs):
    r, _ = resume_runs["chain"]
    assert r["alive_at_term"], "run ended before it could be preempted"
    assert r["rc_term"] == 143 and "interrupted (SIGTERM)" in r["log_term"], r["log_term"][-3000:]
    assert r["ray_dirs"], "no Ray temp dir seen on the run's command lines"
    assert r["stray_after_term"] == [] and r["ray_dirs_left"] == []


def test_sigterm_stops_the_workers_before_anything_else(resume_runs):
    """Preempted while the checkpoint loads, the workers stop at once: they die while their raylet still runs (before,
    ray.shutdown() took seconds and they trained step 2 and wrote its checkpoint after the signal)."""
    r, _ = resume_runs["chain"]
    seen = r["shutdown"]
    assert seen[0][:2] == (True, True), seen  # the signal came while the run was up
    assert all(raylet for worker, raylet, _ in seen if worker), seen  # no worker outlived the raylet
    assert {tracker for _, _, tracker in seen} == {"1"}, seen  # nothing was checkpointed after the signal


def test_killed_and_preempted_run_resumes_bit_identical(resume_runs):
    rc, ref_dir, log, _ = resume_runs["ppo"]
    assert rc == 0, log[-3000:]
    r, _ = resume_runs["chain"]
    assert r["rc_resumed"] == 0, r["log_resumed"][-3000:]
    assert "resuming from checkpoint step 1" in r["log_resumed"]
    ref, got = rundir.read_metrics(ref_dir / "metrics.jsonl"), r["metrics"]
    assert [row["step"] for row in got] == [row["step"] for row in ref] == [0, 1, 2]
    for a, b in zip(ref, got):
        assert {k for k in a if not k.startswith(CLOCK)} == {k for k in b if not k.startswith(CLOCK)}
        assert {k: v for k, v in b.items() if not k.startswith(CLOCK) and a[k] != v} == {}, f"step {a['step']}"
    want = _checkpoint_contents(ref_dir / "checkpoints" / "global_step_2")  # weights, optimizers, every RNG, data order
    assert r["final_checkpoint"].keys() == want.keys()
    assert [k for k in want if r["final_checkpoint"][k] != want[k]] == []


def test_every_launch_is_recorded_the_killed_one_too(resume_runs):
    r, _ = resume_runs["chain"]
    launches = r["launches"]
    assert [(x["status"], x["start_step"]) for x in launches] == [("killed", 0), ("interrupted", 1), ("completed", 1)]
    assert launches[0]["estimated"] and launches[0]["wall_time_s"] > 0
    assert r["summary"]["launches"] == 3
    assert r["summary"]["wall_time_s"] == round(sum(x["wall_time_s"] for x in launches), 3)


def test_rerun_after_the_final_checkpoint_trains_no_extra_step(resume_runs):
    r, run_dir = resume_runs["chain"]
    assert r["rc_rerun"] == 0, r["log_rerun"][-3000:]
    assert "resuming from checkpoint step 2" in r["log_rerun"]
    assert [row["step"] for row in rundir.read_metrics(run_dir / "metrics.jsonl")] == [0, 1, 2]
    assert not (run_dir / "checkpoints" / "global_step_3").exists()
    assert (run_dir / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {k: v for k, v in summary.items() if k not in ("wall_time_s", "launches")} == \
        {k: v for k, v in r["summary"].items() if k not in ("wall_time_s", "launches")}
    assert summary["launches"] == 4 and r["stray_at_end"] == []


def test_prompts_longer_than_the_budget_are_one_error_line(tiny_model, countdown_data, tmp_path):
    # verl drops every prompt over data.max_prompt_length and asserts "Train dataloader is empty!" in a Ray worker
    proc = subprocess.run(_cmd("ppo", tmp_path / "run", tiny_model, countdown_data, "data.max_prompt_length=8"),
                          capture_output=True, text=True, timeout=300, env=_env(f"short-{uuid.uuid4().hex[:8]}"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (f"error: data.max_prompt_length: none of the 48 prompts of {countdown_data / 'train.parquet'} fits in 8 "
                    "tokens with the chat template (verl drops longer prompts); raise it (data.max_prompt_length=N) or give shorter prompts")
    assert "Traceback" not in proc.stderr
    assert [x["status"] for x in rundir.read_launches(tmp_path / "run")] == ["failed"]


def test_fewer_fitting_prompts_than_a_batch_names_the_batch_size(tiny_model, countdown_data, tmp_path):
    from tre.backend.launch import empty_data_error, prepare
    from tre.backend.profiles import RunSpec

    spec = RunSpec("countdown", "tiny", "ppo", profile="tiny", model_path=str(tiny_model), data_dir=str(countdown_data),
                   run_dir=str(tmp_path / "run"), extra=("data.train_batch_size=64",))
    assert str(empty_data_error(prepare(spec)[1])) == (
        f"data.train_batch_size: 48 of the 48 prompts of {countdown_data / 'train.parquet'} fit in "
        "data.max_prompt_length=144 tokens, fewer than one batch of 64; lower data.train_batch_size or give more prompts")
    assert empty_data_error(prepare(dataclasses.replace(spec, extra=()))[1]) is None  # the tiny profile's data fits
