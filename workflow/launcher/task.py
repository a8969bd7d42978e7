"""The submitit task this process runs in: its rank, world size, folder and restart count, and Slurm's USR2."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import submitit


def ignore_usr2() -> None:
    """preexec_fn of every child: ignore USR2 (Slurm's --signal reaches every process of the step).

    USR2 is the launcher's cue, and its default action would kill the child outright. The command is told to save
    with SIGTERM instead (see CheckpointableCommand.checkpoint)."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def restart_count() -> int:
    """How often Slurm has requeued this job (0 outside Slurm)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)


def job_env() -> dict[str, Any]:
    """Rank, world size, job id, job folder, CPUs and GPUs of the current submitit task."""
    try:
        env = submitit.JobEnvironment()
        folder = env.paths.folder
        rank, num_tasks, job_id = env.global_rank, env.num_tasks, env.job_id
    except (RuntimeError, KeyError):  # the debug executor runs in-process, without a job environment
        folder, rank, num_tasks, job_id = Path.cwd(), 0, 1, "debug"
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    gpus = os.environ.get("SLURM_GPUS_ON_NODE") or os.environ.get("SLURM_GPUS_PER_NODE") or "0"
    return {"folder": str(folder), "rank": rank, "num_tasks": num_tasks, "job_id": str(job_id),
            "cpus": int(cpus) if cpus else None, "gpus": int(gpus.split(":")[-1]) if gpus else 0}
