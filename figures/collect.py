"""Gather run directories into the tidy tables of results/: metrics.csv, runs.csv, eval.csv and provenance.json.

Run directories are read through tre.backend.rundir (the format's owner); a run's scores are its summary.json's.
The tables hold only what a run computed, so a deterministic rerun rewrites them byte for byte; where, when and how
fast it ran (git commit, config hash, wall time, verl's timing/throughput/memory metrics) goes to provenance.json.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

if TYPE_CHECKING:
    import pandas as pd

from figures.common import (EVAL_FILE, METRICS_FILE, METRICS_PARQUET, PROVENANCE_FILE, RUN_KEY, RUNS_FILE, ArchiveError,
                            BadFile, atomic_write_bytes, atomic_write_text, read_json_object, read_table)
from tre.backend.rundir import CONFIG, METRICS, RunDir, find_run_dirs, run_path

METRIC_COLUMNS = [*RUN_KEY, "step", "metric", "value", "provenance"]
RUN_COLUMNS = [*RUN_KEY, "status", "val_metric", "final_val_score", "best_val_score", "best_step", "last_step",
               "profile", "device", "provenance", "run_dir"]
EVAL_COLUMNS = [*RUN_KEY, "step", "split", "n", "metric", "value", "provenance"]
# verl's metrics that measure the machine, not the policy (verl/trainer/ppo/metric_utils.py compute_timing_metrics
# and compute_throughout_metrics, verl/workers/fsdp_workers.py update_actor/update_critic): provenance, not results.
_VOLATILE_PREFIXES = ("timing_s/", "timing_per_token_ms/", "perf/mfu/", "perf/max_memory_")
_VOLATILE_NAMES = ("perf/time_per_step", "perf/throughput", "perf/cpu_memory_used_gb")
# Fields of config.json that describe where/when a run happened, not what it computed.
_NOT_HASHED = ("created", "git_commit", "packages", "device")


class SkipRun(Exception):
    """A run directory that cannot be collected; the message says why."""


@dataclass
class RunData:
    """Everything collected from one run directory."""

    run: dict[str, Any]
    metrics: list[dict[str, Any]]
    evals: list[dict[str, Any]]
    provenance: dict[str, Any] = field(default_factory=dict)  # this run's entry of provenance.json


@dataclass
class CollectReport:
    """What `collect` did: runs taken, run dirs skipped with the reason, rows written."""

    collected: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    metric_rows: int = 0
    eval_rows: int = 0


def config_hash(config: dict[str, Any]) -> str:
    """First 12 hex digits of the SHA-256 of config.json minus where/when fields (commit, packages, device, time)."""
    core = {k: v for k, v in config.items() if k not in _NOT_HASHED}
    return hashlib.sha256(json.dumps(core, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()[:12]


def is_volatile(metric: str) -> bool:
    """True for a metric that varies between identical runs (a time, a rate, a memory high-water mark)."""
    return metric.startswith(_VOLATILE_PREFIXES) or metric in _VOLATILE_NAMES


def run_id(run: dict[str, Any]) -> str:
    """<task>/<size>/<method>/seed<k>: a run's key in provenance.json."""
    return run_path(run["task"], run["size"], run["method"], run["seed"])


def tidy_metrics(rows: Iterable[dict[str, Any]]) -> dict[tuple[int, str], float]:
    """(step, metric) -> value for every numeric field; a later line for the same step/metric wins."""
    out: dict[tuple[int, str], float] = {}
    for row in rows:
        for key, value in row.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            out[(row["step"], key)] = float(value)
    return out


def _read(read: Callable[[], Any]) -> Any:
    """read() with a broken run file turned into SkipRun (its message names the file)."""
    try:
        return read()
    except BadFile as e:
        raise SkipRun(str(e)) from None


def _score(value: Any) -> float:
    return math.nan if value is None else float(value)


