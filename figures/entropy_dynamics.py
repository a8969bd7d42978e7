"""Figure: full-vocabulary entropy, top-1 probability, trust-region size and tail mass vs step, per method."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from figures.common import cells_of, mean_ci_by_step, method_styles, method_label, order_methods, panel_title, plot_band, read_metrics, save_figure, setup_style

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

NAME = "entropy_dynamics"
DESCRIPTION = "full-vocab entropy, top-1 probability, trust-region size and tail mass vs step per method"
# (panel, metric names in order of preference, y-axis label, the values' range). verl 0.4.0 called the entropy
# "actor/entropy_loss".
PANELS = (
    ("Full-vocabulary entropy", ("actor/entropy", "actor/entropy_loss"), "Entropy (nats)", (0, None)),
    ("Top-1 probability", ("actor/top1_prob_sum",), "Mean max probability", (0, 1)),
    ("Trust-region size (p = 0.99 nucleus)", ("actor/tre_p_size",), "Tokens in nucleus", (1, None)),
    ("Tail mass outside the nucleus", ("actor/tail_mass_p",), "Probability mass", (0, 1)),
    ("Tail mass outside the top-2", ("actor/tail_mass_k",), "Probability mass", (0, 1)),
)


def draw(metrics: "pd.DataFrame") -> "Figure":
    """One row per task/size, one column per PANELS entry, one line per method with 95 % CI bands."""
    import matplotlib.pyplot as plt

    setup_style()
    cells = cells_of(metrics)
    styles = method_styles(metrics["method"].drop_duplicates().tolist())
    # Shared axes and a fixed layout (no tight_layout): at the paper's 6 x 5 panels, tick-label layout is most of
    # the rendering time, and hidden inner tick labels keep one rebuild under 5 s.
    fig, axes = plt.subplots(len(cells), len(PANELS), figsize=(3.2 * len(PANELS), 0.6 + 2.3 * len(cells)),
                             squeeze=False)
    fig.subplots_adjust(left=0.075, right=0.99, top=1 - 0.45 / (0.6 + 2.3 * len(cells)), bottom=0.9 / (0.6 + 2.3 * len(cells)),
                        wspace=0.42, hspace=0.12)
    for r, (row, (task, size)) in enumerate(zip(axes, cells)):
        cell = metrics[(metrics["task"] == task) & (metrics["size"] == size)]
        for c, (ax, (title, names, ylabel, bounds)) in enumerate(zip(row, PANELS)):
            name = next((n for n in names if (cell["metric"] == n).any()), None)
            if r == 0:
                ax.set_title(title)
            if r == len(cells) - 1:
                ax.set_xlabel("Training step")
            ax.set_ylabel(f"{panel_title(task, size)}\n{ylabel}" if c == 0 else ylabel)
            if name is None:
                ax.text(0.5, 0.5, f"{names[0]} not logged", ha="center", va="center", transform=ax.transAxes, fontsize="small")
                continue
            stats = mean_ci_by_step(cell[cell["metric"] == name], ["method"])
            for method in order_methods(stats["method"]):
                plot_band(ax, stats[stats["method"] == method], method_label(method), styles[method], bounds)
    handles = {}
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=len(handles), frameon=False,
                   handlelength=3.2)
    fig._tre_tight = False  # the layout above is final: save without the tight-bbox pass
    return fig


def build(results: Path, out_dir: Path) -> list[Path]:
    """Write <out_dir>/entropy_dynamics.{pdf,png} from results/metrics.csv."""
    metrics = read_metrics(results, sorted({n for _, names, _, _ in PANELS for n in names}))
    return save_figure(draw(metrics), out_dir, NAME)
