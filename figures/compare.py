"""Compare new runs (a new baseline) against the archive: deltas vs PPO and TRE with Welch CIs and t-tests, and curves."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from figures.collect import SkipRun, find_run_dirs, read_run
from figures.common import RUN_KEY, RUNS_FILE, read_metrics, atomic_write_text, method_label, order_cells, order_methods, panel_title, read_table, t_ci95

if TYPE_CHECKING:
    import pandas as pd

NAME = "compare"
REFERENCES = ("ppo", "tre_k", "tre_p")
COLUMNS = ["task", "size", "method", "stat", "n", "mean", "ci95", "reference", "ref_n", "ref_mean", "delta",
           "delta_ci95", "welch_t", "welch_df", "p_value"]


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


def compare_table(new_runs: "pd.DataFrame", archive_runs: "pd.DataFrame", stats: Sequence[str] = ("final", "best"),
                  references: Sequence[str] = REFERENCES) -> "pd.DataFrame":
    """One row per (task, size, new method, stat, reference) present: new vs reference final/best scores over seeds."""
    import pandas as pd

    cols = {"final": "final_val_score", "best": "best_val_score"}
    new_runs = new_runs[new_runs["status"] == "completed"]
    archive_runs = archive_runs[archive_runs["status"] == "completed"]
    rows = []
    for (task, size, method), new in new_runs.groupby(["task", "size", "method"], sort=True):
        new_cell = new_runs[(new_runs["task"] == task) & (new_runs["size"] == size)]
        old_cell = archive_runs[(archive_runs["task"] == task) & (archive_runs["size"] == size)]
        for stat in stats:
            mean, half, n = t_ci95(new[cols[stat]].tolist())
            for ref in references:
                if ref == method:
                    continue
                # A reference re-run in the new directory takes precedence over its archived seeds.
                src = new_cell if (new_cell["method"] == ref).any() else old_cell
                ref_vals = src.loc[src["method"] == ref, cols[stat]].tolist()
                if not ref_vals:
                    continue
                w = welch(new[cols[stat]].tolist(), ref_vals)
                rows.append({"task": task, "size": size, "method": method, "stat": stat, "n": n, "mean": mean,
                             "ci95": half, "reference": ref, "ref_n": len(ref_vals), "ref_mean": sum(ref_vals) / len(ref_vals),
                             "delta": w.delta, "delta_ci95": w.ci95, "welch_t": w.t, "welch_df": w.df, "p_value": w.p})
    return pd.DataFrame(rows, columns=COLUMNS)


def _fmt(x: float, digits: int = 3) -> str:
    return "–" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def to_markdown(df: "pd.DataFrame") -> str:
    """Markdown: per task/size, the new method's score and its delta vs each reference (± Welch 95 % CI, p-value)."""
    out = ["| Task | Method | Stat | Score (mean ± CI, n) | vs | Reference (mean, n) | Δ ± 95% CI | p (Welch) |",
           "|---|---|---|---|---|---|---|---|"]
    for task, size in order_cells(zip(df["task"], df["size"])):
        cell = df[(df["task"] == task) & (df["size"] == size)]
        for method in order_methods(cell["method"]):
            for _, r in cell[cell["method"] == method].iterrows():
                delta = f"{r['delta']:+.3f}" + ("" if math.isnan(r["delta_ci95"]) else f" ± {r['delta_ci95']:.3f}")
                out.append(f"| {panel_title(task, size)} | {method_label(method)} | {r['stat']} | {_fmt(r['mean'])} ± "
                           f"{_fmt(r['ci95'])} (n={r['n']}) | {method_label(r['reference'])} | {_fmt(r['ref_mean'])} "
                           f"(n={r['ref_n']}) | {delta} | {_fmt(r['p_value'], 4)} |")
    return "\n".join(out) + "\n"


@dataclass
class Comparison:
    """Outputs of one comparison, and the new run dirs that were skipped (with the reason)."""

    paths: list[Path]
    table: "pd.DataFrame"
    skipped: list[tuple[str, str]] = field(default_factory=list)


def run(runs_dir: Path, against: Path, out_dir: Path) -> Comparison:
    """Compare every run under runs_dir with the archive at `against`; write compare.{csv,md} and compare_curves.{pdf,png}."""
    import pandas as pd

    from figures import curves
    from figures.common import save_figure

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
    # Archived runs of a method that the new directory re-ran (same task/size) are replaced by the new ones.
    new_keys = set(zip(new_runs["task"], new_runs["size"], new_runs["method"]))
    archive = archive[[k not in new_keys for k in zip(archive["task"], archive["size"], archive["method"])]]
    table = compare_table(new_runs, archive)
    paths = [Path(out_dir) / f"{NAME}.csv", Path(out_dir) / f"{NAME}.md"]
    atomic_write_text(paths[0], table.to_csv(index=False, lineterminator="\n"))
    atomic_write_text(paths[1], to_markdown(table))
    # Curves: the new runs next to the archived methods of the same task/size.
    metrics = read_metrics(against, sorted(set(archive["val_metric"].dropna())))
    cells = set(zip(new_runs["task"], new_runs["size"]))
    arch = archive[[c in cells for c in zip(archive["task"], archive["size"])]]
    arch_val = metrics.merge(arch[[*RUN_KEY, "val_metric"]], on=list(RUN_KEY))
    arch_val = arch_val[arch_val["metric"] == arch_val["val_metric"]]
    new_val = pd.DataFrame([{**{k: d.run[k] for k in RUN_KEY}, "step": r["step"], "value": r["value"]}
                            for d in datas for r in d.metrics if r["metric"] == d.run["val_metric"]])
    val = pd.concat([arch_val[[*RUN_KEY, "step", "value"]], new_val], ignore_index=True)
    paths += save_figure(curves.draw(val, highlight=sorted(set(new_runs["method"]))), out_dir, f"{NAME}_curves")
    return Comparison(paths, table, skipped)
