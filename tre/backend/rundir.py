"""The run directory contract: config.json, metrics.jsonl (fed from verl's Tracking), launches.jsonl, summary.json.

runs/<task>/<size>/<method>/seed<k>/{config.json, metrics.jsonl, launches.jsonl, summary.json, checkpoints/}
and, when the wandb mirror is on (tre.backend.mirror), wandb.json (the run's one wandb identity) and wandb/ (wandb's files)

The one writer and reader of this format: `RunDir` is what evaluation and figures read a run with, so that verl's
config layout and checkpoint folders are known only here. Importing this module imports no torch, verl
or pandas.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import socket
import subprocess
import time
import uuid
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from common.files import BadFile, atomic_write_text, read_json_object
from common.files import atomic_write_json  # noqa: F401  (the run files' writer, used as rundir.atomic_write_json)

RUN_DIR_ENV = "TRE_RUN_DIR"  # set for the Ray workers: where the TaskRunner's Tracking also writes metrics.jsonl
CONFIG, METRICS, SUMMARY, CHECKPOINTS = "config.json", "metrics.jsonl", "summary.json", "checkpoints"
WANDB_RUN, WANDB_FILES = "wandb.json", "wandb"  # the wandb mirror's identity of the run, and wandb's own folder
LAUNCHES = "launches.jsonl"  # per launch of `train` (a resumed run has several): a start line, then an end line
VAL_PREFIX, VAL_SUFFIX = "val-core/", "/reward/mean@1"
# Where config.json's "resolved" (verl's resolved config) names what the readers need, as dotted paths.
BASE_MODEL_FIELD = "resolved.actor_rollout_ref.model.path"
DATA_FIELDS = {"test": "resolved.data.val_files", "train": "resolved.data.train_files"}
MAX_RESPONSE_LENGTH_FIELD = "resolved.data.max_response_length"
SCORE_FIELDS = ("val_metric", "final_val_score", "best_val_score", "best_step")  # summary.json's scores of a run
_SEED_DIR = re.compile(r"seed(\d+)$")


class RunDirError(BadFile):
    """A run-directory file that is not in its format; the message names the path and the problem."""


def _scalar(value: Any) -> Optional[float] | bool:
    """A metric value as a JSON number (None where not finite); False when it is not a scalar at all."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    return False


def metric_row(data: Mapping[str, Any], step: int) -> dict[str, Any]:
    """{"step": step, name: float...} keeping only scalar metrics (verl also logs tables and strings)."""
    row: dict[str, Any] = {"step": int(step)}
    for key, value in data.items():
        v = _scalar(value)
        if v is not False:
            row[key] = v
    return row


def parse_metrics(text: str, where: str = METRICS, first_line: int = 1) -> list[dict[str, Any]]:
    """The rows of metrics.jsonl text (its line `first_line` on); RunDirError (naming `where` and the line) for a line
    that is not a JSON object with an integer "step".

    The one exception is a torn last line: an unterminated final line that is not JSON is what a kill mid-write
    leaves, so it is dropped (the run lost at most that step, and a resume truncates past it anyway). A broken line
    that ends in a newline, or one before the last, is corruption that a kill cannot make, and is an error.
    """
    lines = text.split("\n")
    rows = []
    for i, line in enumerate(lines, start=first_line):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == first_line + len(lines) - 1:  # the last line, without a newline: torn
                break
            raise RunDirError(f"{where}: corrupt at line {i}") from None
        if not isinstance(row, dict) or isinstance(row.get("step"), bool) or not isinstance(row.get("step"), int):
            raise RunDirError(f"{where}: line {i} has no integer 'step'")
        rows.append(row)
    return rows


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All rows of a metrics.jsonl ([] when there is none); see parse_metrics for a torn last line and corruption."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return parse_metrics(text, str(path))


