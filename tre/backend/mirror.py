"""The wandb mirror of a run directory: one wandb run per run directory, across every launch, fed from metrics.jsonl.

metrics.jsonl stays the source of truth and wandb mirrors it. verl's own wandb logger is not used: it starts a new
wandb run at every launch, so a run requeued three times became four wandb runs with overlapping steps. Instead the
driver of `python -m tre.backend train` follows metrics.jsonl (rundir.MetricsTail) and logs each new row at its step.
The run's wandb id lives in the run directory (rundir.WANDB_RUN). A launch that resumes from checkpoint step k rewinds
that wandb run to k (wandb's `resume_from="<id>?_step=k"`; to the last step it holds, if a killed driver mirrored
less), just as the backend truncates metrics.jsonl to k: the steps a killed launch logged past its checkpoint are
dropped, and the resumed launch logs them again, in order. (The other choice, skipping steps until they pass the last
one logged, would keep the killed launch's values of those steps, which metrics.jsonl no longer has.)
`python -m evaluation evaluate --wandb MODE` adds the evaluation scores to the same run as summary values.

Importing this module does not import wandb; with the mirror disabled nothing of wandb is imported or written.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Mapping, Optional

from tre.backend import rundir

MODES = ("disabled", "offline", "online")
API_KEY_ENV = "WANDB_API_KEY"
SERVICE_ENV = "WANDB_SERVICE"
DEFAULT_PROJECT = "tre"
POLL_S = 2.0  # how often the driver looks for new metrics.jsonl rows (a PPO step takes far longer)
# wandb writes its records to disk this often (its default, 15 s, lost the last 15 s of a SIGKILLed launch); a row
# counts as held by the wandb run (wandb.json's mirrored_step) once it was logged longer ago than SAFE_S
FLUSH_S = 1.0
SAFE_S = FLUSH_S + POLL_S + 2.0
EVAL_PREFIX = "eval/"


def credentials_error(mode: str, env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """What is missing for `mode` (online needs WANDB_API_KEY in `env`, default os.environ), or None; the message never
    holds a key."""
    env = os.environ if env is None else env  # looked up at the call: a library may rebind os.environ
    if mode == "online" and not env.get(API_KEY_ENV):
        return (f"wandb mode online needs {API_KEY_ENV} in the environment of every job (export it before running; "
                "or use mode offline and `wandb sync` the run directories' wandb/ folders later)")
    return None


def identity(task: str, size: str, method: str, seed: int, commit: Optional[str], *, project: str = DEFAULT_PROJECT,
             entity: Optional[str] = None, group: Optional[str] = None) -> dict[str, Any]:
    """A run's wandb names from its grid cell: the seeds of a cell share one group (under `group` when given)."""
    cell = rundir.cell_name(task, size, method)
    tags = [task, size, method, f"seed{seed}"] + ([f"git:{commit[:12]}{'-dirty' if commit.endswith('-dirty') else ''}"] if commit else [])
    return {"project": project, "entity": entity, "group": f"{group}/{cell}" if group else cell,
            "name": rundir.run_name(task, size, method, seed), "tags": tags}


def new_id() -> str:
    """A fresh wandb run id (wandb accepts lowercase letters and digits)."""
    return uuid.uuid4().hex[:12]


def _settings():
    import wandb

    # no console capture, system sampling or code/requirements upload: the mirror carries metrics.jsonl, nothing else
    return wandb.Settings(console="off", x_disable_stats=True, save_code=False, disable_git=True, silent=True,
                          x_save_requirements=False, x_transaction_log_flush_interval=FLUSH_S)


def _init(run_dir: Path, mode: str, record: Mapping[str, Any], **kwargs):
    """wandb.init of the run dir's wandb run (its files under <run_dir>/wandb/)."""
    if "wandb" not in sys.modules:
        # wandb shares its service with child processes through WANDB_SERVICE; one inherited from the process that
        # started this one would outlive a SIGKILL of this launch and refuse the requeued launch ("run ID is in use")
        os.environ.pop(SERVICE_ENV, None)
    import wandb

    return wandb.init(project=record["project"], entity=record.get("entity"), group=record["group"],
                      name=record["name"], tags=list(record["tags"]), dir=str(run_dir), mode=mode,
                      settings=_settings(), **kwargs)


def _row_values(row: Mapping[str, Any]) -> dict[str, Any]:
    """A metrics.jsonl row as wandb values: without its step, and without the non-finite values stored as null."""
    return {k: v for k, v in row.items() if k != "step" and v is not None}


