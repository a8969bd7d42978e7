"""Which executor runs the steps (slurm, local, debug), what a step asks it for, and what Slurm says of a job."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import time
from typing import Any, Callable, Mapping, Optional

from workflow.config import ConfigError, check_resources
from workflow.launcher.errors import LaunchError

CLUSTERS = ("auto", "slurm", "local", "debug")
ENV_CLUSTER = "TRE_LAUNCHER_CLUSTER"
# Slurm states in which a recorded job is still worth waiting for (re-attach instead of resubmitting).
ACTIVE_SLURM_STATES = frozenset(
    {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
     "RESIZING", "SUSPENDED", "PREEMPTED", "SIGNALING", "STAGE_OUT"}
)


@dataclasses.dataclass(frozen=True)
class Resources:
    """What one step asks the scheduler for (mapped onto submitit parameters)."""

    timeout_min: int = 60
    cpus_per_task: int = 1
    mem_gb: float = 4.0
    gpus_per_node: int = 0
    nodes: int = 1
    tasks_per_node: int = 1
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    signal_delay_s: int = 120
    max_requeue: int = 3
    setup: tuple[str, ...] = ()
    additional: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "Resources":
        """Build from a config mapping; one that the config schema refuses raises LaunchError naming the key."""
        try:
            check_resources(data)
        except ConfigError as e:
            raise LaunchError(str(e)) from None
        return cls(**{**data, "mem_gb": float(data.get("mem_gb", cls.mem_gb)), "setup": tuple(data.get("setup", ())),
                      "additional": dict(data.get("additional", {}))})

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (for job.json and the command line)."""
        out = dataclasses.asdict(self)
        out["setup"] = list(self.setup)
        out["additional"] = dict(self.additional)
        return out


def resolve_cluster(name: Optional[str], which: Callable[[str], Optional[str]] = shutil.which,
                    answers: Optional[Callable[[], bool]] = None) -> str:
    """The executor to use: an explicit name, else $TRE_LAUNCHER_CLUSTER, else slurm when srun exists."""
    name = name or os.environ.get(ENV_CLUSTER) or "auto"
    if name not in CLUSTERS:
        raise LaunchError(f"cluster: must be one of {', '.join(CLUSTERS)}, got {name!r}")
    if name == "auto":
        return "slurm" if which("srun") and (answers or slurm_answers)() else "local"
    return name


def slurm_answers() -> bool:
    """Whether a Slurm controller answers here (srun may be installed on a machine whose Slurm is down)."""
    try:
        proc = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and " is UP" in proc.stdout


def slurm_state(job_id: str) -> str:
    """The job's Slurm state from sacct (falls back to squeue), upper-case first word, or UNKNOWN."""
    for argv in (["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id],
                 ["squeue", "-h", "-o", "%T", "-j", job_id]):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.split()
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out:
            return out[0].upper()
    return "UNKNOWN"


def final_slurm_state(job_id: str, timeout_s: float = 60.0, poll_s: float = 1.0) -> str:
    """The state of a job known to have ended. Slurm's accounting can lag behind the end (sacct said PENDING for a
    job whose command had exited), so ask until it names a state that is not active, or timeout_s has passed."""
    deadline = time.monotonic() + timeout_s
    state = slurm_state(job_id)
    while state in ACTIVE_SLURM_STATES and time.monotonic() < deadline:
        time.sleep(poll_s)
        state = slurm_state(job_id)
    return state


def executor_parameters(res: Resources, cluster: str, name: str, *, checkpointable: bool = False) -> dict[str, Any]:
    """submitit update_parameters() keywords for these resources on this executor.

    Only checkpointable steps ask for USR2 `signal_delay_s` before the limit; Slurm sends it from a periodic
    check, so it can come up to a check period early, and a step that cannot checkpoint gains nothing from an
    early signal but could be killed by one arriving before its handler is installed (USR2@0: at the end only).
    """
    if checkpointable and cluster == "slurm" and res.signal_delay_s >= res.timeout_min * 60:
        raise LaunchError(f"resources.signal_delay_s: must be shorter than the time limit "
                          f"({res.timeout_min * 60} s), got {res.signal_delay_s}")
    params: dict[str, Any] = {
        "name": name,
        "timeout_min": res.timeout_min,
        "cpus_per_task": res.cpus_per_task,
        "gpus_per_node": res.gpus_per_node,
        "tasks_per_node": res.tasks_per_node,
    }
    if cluster == "slurm":
        params.update(nodes=res.nodes, mem_gb=res.mem_gb, slurm_signal_delay_s=res.signal_delay_s if checkpointable else 0)
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(res, key) is not None:
                params[f"slurm_{key}"] = getattr(res, key)
        if res.setup:
            params["slurm_setup"] = list(res.setup)
        if res.additional:
            params["slurm_additional_parameters"] = dict(res.additional)
    elif res.nodes > 1:
        raise LaunchError(f"resources.nodes: {res.nodes} nodes need the slurm cluster, not {cluster!r}")
    return params