class MetricsTail:
    """Follows a growing metrics.jsonl: each read() returns the rows of the lines completed since the last read."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path, self.offset, self.lines = Path(path), 0, 0

    def read(self) -> tuple[list[dict[str, Any]], bool]:
        """(new rows, restarted): restarted when the file was rewritten shorter (a resume truncated it), and the rows
        are then read from its start. A torn last line is left to be read whole next time; RunDirError as parse_metrics."""
        try:
            size = self.path.stat().st_size
            restarted = size < self.offset
            if restarted:
                self.offset, self.lines = 0, 0
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read(size - self.offset)
        except OSError:
            return [], False
        done = chunk.rfind(b"\n") + 1
        text, first = chunk[:done].decode("utf-8", errors="replace"), self.lines + 1
        self.offset, self.lines = self.offset + done, self.lines + text.count("\n")
        return parse_metrics(text, str(self.path), first), restarted


class MetricsLog:
    """Append-only metrics.jsonl: one flushed line per step; a step already on disk is never written again."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.steps = {int(r["step"]) for r in read_metrics(self.path) if "step" in r}

    def log(self, data: Mapping[str, Any], step: int) -> bool:
        """Append one row; returns False (and writes nothing) when `step` already has a line."""
        if int(step) in self.steps:
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(metric_row(data, step)) + "\n")
            f.flush()
        self.steps.add(int(step))
        return True


def truncate_metrics(path: str | os.PathLike, last_step: int) -> int:
    """Keep only rows with step <= last_step (the checkpoint a restart resumes from); returns rows dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    rows = read_metrics(path)
    kept = [r for r in rows if int(r.get("step", -1)) <= last_step]
    seen, unique = set(), []
    for r in kept:  # also heal a file that somehow holds a step twice: first line wins
        if r["step"] not in seen:
            seen.add(r["step"])
            unique.append(r)
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in unique))
    return len(rows) - len(unique)


def _append_line(path: Path, record: Mapping[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def last_sign_of_life(run_dir: str | os.PathLike) -> float:
    """When the run last showed progress: launches.jsonl's mtime (the running launch's heartbeat) or metrics.jsonl's."""
    return max(_mtime(Path(run_dir) / LAUNCHES), _mtime(Path(run_dir) / METRICS))


def start_launch(run_dir: str | os.PathLike, *, start_step: int, now: Optional[float] = None) -> dict[str, Any]:
    """Append this launch's start line; first close any earlier launch that never wrote its end line (it was killed).

    A killed launch's wall time is estimated as its last sign of life (heartbeat or metrics line) minus its start,
    so it is at most one heartbeat interval short; its end line says `"estimated": true`."""
    path = Path(run_dir) / LAUNCHES
    last_alive = last_sign_of_life(run_dir)
    for launch in read_launches(run_dir):
        if launch["status"] == "running":
            _append_line(path, {"launch": launch["launch"], "finished": _iso(last_alive), "status": "killed", "estimated": True,
                                "wall_time_s": round(max(0.0, last_alive - launch["started_s"]), 3)})
    now = time.time() if now is None else now
    start = {"launch": uuid.uuid4().hex[:12], "started": _iso(now), "started_s": round(now, 3), "start_step": start_step,
             "pid": os.getpid(), "host": socket.gethostname()}
    _append_line(path, start)
    return start


def heartbeat(run_dir: str | os.PathLike) -> None:
    """Mark the running launch alive now (launches.jsonl's mtime; nothing is written)."""
    try:
        os.utime(Path(run_dir) / LAUNCHES)
    except FileNotFoundError:
        pass


def end_launch(run_dir: str | os.PathLike, launch: Mapping[str, Any], *, status: str, now: Optional[float] = None) -> None:
    """Append the end line of a launch that start_launch began (flushed: a killed driver loses at most this line)."""
    now = time.time() if now is None else now
    _append_line(Path(run_dir) / LAUNCHES, {"launch": launch["launch"], "finished": _iso(now), "status": status,
                                            "wall_time_s": round(now - launch["started_s"], 3)})


