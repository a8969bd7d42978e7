"""Figure: validation score vs training step per task/size, one line per method, 95 % CI bands over seeds."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from figures.common import cells_of, panel_grid, mean_ci_by_step, method_styles, method_label, order_methods, panel_title, legend_outside, plot_band, save_figure, score_label, setup_style, val_curves

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

NAME = "curves"
DESCRIPTION = "validation score vs step per task/size, one line per method, 95% CI bands over seeds"


def draw(val: "pd.DataFrame", highlight: Sequence[str] = ()) -> "Figure":
    """The curves figure from a (task, size, method, seed, step, value) frame; `highlight` methods drawn thicker."""
    setup_style()
    cells = cells_of(val)
    styles = method_styles(val["method"].drop_duplicates().tolist())
    fig, grid = panel_grid(cells)
    stats = mean_ci_by_step(val, ["task", "size", "method"])
    for (task, size), ax in grid.items():
        cell = stats[(stats["task"] == task) & (stats["size"] == size)]
        for method in order_methods(cell["method"]):
            # MATH / Countdown scores are fractions correct; HH's reward-model score has no range
            plot_band(ax, cell[cell["method"] == method], method_label(method), styles[method],
                      (None, None) if task == "hh" else (0, 1))
            if method in highlight:
                ax.get_lines()[-1].set_linewidth(3.0)
        ax.set_title(panel_title(task, size))
        ax.set_xlabel("Training step")
        ax.set_ylabel(f"Validation {score_label(task)}")
    fig.tight_layout()
    legend_outside(fig, grid.values())
    return fig


def build(results: Path, out_dir: Path, val: Optional["pd.DataFrame"] = None) -> list[Path]:
    """Write <out_dir>/curves.{pdf,png} from results/metrics.csv + runs.csv."""
    return save_figure(draw(val_curves(results) if val is None else val), out_dir, NAME)
