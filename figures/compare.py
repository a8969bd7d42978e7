"""Compare new runs (a new baseline) against the archive: deltas vs PPO and TRE with Welch CIs and t-tests, and curves.

Where new runs and archived runs share cells, the new run wins: a run under --runs replaces the archived run of the
same task, size, method and seed, and the archive's other runs stay. The comparison is therefore made on exactly the
runs that `python -m figures collect RUNS --results ARCHIVE` would archive; every method under --runs is compared with
PPO, TRE-K and TRE-P, and the `source` / `ref_source` columns say where each side's seeds came from.
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from figures.collect import SkipRun, read_run
from figures.common import RUN_KEY, RUNS_FILE, read_metrics, method_label, order_cells, order_methods, panel_title, read_table, t_ci95
from tre.backend.rundir import find_run_dirs
from tre.grid import TRE_METHODS

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

NAME = "compare"
REFERENCES = ("ppo", *TRE_METHODS)  # a method is compared with plain PPO and with each TRE variant
COLUMNS = ["task", "size", "method", "stat", "n", "mean", "ci95", "source", "reference", "ref_n", "ref_mean",
           "ref_source", "delta", "delta_ci95", "welch_t", "welch_df", "p_value"]
SOURCES = ("runs", "archive")  # the `source` column of the merged runs: the --runs directory or the archive


@dataclass
class Welch:
    """Difference of two means with its Welch 95 % CI half-width, t statistic, degrees of freedom and p-value."""

    delta: float
    ci95: float
    t: float
    df: float
    p: float


def welch(a: Sequence[float], b: Sequence[float]) -> Welch:
    """mean(a) - mean(b) with a Welch (unequal variances) CI and two-sided t-test; NaN statistics below 2 seeds a side."""
    from scipy.special import stdtrit

    a, b = [float(x) for x in a], [float(x) for x in b]
    if not a or not b:
        return Welch(math.nan, math.nan, math.nan, math.nan, math.nan)
    delta = sum(a) / len(a) - sum(b) / len(b)
    if len(a) < 2 or len(b) < 2:
        return Welch(delta, math.nan, math.nan, math.nan, math.nan)
    from scipy.stats import ttest_ind

    va = sum((x - sum(a) / len(a)) ** 2 for x in a) / (len(a) - 1) / len(a)
    vb = sum((x - sum(b) / len(b)) ** 2 for x in b) / (len(b) - 1) / len(b)
    if va + vb == 0:  # identical seeds on both sides: no spread to test against
        return Welch(delta, 0.0, math.nan, math.nan, math.nan)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    res = ttest_ind(a, b, equal_var=False)
    return Welch(delta, float(stdtrit(df, 0.975)) * math.sqrt(va + vb), float(res.statistic), df, float(res.pvalue))


def merge_runs(new_runs: "pd.DataFrame", archive_runs: "pd.DataFrame") -> "pd.DataFrame":
    """The archive's runs with every run of new_runs in place of the archived run of the same key, and a `source`."""
    import pandas as pd

    new_keys = set(zip(*(new_runs[k] for k in RUN_KEY)))
    kept = [tuple(k) not in new_keys for k in zip(*(archive_runs[k] for k in RUN_KEY))]
    return pd.concat([new_runs.assign(source=SOURCES[0]), archive_runs.loc[kept].assign(source=SOURCES[1])],
                     ignore_index=True)


def _source(rows: "pd.DataFrame") -> str:
    return "+".join(s for s in SOURCES if (rows["source"] == s).any())


def compare_table(runs: "pd.DataFrame", methods: Sequence[tuple[str, str, str]], stats: Sequence[str] = ("final", "best"),
                  references: Sequence[str] = REFERENCES) -> "pd.DataFrame":
    """One row per (task, size, method, stat, reference) present: each (task, size, method) of `methods` vs each
    reference, final/best scores over the seeds of the merged runs (`merge_runs`)."""
    import pandas as pd

    cols = {"final": "final_val_score", "best": "best_val_score"}
    runs = runs[runs["status"] == "completed"]
    rows = []
    for task, size, method in sorted(set(methods)):
        cell = runs[(runs["task"] == task) & (runs["size"] == size)]
        new = cell[cell["method"] == method]
        if new.empty:
            continue
        for stat in stats:
            mean, half, n = t_ci95(new[cols[stat]].tolist())
            for ref in references:
                ref_rows = cell[cell["method"] == ref]
                if ref == method or ref_rows.empty:
                    continue
                ref_vals = ref_rows[cols[stat]].tolist()
                w = welch(new[cols[stat]].tolist(), ref_vals)
                rows.append({"task": task, "size": size, "method": method, "stat": stat, "n": n, "mean": mean,
                             "ci95": half, "source": _source(new), "reference": ref, "ref_n": len(ref_vals),
                             "ref_mean": sum(ref_vals) / len(ref_vals), "ref_source": _source(ref_rows),
                             "delta": w.delta, "delta_ci95": w.ci95, "welch_t": w.t, "welch_df": w.df, "p_value": w.p})
    return pd.DataFrame(rows, columns=COLUMNS)