def read_launches(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every launch of the run in start order, its start and end lines merged; a torn line is skipped.

    A launch without an end line has status "running" (still going, or killed and not rerun yet) and a wall time up to
    its last sign of life. Lines without a "launch" id (the older one-line-per-launch format) are whole launches."""
    path = Path(run_dir) / LAUNCHES
    launches: dict[str, dict[str, Any]] = {}
    for n, line in enumerate(path.read_text().splitlines() if path.exists() else []):
        try:
            record = json.loads(line)
            key = str(record.get("launch", f"line{n}"))
        except (ValueError, AttributeError):
            continue
        launches.setdefault(key, {"launch": key}).update(record)
    out = []
    last_alive = last_sign_of_life(run_dir)
    for launch in launches.values():
        try:
            if "wall_time_s" not in launch:
                launch["status"] = "running"
                launch["wall_time_s"] = max(0.0, last_alive - float(launch["started_s"]))
            launch["wall_time_s"] = float(launch["wall_time_s"])
        except (ValueError, KeyError, TypeError):
            continue
        out.append(launch)
    return out


def total_wall_time(run_dir: str | os.PathLike) -> float:
    """Wall time summed over every launch of the run (a killed one's estimated; see start_launch)."""
    return round(sum(launch["wall_time_s"] for launch in read_launches(run_dir)), 3)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def read_wandb_run(run_dir: str | os.PathLike) -> Optional[dict[str, Any]]:
    """wandb.json: the run's wandb identity (id, project, entity, group, name, tags) and the last step mirrored into it
    (mirrored_step), or None before its first mirror."""
    path = Path(run_dir) / WANDB_RUN
    return read_json_object(path, str(path)) if path.is_file() else None


def write_wandb_run(run_dir: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Write wandb.json (atomically); it holds names only, never a credential."""
    atomic_write_json(Path(run_dir) / WANDB_RUN, dict(record))


def latest_checkpoint_step(checkpoint_dir: str | os.PathLike) -> int:
    """The step verl's resume_mode=auto restarts from (its latest_checkpointed_iteration.txt), 0 if none."""
    marker = Path(checkpoint_dir) / "latest_checkpointed_iteration.txt"
    try:
        step = int(marker.read_text().strip())
    except (FileNotFoundError, ValueError):
        return 0
    return step if (Path(checkpoint_dir) / f"global_step_{step}").is_dir() else 0


def install_tracking_hook(run_dir: str | os.PathLike) -> None:
    """Make every verl Tracking.log call (TaskRunner process) also append to <run_dir>/metrics.jsonl."""
    from verl.utils.tracking import Tracking

    if getattr(Tracking.log, "_tre_hooked", False):
        return
    orig_log = Tracking.log
    sink = MetricsLog(Path(run_dir) / METRICS)

    def log(self, data, step, backend=None):
        sink.log(data, step)
        return orig_log(self, data=data, step=step, backend=backend)

    log._tre_hooked = True
    Tracking.log = log


def val_metric_name(rows: Iterable[Mapping[str, Any]], preferred: Optional[str] = None) -> Optional[str]:
    """The validation score key: `preferred` if logged, else the one val-core/<source>/reward/mean@1 key."""
    names = sorted({k for r in rows for k in r if k.startswith(VAL_PREFIX) and k.endswith(VAL_SUFFIX)})
    if preferred and preferred in names:
        return preferred
    return names[0] if names else None


def summarize(rows: list[Mapping[str, Any]], preferred_metric: Optional[str] = None) -> dict[str, Any]:
    """final/best validation score, best step and trained steps of a run's metric rows."""
    name = val_metric_name(rows, preferred_metric)
    vals = [(int(r["step"]), r[name]) for r in rows if name and r.get(name) is not None]
    train_steps = [int(r["step"]) for r in rows if "training/global_step" in r]
    best = max(vals, key=lambda sv: (sv[1], -sv[0])) if vals else None
    return {
        "val_metric": name,
        "final_val_score": max(vals)[1] if vals else None,
        "best_val_score": best[1] if best else None,
        "best_step": best[0] if best else None,
        "steps": max(train_steps) if train_steps else 0,
    }


def summary_record(run_dir: str | os.PathLike, task: str, size: str, method: str, seed: int,
                   preferred_metric: Optional[str] = None) -> dict[str, Any]:
    """The summary.json object of a completed run: its key, summarize() of its metrics, and the wall time summed over
    every launch (a run resumed after preemption reports all the time it took, not its last leg)."""
    rows = read_metrics(Path(run_dir) / METRICS)
    return {"task": task, "size": size, "method": method, "seed": seed, **summarize(rows, preferred_metric),
            "wall_time_s": total_wall_time(run_dir), "launches": len(read_launches(run_dir)), "status": "completed"}


def find_run_dirs(root: str | os.PathLike) -> list[Path]:
    """Every seed<k> directory under `root` that holds a run file (config.json, metrics.jsonl or summary.json), sorted."""
    found = set()
    for name in (CONFIG, METRICS, SUMMARY):
        for f in Path(root).rglob(name):
            if _SEED_DIR.search(f.parent.name) and CHECKPOINTS not in f.parts and "eval" not in f.parent.parts:
                found.add(f.parent)
    return sorted(found)


def run_path(task: str, size: str, method: str, seed: int) -> str:
    """<task>/<size>/<method>/seed<k>: where a grid cell's run lives below runs/ (and its logs below logs/<rule>/)."""
    return f"{task}/{size}/{method}/seed{int(seed)}"


def cell_name(task: str, size: str, method: str) -> str:
    """<task>_<size>_<method>: a grid cell's name (the wandb group of its seeds)."""
    return f"{task}_{size}_{method}"


def run_name(task: str, size: str, method: str, seed: int) -> str:
    """<task>_<size>_<method>_seed<k>: a run's name (verl's experiment_name, the wandb run's name)."""
    return f"{cell_name(task, size, method)}_seed{int(seed)}"


class RunDir:
    """Reader of one run directory: config.json (with the base model and data files of verl's resolved config),
    checkpoints, metrics and summary.json, the one source of the run's scores (launches: read_launches).

    `what` names the run in error messages (a CLI argument such as RUN_DIR); by default the file's name does.
    """

    def __init__(self, path: str | os.PathLike, what: Optional[str] = None) -> None:
        self.path, self.what = Path(path), what

    @classmethod
    def of(cls, runs_dir: str | os.PathLike, task: str, size: str, method: str, seed: int,
           what: Optional[str] = None) -> "RunDir":
        """The run <runs_dir>/<task>/<size>/<method>/seed<seed>."""
        return cls(Path(runs_dir) / run_path(task, size, method, seed), what)

    def _json(self, name: str) -> dict[str, Any]:
        return read_json_object(self.path / name, self.what or name)

    @functools.cached_property
    def config(self) -> dict[str, Any]:
        """config.json (see config_record); BadFile when it is missing, not JSON or not an object."""
        return self._json(CONFIG)

    def field(self, dotted: str) -> Any:
        """The config.json value at a dotted path such as BASE_MODEL_FIELD, or None where it is absent."""
        value: Any = self.config
        for key in dotted.split("."):
            value = value.get(key) if isinstance(value, Mapping) else None
        return value

    @property
    def base_model(self) -> Optional[str]:
        """The model the run started from (verl's actor_rollout_ref.model.path), or None."""
        return self.field(BASE_MODEL_FIELD) or None

    def data_files(self, split: str) -> list[str]:
        """The run's parquet files of `split` (one of DATA_FIELDS: test = verl's val_files, train = train_files)."""
        files = self.field(DATA_FIELDS[split])
        if not files:
            return []
        return [str(f) for f in files] if isinstance(files, (list, tuple)) else [str(files)]

    @property
    def max_response_length(self) -> Optional[int]:
        """verl's data.max_response_length of the run, or None."""
        return self.field(MAX_RESPONSE_LENGTH_FIELD)

    @property
    def total_steps(self) -> Optional[int]:
        """The planned training steps when the config fixes them (config.json's total_steps), else None."""
        total = self.config.get("total_steps")
        return int(total) if total else None

    def checkpoints(self) -> dict[int, Path]:
        """step -> HF model dir of every saved checkpoints/global_step_<N>/actor/huggingface (with a config.json).

        verl's resume point is latest_checkpoint_step, which needs only the step folder, not the HF model."""
        out = {}
        for d in (self.path / CHECKPOINTS).glob("global_step_*"):
            step, hf = d.name.removeprefix("global_step_"), d / "actor" / "huggingface"
            if step.isdigit() and (hf / CONFIG).is_file():
                out[int(step)] = hf
        return dict(sorted(out.items()))

    def checkpoint(self, step: Optional[int] = None) -> Path:
        """The HF model dir of checkpoint `step` (the last one by default); RunDirError when there is none."""
        steps = self.checkpoints()
        if step is None and steps:
            step = max(steps)
        if step not in steps:
            name = f"global_step_{'<N>' if step is None else step}"
            raise RunDirError(f"{self.path / CHECKPOINTS}: no {name}/actor/huggingface with a config.json")
        return steps[step]

    def metrics(self) -> list[dict[str, Any]]:
        """The rows of metrics.jsonl (see parse_metrics); [] when there is none."""
        return read_metrics(self.path / METRICS)

    @functools.cached_property
    def summary(self) -> Optional[dict[str, Any]]:
        """summary.json (written when training completed), or None for a run without one."""
        return self._json(SUMMARY) if (self.path / SUMMARY).is_file() else None

    def scores(self) -> dict[str, Any]:
        """status and SCORE_FIELDS from summary.json; a run without one (unfinished) is "incomplete", scored by the
        same summarize() over its metrics so far."""
        summary = self.summary
        if summary is None:
            summary = {**summarize(self.metrics()), "status": "incomplete"}
        return {"status": summary.get("status", "incomplete"), **{k: summary.get(k) for k in SCORE_FIELDS}}


def git_commit(path: str | os.PathLike) -> Optional[str]:
    """HEAD commit of the repository holding `path` (with '-dirty' when the tree has changes), or None."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=path, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def package_versions() -> dict[str, Optional[str]]:
    """Versions of the packages that decide a run's numbers."""
    from importlib import metadata

    out = {}
    for name in ("torch", "verl", "transformers", "ray", "vllm"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_string() -> str:
    """'cpu' or 'cuda:<device name>' (torch is imported only where there is a GPU to name)."""
    from tre.backend.cpu import has_nvidia_gpu

    if not has_nvidia_gpu():
        return "cpu"
    import torch

    return f"cuda:{torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "cpu"


def method_record(method) -> dict[str, Any]:
    """The dataclass fields of a baselines.Method as plain JSON values."""
    return {f.name: (dict(getattr(method, f.name)) if f.name == "loss_params" else getattr(method, f.name)) for f in fields(method)}


def applied_method_record(method, resolved: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the method as the run applied it, the registry's values that the run's overrides replaced)."""
    from tre.backend.profiles import applied_method_fields

    registry = method_record(method)
    applied = {**registry, **applied_method_fields(method, resolved)}
    return applied, {k: v for k, v in registry.items() if applied[k] != v}


def config_record(spec, method, overrides: list[str], resolved: Mapping[str, Any]) -> dict[str, Any]:
    """The config.json object of a run; method_spec holds the values verl ran with, not only the registry's."""
    applied, replaced = applied_method_record(method, resolved)
    return {
        "task": spec.task,
        "size": spec.size,
        "method": spec.method,
        "seed": spec.seed,
        "profile": spec.profile,
        "method_spec": applied,
        "method_registry": replaced,  # e.g. {"entropy_coeff": 0.001} where the tiny grid applies 0.3
        # the planned steps when the config fixes them (else verl derives them from data size x epochs): i of N
        "total_steps": (resolved.get("trainer") or {}).get("total_training_steps"),
        "overrides": list(overrides),
        "resolved": resolved,
        "git_commit": git_commit(Path(__file__).resolve().parent),
        "packages": package_versions(),
        "device": device_string(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# ------------------------------------------------------------------------------------- superseding a run


def supersede_if_changed(run_dir: Path, stamp: Path, spec_json: str) -> Optional[Path]:
    """If run_dir was made with a different spec than spec_json, move it aside (never delete) and return where.

    Snakemake reruns a training step when its parameters change; the old run dir would otherwise be resumed
    from its checkpoints by the new run. `stamp` (outside the run dir) records the spec the run dir was made with."""
    new = json.loads(spec_json)
    moved = None
    old = json.loads(stamp.read_text()) if stamp.exists() else None
    if old is not None and old != new and run_dir.exists():
        # outside runs/: whatever collects runs/ must not pick the old run up
        parts = run_dir.parts
        base = Path(f"{parts[0]}.superseded", *parts[1:]) if len(parts) > 1 else Path(f"{run_dir}.superseded")
        moved = base.with_name(f"{base.name}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}")
        moved.parent.mkdir(parents=True, exist_ok=True)
        os.replace(run_dir, moved)
    atomic_write_text(stamp, json.dumps(new, indent=2, sort_keys=True) + "\n")
    return moved