class Mirror:
    """One launch's mirror of metrics.jsonl into the run directory's wandb run (see the module docstring)."""

    def __init__(self, run_dir: str | os.PathLike, mode: str, record: Mapping[str, Any], run, tail: rundir.MetricsTail,
                 done_step: int = -1) -> None:
        self.run_dir, self.mode, self.record, self.run, self.tail = Path(run_dir), mode, dict(record), run, tail
        self.done_step = done_step  # the last step logged to the wandb run; rows up to it are not logged again
        self._logged: list[tuple[float, int]] = []  # (when, step) of logged rows not yet counted as held
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.error: Optional[Exception] = None  # what stopped the mirror, if anything
        self.flush()  # the rows of metrics.jsonl past what the wandb run holds (all of them for a new wandb run)
        self._thread = threading.Thread(target=self._follow, name="tre-wandb-mirror", daemon=True)
        self._thread.start()

    @classmethod
    def start(cls, run_dir: str | os.PathLike, mode: str, names: Mapping[str, Any], start_step: int,
              config: Optional[Mapping[str, Any]] = None) -> "Mirror":
        """Open the run dir's wandb run for a launch resuming from `start_step` (0: fresh), after metrics.jsonl was
        truncated to it, and mirror what the wandb run lacks.

        The stored run is rewound to the last step both hold: `start_step`, or an earlier step when the killed launch
        mirrored less (wandb.json's mirrored_step; a SIGKILL can come before the driver's last poll). A launch with
        nothing to rewind to (fresh, or no step ever mirrored) gets a new wandb run: wandb cannot rewind past step 0."""
        run_dir = Path(run_dir)
        record = rundir.read_wandb_run(run_dir)
        point = min(int(start_step), int(record.get("mirrored_step", -1))) if record and start_step else -1
        if point < 0:
            record = {"id": new_id(), **names}
            rundir.write_wandb_run(run_dir, record)
            how: dict[str, Any] = {"id": record["id"], "resume": "allow"}
        else:
            how = {"resume_from": f"{record['id']}?_step={point}"}
        run = _init(run_dir, mode, record, config=dict(config or {}), **how)
        return cls(run_dir, mode, record, run, rundir.MetricsTail(run_dir / rundir.METRICS), done_step=point)

    def _follow(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self.flush()
            except Exception as exc:  # a mirror failure never stops training: metrics.jsonl has every row
                self.error = exc
                return

    def flush(self) -> int:
        """Log the metrics.jsonl rows written since the last flush (past done_step), and record the last in wandb.json;
        how many."""
        with self._lock:
            rows = [row for row in self.tail.read()[0] if int(row["step"]) > self.done_step]
            for row in rows:
                self.run.log(_row_values(row), step=int(row["step"]))
                self.done_step = int(row["step"])
                self._logged.append((time.monotonic(), self.done_step))
            held = [step for when, step in self._logged if time.monotonic() - when > SAFE_S]
            if held:
                self._logged = self._logged[len(held):]
                self._mark_held(held[-1])
            return len(rows)

    def _mark_held(self, step: int) -> None:
        """Record in wandb.json that the wandb run holds every step up to `step` (the rewind point of a later launch)."""
        self.record["mirrored_step"] = step
        rundir.write_wandb_run(self.run_dir, self.record)

    def close(self, status: str, summary: Optional[Mapping[str, Any]] = None) -> None:
        """Mirror the last rows, then finish this launch's wandb run: completed (with summary.json's scores as summary
        values), or preempted/failed (a later launch continues it)."""
        self._stop.set()
        self._thread.join()
        try:  # the run itself is done and recorded: a failure here leaves only its mirror incomplete
            if self.error is None:
                self.flush()
                if summary:
                    self.run.summary.update({k: v for k, v in summary.items() if v is not None})
                if status == "interrupted":
                    self.run.mark_preempting()
        except Exception as exc:
            self.error = exc
        try:
            self.run.finish(exit_code=0 if status == "completed" and self.error is None else 1)
            if self.error is None and self.done_step >= 0:
                self._mark_held(self.done_step)  # finish wrote every record
        except Exception as exc:
            self.error = self.error or exc
        if self.error is not None:
            first = str(self.error).strip().splitlines()[0] if str(self.error).strip() else type(self.error).__name__
            print(f"warning: wandb mirror stopped ({first}); {rundir.METRICS} is complete", file=sys.stderr)


def log_eval(run_dir: str | os.PathLike, mode: str, names: Mapping[str, Any], scores: Mapping[str, Any]) -> str:
    """Add evaluation scores to the run dir's wandb run as summary values ("eval/<name>"); returns its id. A run
    trained without the mirror gets its wandb run here."""
    run_dir = Path(run_dir)
    record = rundir.read_wandb_run(run_dir)
    if record is None:
        record = {"id": new_id(), **names}
        rundir.write_wandb_run(run_dir, record)
    run = _init(run_dir, mode, record, id=record["id"], resume="allow")
    run.summary.update({f"{EVAL_PREFIX}{k}": v for k, v in scores.items() if v is not None})
    run.finish(exit_code=0)
    return record["id"]