def read_run(run_dir: Path, rel: str, provenance: Optional[str] = None) -> RunData:
    """Collect one run directory; SkipRun (naming the file) when its config or metrics are missing or broken."""
    rd = RunDir(run_dir)
    config = _read(lambda: rd.config)
    for k in RUN_KEY:
        if k not in config:
            raise SkipRun(f"{run_dir / CONFIG}: missing field {k!r}")
    mpath = run_dir / METRICS
    if not mpath.is_file():
        raise SkipRun(f"{mpath}: missing")
    values = tidy_metrics(_read(rd.metrics))
    if not values:
        raise SkipRun(f"{mpath}: empty")
    scores = _read(rd.scores)
    summary = rd.summary or {}  # read (and checked) by scores()
    key = {k: config[k] for k in RUN_KEY}
    key["seed"] = int(key["seed"])
    meta = {"provenance": provenance or f"ours:{config.get('profile', '?')}:{config.get('device', '?')}"}
    run = {**key, "status": scores["status"], "val_metric": scores["val_metric"] or "",
           "final_val_score": _score(scores["final_val_score"]), "best_val_score": _score(scores["best_val_score"]),
           "best_step": scores["best_step"], "last_step": max(s for s, _ in values), "profile": config.get("profile", ""),
           "device": config.get("device", ""), **meta, "run_dir": rel}
    metrics = [{**key, "step": s, "metric": m, "value": v, **meta} for (s, m), v in sorted(values.items())
               if not is_volatile(m)]
    wall = summary.get("wall_time_s")
    prov = {"git_commit": config.get("git_commit", ""), "config_hash": config_hash(config),
            "wall_time_s": float(wall) if isinstance(wall, (int, float)) and math.isfinite(wall) else None,
            "metrics": volatile_rows((s, m, v) for (s, m), v in values.items() if is_volatile(m))}
    return RunData(run, metrics, read_evals(run_dir, key, meta), prov)


def volatile_rows(values: Iterable[tuple[int, str, float]]) -> list[dict[str, Any]]:
    """[{"step": s, metric: value, ...}] per step, steps ascending and metrics sorted: provenance.json's timings."""
    by_step: dict[int, dict[str, float]] = {}
    for step, metric, value in values:
        by_step.setdefault(int(step), {})[metric] = float(value)
    return [{"step": s, **dict(sorted(by_step[s].items()))} for s in sorted(by_step)]