def _fmt(x: float, digits: int = 3) -> str:
    return "–" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def to_markdown(df: "pd.DataFrame") -> str:
    """Markdown: per task/size, the new method's score and its delta vs each reference (± Welch 95 % CI, p-value);
    each score says its seeds and where they came from (runs, archive, or runs+archive)."""
    out = ["| Task | Method | Stat | Score (mean ± CI, n) | vs | Reference (mean, n) | Δ ± 95% CI | p (Welch) |",
           "|---|---|---|---|---|---|---|---|"]
    for task, size in order_cells(zip(df["task"], df["size"])):
        cell = df[(df["task"] == task) & (df["size"] == size)]
        for method in order_methods(cell["method"]):
            for _, r in cell[cell["method"] == method].iterrows():
                delta = f"{r['delta']:+.3f}" + ("" if math.isnan(r["delta_ci95"]) else f" ± {r['delta_ci95']:.3f}")
                out.append(f"| {panel_title(task, size)} | {method_label(method)} | {r['stat']} | {_fmt(r['mean'])} ± "
                           f"{_fmt(r['ci95'])} (n={r['n']}, {r['source']}) | {method_label(r['reference'])} | "
                           f"{_fmt(r['ref_mean'])} (n={r['ref_n']}, {r['ref_source']}) | {delta} | {_fmt(r['p_value'], 4)} |")
    return "\n".join(out) + "\n"


@dataclass
class Comparison:
    """Outputs of one comparison, and the new run dirs that were skipped (with the reason)."""

    paths: list[Path]
    table: "pd.DataFrame"
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _publish(files: dict[str, bytes], figure: "Figure", out_dir: Path) -> list[Path]:
    """Write files and the figure into a temporary directory next to out_dir, then move them into out_dir.

    Nothing reaches out_dir unless every output was written; other files already in out_dir stay."""
    from figures.common import atomic_write_bytes, save_figure

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}-{uuid.uuid4().hex[:12]}.tmp"
    tmp.mkdir()  # not mkdtemp: its 0700 would become out_dir's mode
    try:
        for name, data in files.items():
            atomic_write_bytes(tmp / name, data)
        names = [*files, *(p.name for p in save_figure(figure, tmp, f"{NAME}_curves"))]
        if not out_dir.exists():
            os.rename(tmp, out_dir)
        else:
            for name in names:
                os.replace(tmp / name, out_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [out_dir / name for name in names]


def run(runs_dir: Path, against: Path, out_dir: Path) -> Comparison:
    """Compare every run under runs_dir with the archive at `against` (a new run wins over the archived run of the
    same task/size/method/seed); write compare.{csv,md} and compare_curves.{pdf,png} to out_dir, all or nothing."""
    import pandas as pd

    from figures import curves

    datas, skipped = [], []
    for d in find_run_dirs(runs_dir):
        try:
            datas.append(read_run(d, d.relative_to(runs_dir).as_posix()))
        except SkipRun as e:
            skipped.append((str(d), str(e)))
    if not datas:
        raise ValueError(f"--runs: no collectable run directories (<task>/<size>/<method>/seed<k>) under {runs_dir}")
    new_runs = pd.DataFrame([d.run for d in datas])
    archive = read_table(against, RUNS_FILE, (*RUN_KEY, "status", "final_val_score", "best_val_score", "val_metric"))
    merged = merge_runs(new_runs, archive)
    table = compare_table(merged, list(zip(new_runs["task"], new_runs["size"], new_runs["method"])))
    # Curves: the merged runs of the cells the new runs are in; the archived ones' points come from metrics.csv.
    cells = set(zip(new_runs["task"], new_runs["size"]))
    arch = merged[(merged["source"] == SOURCES[1]) & pd.Series([c in cells for c in zip(merged["task"], merged["size"])],
                                                                index=merged.index, dtype=bool)]
    val = pd.DataFrame([{**{k: d.run[k] for k in RUN_KEY}, "step": r["step"], "value": r["value"]}
                        for d in datas for r in d.metrics if r["metric"] == d.run["val_metric"]])
    if not arch.empty:
        metrics = read_metrics(against, sorted(set(arch["val_metric"].dropna())))
        arch_val = metrics.merge(arch[[*RUN_KEY, "val_metric"]], on=list(RUN_KEY))
        arch_val = arch_val[arch_val["metric"] == arch_val["val_metric"]]
        val = pd.concat([arch_val[[*RUN_KEY, "step", "value"]], val], ignore_index=True)
    figure = curves.draw(val, highlight=sorted(set(new_runs["method"])))
    files = {f"{NAME}.csv": table.to_csv(index=False, lineterminator="\n").encode(),
             f"{NAME}.md": to_markdown(table).encode()}
    return Comparison(_publish(files, figure, out_dir), table, skipped)
