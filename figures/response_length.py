"""Figure: mean response length (tokens) vs training step per task/size, one line per method, 95 % CI bands."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from figures.common import METRICS_FILE, ArchiveError, cells_of, panel_grid, mean_ci_by_step, method_styles, method_label, order_methods, panel_title, legend_outside, plot_band, read_metrics, save_figure, setup_style

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

NAME = "response_length"
DESCRIPTION = "mean response length (tokens) vs step per task/size, one line per method"
METRIC = "response_length/mean"


def draw(metrics: "pd.DataFrame") -> "Figure":
    """One panel per task/size of METRIC vs step."""
    setup_style()
    data = metrics[metrics["metric"] == METRIC]
    cells = cells_of(data)
    styles = method_styles(data["method"].drop_duplicates().tolist())
    fig, grid = panel_grid(cells)
    stats = mean_ci_by_step(data, ["task", "size", "method"])
    for (task, size), ax in grid.items():
        cell = stats[(stats["task"] == task) & (stats["size"] == size)]
        for method in order_methods(cell["method"]):
            plot_band(ax, cell[cell["method"] == method], method_label(method), styles[method])
        ax.set_title(panel_title(task, size))
        ax.set_xlabel("Training step")
        ax.set_ylabel("Mean response length (tokens)")
    fig.tight_layout()
    legend_outside(fig, grid.values())
    return fig


def build(results: Path, out_dir: Path) -> list[Path]:
    """Write <out_dir>/response_length.{pdf,png} from results/metrics.csv."""
    metrics = read_metrics(results, [METRIC])
    if metrics.empty:
        raise ArchiveError(f"{Path(results) / METRICS_FILE}: no {METRIC!r} rows")
    return save_figure(draw(metrics), out_dir, NAME)
