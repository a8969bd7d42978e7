"""Table: final and best validation score per task x size x method, mean ± 95 % CI over seeds (CSV, Markdown, LaTeX)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from figures.common import RUN_KEY, RUNS_FILE, atomic_write_text, method_label, order_cells, order_methods, panel_title, read_table, t_ci95

if TYPE_CHECKING:
    import pandas as pd

NAME = "table_final"
DESCRIPTION = "final and best validation score per task x size x method, mean ± 95% CI over seeds (CSV, Markdown, LaTeX)"
STATS = (("final", "final_val_score", "Final validation score"), ("best", "best_val_score", "Best validation score"))
DIGITS = 3


def summarise(runs: "pd.DataFrame") -> "pd.DataFrame":
    """Long table: task, size, method, stat (final|best), n seeds, mean, ci95 (t-based half-width), is_best."""
    import pandas as pd

    done = runs[runs["status"] == "completed"]
    rows = []
    for (task, size, method), sub in done.groupby(["task", "size", "method"], sort=True):
        for stat, col, _ in STATS:
            mean, half, n = t_ci95(sub[col].tolist())
            rows.append({"task": task, "size": size, "method": method, "stat": stat, "n": n, "mean": mean, "ci95": half})
    df = pd.DataFrame(rows, columns=["task", "size", "method", "stat", "n", "mean", "ci95"])
    # Higher is better for every task's score (pass@1, reward); ties are all bold.
    top = df.groupby(["task", "size", "stat"])["mean"].transform("max")
    df["is_best"] = df["mean"] == top
    return df


def _cell(row, bold: tuple[str, str], digits: int) -> str:
    if row is None or (isinstance(row["mean"], float) and math.isnan(row["mean"])):
        return "–"
    text = f"{row['mean']:.{digits}f}"
    if not math.isnan(row["ci95"]):
        text += f" ± {row['ci95']:.{digits}f}"
    return f"{bold[0]}{text}{bold[1]}" if row["is_best"] else text


def _grid(df: "pd.DataFrame", stat: str, bold: tuple[str, str], digits: int) -> tuple[list[str], list[list[str]]]:
    """Header and rows (one per method, one column per task/size) of one stat."""
    sub = df[df["stat"] == stat]
    cells = order_cells(zip(df["task"], df["size"]))
    lookup = {(r["task"], r["size"], r["method"]): r for _, r in sub.iterrows()}
    header = ["Method"] + [panel_title(t, s) for t, s in cells]
    body = [[method_label(m)] + [_cell(lookup.get((t, s, m)), bold, digits) for t, s in cells]
            for m in order_methods(df["method"])]
    return header, body


def to_markdown(df: "pd.DataFrame", digits: int = DIGITS) -> str:
    """Markdown: one table per stat, best mean per column in bold."""
    out = []
    for stat, _, title in STATS:
        header, body = _grid(df, stat, ("**", "**"), digits)
        out += [f"### {title} (mean ± 95% CI over seeds)", "", "| " + " | ".join(header) + " |",
                "|" + "|".join(["---"] + [":---:"] * (len(header) - 1)) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in body]
        out.append("")
    return "\n".join(out)


def _tex_escape(s: str) -> str:
    return s.replace("\\", r"\textbackslash{}").replace("&", r"\&").replace("%", r"\%").replace("_", r"\_").replace("#", r"\#")


def to_latex(df: "pd.DataFrame", digits: int = DIGITS) -> str:
    """LaTeX (booktabs): one tabular per stat, best mean per column in bold."""
    out = []
    for stat, _, title in STATS:
        header, body = _grid(df, stat, (r"\textbf{", "}"), digits)
        body = [[_tex_escape(r[0])] + [c.replace("±", r"$\pm$").replace("–", "--") for c in r[1:]] for r in body]
        out += [f"% {title} (mean $\\pm$ 95% CI over seeds)", r"\begin{tabular}{l" + "c" * (len(header) - 1) + "}",
                r"\toprule", " & ".join(_tex_escape(h).replace("·", "$\\cdot$") for h in header) + r" \\", r"\midrule"]
        out += [" & ".join(r) + r" \\" for r in body]
        out += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(out)


def build(results: Path, out_dir: Path) -> list[Path]:
    """Write <out_dir>/table_final.{csv,md,tex} from results/runs.csv."""
    runs = read_table(results, RUNS_FILE, (*RUN_KEY, "status", "final_val_score", "best_val_score"))
    df = summarise(runs)
    paths = [Path(out_dir) / f"{NAME}.{ext}" for ext in ("csv", "md", "tex")]
    atomic_write_text(paths[0], df.to_csv(index=False, lineterminator="\n"))
    atomic_write_text(paths[1], to_markdown(df))
    atomic_write_text(paths[2], to_latex(df))
    return paths
