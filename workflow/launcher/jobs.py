"""Submit one step through submitit (or re-attach to its still-running job), wait for it, and record it in job.json."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import submitit

from common.files import atomic_write_text
from workflow.launcher.cluster import (ACTIVE_SLURM_STATES, Resources, executor_parameters, final_slurm_state,
                                      resolve_cluster, slurm_state)
from workflow.launcher.command import CheckpointableCommand, Command
from workflow.launcher.errors import JobFailed, StepFailed
from workflow.launcher.progress import StepProgress
from workflow.launcher.tokens import ensure_launch_token


@dataclasses.dataclass
class StepSpec:
    """One step to launch: its command, where its logs go, and what it needs."""

    name: str
    log_dir: Path
    argv: list[str]
    resources: Resources = dataclasses.field(default_factory=Resources)
    cluster: str = "auto"
    checkpointable: bool = False
    reward_model: Optional[str] = None
    ray: bool = False
    cwd: Optional[str] = None
    term_grace_s: float = 60.0

    def fingerprint(self) -> str:
        """Identifies the step's command so that a rerun re-attaches only to the same work."""
        blob = json.dumps({"argv": self.argv, "reward_model": self.reward_model, "ray": self.ray}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def command(self, cluster: str) -> Command:
        """The callable the job runs on `cluster` (resolved: slurm, local or debug)."""
        cls = CheckpointableCommand if self.checkpointable else Command
        # A CPU-only step's torch threads are capped at its CPUs: otherwise each of its processes (Ray driver,
        # TaskRunner, workers) sizes its pool to the whole machine, and two steps side by side on 2 cores took
        # twice as long (measured: a pair of 20-step tiny PPO runs 173 s vs 88 s). GPU steps keep Ray's defaults.
        threads = self.resources.cpus_per_task if not self.resources.gpus_per_node else None
        return cls(argv=list(self.argv), cwd=self.cwd or os.getcwd(), reward_model=self.reward_model, ray=self.ray,
                   term_grace_s=self.term_grace_s, cpu_threads=threads, share_reward_server=cluster == "local")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def read_record(log_dir: Path) -> Optional[dict[str, Any]]:
    """The job.json of a log dir, or None when there is none (or it is unreadable)."""
    try:
        return json.loads((log_dir / "job.json").read_text())
    except (OSError, ValueError):
        return None


def write_record(log_dir: Path, record: Mapping[str, Any]) -> None:
    """Write job.json atomically."""
    atomic_write_text(log_dir / "job.json", json.dumps(record, indent=2, sort_keys=True) + "\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        return "submitit" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def attach(spec: StepSpec, cluster: str, state_of: Callable[[str], str] = slurm_state) -> Optional[submitit.Job]:
    """The still-running job recorded for this same step, or None when a new one must be submitted."""
    rec = read_record(spec.log_dir)
    if not rec or rec.get("fingerprint") != spec.fingerprint() or rec.get("cluster") != cluster:
        return None
    if rec.get("state") not in ("submitted", "running"):
        return None
    job_id, folder = str(rec["job_id"]), spec.log_dir / "%j"
    tasks = tuple(range(int(rec.get("num_tasks", 1))))
    if cluster == "slurm" and state_of(job_id) in ACTIVE_SLURM_STATES:
        return submitit.SlurmJob(folder=folder, job_id=job_id, tasks=tasks)
    if cluster == "local" and job_id.isdigit() and _pid_alive(int(job_id)):
        return submitit.LocalJob(folder=folder, job_id=job_id, tasks=tasks)
    return None


def _wait(job: submitit.Job, cluster: str, poll_s: Optional[float] = None, force_every_s: float = 15.0,
          on_poll: Callable[[], None] = lambda: None) -> None:
    """Until the job is done. A local job's process is asked every 0.1 s (the step's slot is idle meanwhile: at
    1 s the miniature's 108 steps lost a minute of cores), a Slurm job's state every second."""
    if poll_s is None:
        poll_s = 0.1 if cluster == "local" else 1.0
    if cluster == "debug":
        return  # the debug executor runs the step inside result()
    if cluster == "local" and getattr(job, "_process", None) is None:
        # a re-attached local job: its process is not ours, so follow its pid
        while _pid_alive(int(job.job_id)):
            on_poll()
            time.sleep(poll_s)
        return
    last_force = time.monotonic()
    while True:
        force = time.monotonic() - last_force >= force_every_s
        if force:
            last_force = time.monotonic()
        if job.done(force_check=force):
            on_poll()
            return
        on_poll()
        time.sleep(poll_s)


def launch(spec: StepSpec) -> dict[str, Any]:
    """Submit (or re-attach to) the step, wait for it, record the outcome; raise LaunchError if it failed."""
    cluster = resolve_cluster(spec.cluster)
    spec.log_dir.mkdir(parents=True, exist_ok=True)
    params = executor_parameters(spec.resources, cluster, spec.name, checkpointable=spec.checkpointable)
    ensure_launch_token()
    num_tasks = spec.resources.nodes * spec.resources.tasks_per_node
    job = attach(spec, cluster) if cluster != "debug" else None
    record = {"name": spec.name, "cluster": cluster, "fingerprint": spec.fingerprint(), "argv": spec.argv,
              "resources": spec.resources.to_dict(), "num_tasks": num_tasks, "log_dir": str(spec.log_dir)}
    if job is not None:
        prev = read_record(spec.log_dir) or {}
        record.update(job_id=job.job_id, state="running", submitted=prev.get("submitted"), attached=_now())
        print(f"[launcher] {spec.name}: re-attaching to job {job.job_id} ({cluster})", file=sys.stderr, flush=True)
    else:
        kwargs = {"slurm_max_num_timeout": spec.resources.max_requeue} if cluster == "slurm" else {}
        executor = submitit.AutoExecutor(folder=spec.log_dir / "%j", cluster=cluster, **kwargs)
        executor.update_parameters(**params)
        try:
            job = executor.submit(spec.command(cluster))
        except Exception as e:  # sbatch refusing the request, no Slurm controller, ...
            raise JobFailed(f"{spec.name}: submission to {cluster} failed: {str(e).strip().splitlines()[-1]}") from e
        record.update(job_id=job.job_id, state="submitted", submitted=_now())
        print(f"[launcher] {spec.name}: submitted job {job.job_id} ({cluster}); logs in {spec.log_dir}",
              file=sys.stderr, flush=True)
    write_record(spec.log_dir, record)  # before waiting: a rerun finds the job id and re-attaches
    started = time.time()
    try:
        return _wait_and_record(spec, job, cluster, record, started)
    finally:
        _remove_if_empty(spec.log_dir / "%j")  # submitit also makes the unexpanded folder


def _wait_and_record(spec: StepSpec, job: submitit.Job, cluster: str, record: dict[str, Any],
                     started: float) -> dict[str, Any]:
    progress = StepProgress.for_step(spec)
    try:
        _wait(job, cluster, on_poll=progress.poll if progress else (lambda: None))
        if cluster == "debug":
            # DebugJob.results() opens pdb on an error; exception() runs the step without that detour
            error = job.exception()
            if error is not None:
                raise error
        results = job.results()
        if progress:
            progress.poll()  # the debug executor ran the step inside results(): its last step shows now
    except KeyboardInterrupt:
        raise
    except Exception as e:
        # only Slurm knows why (FAILED, TIMEOUT, CANCELLED, OUT_OF_MEMORY, ...); local processes just failed
        state = _job_state(job, cluster) if cluster == "slurm" else "FAILED"
        log = _log_path(job)
        record.update(state="failed", job_state=state, finished=_now(), stderr=log)
        write_record(spec.log_dir, record)
        reason = _failure_reason(e)
        raise JobFailed(f"{spec.name}: job {job.job_id} failed ({state}{': ' + reason if reason else ''}); "
                        f"log: {log}") from None
    record.update(state="completed", job_state=_job_state(job, cluster), finished=_now(),
                  wait_s=round(time.time() - started, 3), results=results, stderr=_log_path(job))
    write_record(spec.log_dir, record)
    return record


def _remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _job_state(job: submitit.Job, cluster: str) -> str:
    if cluster == "debug":
        return "DEBUG"
    if cluster == "slurm":
        return final_slurm_state(str(job.job_id))  # called once the job has ended
    try:
        return str(job.state)
    except Exception:  # submitit raises various errors for vanished local processes
        return "UNKNOWN"


def _log_path(job: submitit.Job) -> str:
    try:
        return str(job.paths.stderr)
    except Exception:
        return "?"


def _failure_reason(e: BaseException) -> str:
    """The StepFailed message inside the job's failure (submitit hands it over as the job's traceback text)."""
    if isinstance(e, StepFailed):
        return str(e)
    text = str(e)
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith(("StepFailed:", f"{StepFailed.__module__}.StepFailed:")):
            return line.split(":", 1)[1].strip()
    for line in text.strip().splitlines():
        if "has not produced any output" in line or "not requeued" in line:
            return line.strip()
    return ""