def read_evals(run_dir: Path, key: dict[str, Any], meta: dict[str, str]) -> list[dict[str, Any]]:
    """Rows of every eval/<step>/scores.json of a run (metrics plus the lm-eval cross-check)."""
    rows = []
    for path in sorted((run_dir / "eval").glob("*/scores.json")):
        scores = _read(lambda: read_json_object(path, path.name))
        flat = dict(scores.get("metrics", {}))
        flat.update({f"lm_eval/{k}": v for k, v in (scores.get("lm_eval") or {}).get("metrics", {}).items()})
        for metric, value in sorted(flat.items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                rows.append({**key, "step": int(scores["step"]), "split": scores.get("split", ""), "n": scores.get("n"),
                             "metric": metric, "value": float(value), **meta})
    return rows


def _old_table(results: Path, name: str, columns: list[str]) -> "pd.DataFrame":
    """The archive's current table (empty when absent); ArchiveError when it is unreadable or lacks a column."""
    import pandas as pd

    if not (Path(results) / name).is_file():
        return pd.DataFrame(columns=columns)
    # Text columns stay text: an all-digit commit or hash must not come back as a number and lose its zeros.
    text = {c: str for c in ("task", "size", "method", "metric", "provenance", "status", "val_metric", "profile",
                             "device", "run_dir", "split") if c in columns}
    return read_table(results, name, columns, dtype=text)


def _merge(path: Path, old: "pd.DataFrame", new: list[dict[str, Any]], columns: list[str], replaced: set[tuple],
           sort: list[str]) -> "pd.DataFrame":
    """Rewrite one CSV table: old rows minus the runs being re-collected, plus the new rows; sorted, atomic."""
    import pandas as pd

    if len(old):
        keys = list(zip(*(old[c] for c in (*RUN_KEY, "provenance"))))
        old = old[[tuple(k) not in replaced for k in keys]]
    df = pd.concat([old, pd.DataFrame(new, columns=columns)], ignore_index=True) if len(old) else pd.DataFrame(new, columns=columns)
    df = df[columns].sort_values(sort, kind="stable").reset_index(drop=True)
    for col in ("seed", "step", "best_step", "last_step", "n"):
        if col in df.columns:  # keep integer columns integer in the CSV even when some are empty
            df[col] = pd.to_numeric(df[col]).astype("Int64")
    atomic_write_text(path, df.to_csv(index=False, lineterminator="\n"))
    return df


def collect(runs_dir: Path, results: Path, provenance: Optional[str] = None) -> CollectReport:
    """Collect every run under runs_dir into results/ (idempotent: re-collected runs replace their old rows)."""
    runs_dir, results = Path(runs_dir), Path(results)
    report = CollectReport()
    datas: list[RunData] = []
    seen: dict[tuple, str] = {}
    for run_dir in find_run_dirs(runs_dir):
        rel = run_dir.relative_to(runs_dir).as_posix()
        try:
            data = read_run(run_dir, rel, provenance)
        except SkipRun as e:
            report.skipped.append((str(run_dir), str(e)))
            continue
        k = tuple(data.run[c] for c in (*RUN_KEY, "provenance"))
        if k in seen:
            report.skipped.append((str(run_dir), f"same task/size/method/seed/provenance as {seen[k]}"))
            continue
        seen[k] = rel
        datas.append(data)
        report.collected.append(rel)
    if datas:
        write_archive(results, datas, report)
    return report


def _old_provenance(path: Path) -> dict[str, Any]:
    """The archive's current provenance.json (empty when absent); ArchiveError when it is not a JSON object."""
    if not path.is_file():
        return {}
    try:
        return read_json_object(path, "archive")
    except BadFile as e:
        raise ArchiveError(str(e)) from None


def _merge_provenance(path: Path, old: dict[str, Any], datas: list[RunData]) -> None:
    """Rewrite provenance.json: {provenance label: {run id: entry}}, re-collected runs replaced, keys sorted."""
    for d in datas:
        old.setdefault(d.run["provenance"], {})[run_id(d.run)] = d.provenance
    atomic_write_text(path, json.dumps(old, indent=1, sort_keys=True, allow_nan=False) + "\n")


def write_archive(results: Path, datas: list[RunData], report: Optional[CollectReport] = None) -> CollectReport:
    """Merge collected runs into the archive's tables and provenance.json (their old rows replaced)."""
    report = report if report is not None else CollectReport()
    replaced = {tuple(d.run[c] for c in (*RUN_KEY, "provenance")) for d in datas}
    order = ["provenance", "task", "size", "method", "seed"]
    # Every existing table is read (and checked) before any is rewritten: a broken archive is left as it was.
    old = {name: _old_table(results, name, cols) for name, cols in
           ((RUNS_FILE, RUN_COLUMNS), (METRICS_FILE, METRIC_COLUMNS), (EVAL_FILE, EVAL_COLUMNS))}
    old_provenance = _old_provenance(results / PROVENANCE_FILE)
    _merge(results / RUNS_FILE, old[RUNS_FILE], [d.run for d in datas], RUN_COLUMNS, replaced, order)
    metrics = _merge(results / METRICS_FILE, old[METRICS_FILE], [r for d in datas for r in d.metrics], METRIC_COLUMNS,
                     replaced, [*order, "step", "metric"])
    buf = io.BytesIO()
    metrics.to_parquet(buf, index=False)
    atomic_write_bytes(results / METRICS_PARQUET, buf.getvalue())
    report.metric_rows = len(metrics)
    report.eval_rows = len(_merge(results / EVAL_FILE, old[EVAL_FILE], [r for d in datas for r in d.evals], EVAL_COLUMNS,
                                  replaced, [*order, "step", "split", "metric"]))
    _merge_provenance(results / PROVENANCE_FILE, old_provenance, datas)
    return report
