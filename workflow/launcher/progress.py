"""`<name> <run>: step i/N` on the driving terminal while a training job's run directory grows (throttled)."""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from common.files import BadFile
from tre.backend.rundir import METRICS, MetricsTail, RunDir, RunDirError

if TYPE_CHECKING:
    from workflow.launcher.jobs import StepSpec

PROGRESS_FD_ENV = "TRE_PROGRESS_FD"  # a rule's shell keeps the terminal on this fd while the launcher's output goes to its log


class StepProgress:
    """Prints `<name> <run>: step i/N` as a run's metrics grow, at most every `every_s` (the last step always).

    Reads only the lines added to the run's metrics since the last poll (rundir.MetricsTail), so it costs the wait
    loop nothing and works for any executor whose run directory the driver can see (local, shared-FS Slurm)."""

    def __init__(self, label: str, run_dir: Path, every_s: float = 10.0, stream=None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label, self.run_dir, self.every_s, self.clock = label, Path(run_dir), every_s, clock
        self.stream = stream if stream is not None else _progress_stream()
        self.tail = MetricsTail(self.run_dir / METRICS)
        self.step, self.shown, self.last_print = 0, 0, -math.inf
        self.total: Optional[int] = None

    @classmethod
    def for_step(cls, spec: StepSpec) -> Optional[StepProgress]:
        """A watcher for a step whose command trains into `--run-dir DIR`, else None."""
        argv = list(spec.argv)
        run_dir = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--run-dir"), None)
        run_dir = run_dir or next((a.split("=", 1)[1] for a in argv if a.startswith("--run-dir=")), None)
        if run_dir is None:
            return None
        path = Path(run_dir) if Path(run_dir).is_absolute() else Path(spec.cwd or os.getcwd()) / run_dir
        return cls(f"{spec.name} {Path(run_dir).as_posix().removeprefix('runs/')}", path)

    def poll(self) -> None:
        """Print the latest step if it moved and `every_s` has passed (the last step always)."""
        try:
            rows, restarted = self.tail.read()
        except RunDirError:  # a corrupt line: the run's readers report it; the progress line waits for the next
            rows, restarted = [], False
        if restarted:  # a resumed run truncated its metrics to its checkpoint
            self.step, self.shown = 0, 0
        self.step = max([self.step, *(row["step"] for row in rows)])
        if self.total is None:
            try:
                self.total = RunDir(self.run_dir).total_steps
            except (BadFile, ValueError, TypeError):  # no config.json yet
                pass
        now = self.clock()
        if self.step > self.shown and (now - self.last_print >= self.every_s or self.step == self.total):
            of = f"/{self.total}" if self.total else ""
            try:
                print(f"{self.label}: step {self.step}{of}", file=self.stream, flush=True)
            except (OSError, ValueError):  # the terminal went away; the job goes on
                return
            self.shown, self.last_print = self.step, now


def _progress_stream():
    """The driving terminal: the fd named by $TRE_PROGRESS_FD when the rule kept one open, else stderr."""
    fd = os.environ.get(PROGRESS_FD_ENV, "")
    if fd.isdigit():
        try:
            return os.fdopen(int(fd), "w", closefd=False)
        except OSError:
            pass
    return sys.stderr
