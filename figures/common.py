"""Shared I/O, statistics and styling for the figures: read the results/ archive, CIs over seeds, save PDF + PNG."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional, Sequence

from common.files import BadFile, atomic_write_bytes, atomic_write_text, read_json_object, read_parquet  # noqa: F401  (the figures' readers and writers)
from tre.grid import METHODS, PAPER_METHODS, SIZES, TASKS

if TYPE_CHECKING:  # pandas/matplotlib are imported lazily so `python -m figures list` stays instant
    import pandas as pd
    from matplotlib.figure import Figure

RESULTS_DIR = Path("results")
METRICS_FILE = "metrics.csv"
METRICS_PARQUET = "metrics.parquet"  # same rows as metrics.csv, for the fast figure path
RUNS_FILE = "runs.csv"
EVAL_FILE = "eval.csv"
DISTS_FILE = "next_token_dists.csv"
# Where/when/how fast each run was made (commit, config hash, wall time, timings): the one archive file that a
# deterministic rerun changes.
PROVENANCE_FILE = "provenance.json"
RUN_KEY = ("task", "size", "method", "seed")


class ArchiveError(Exception):
    """The results archive lacks a file or a column a figure needs."""


def method_label(name: str) -> str:
    """Display name of a method (its registry label; the name itself for one the registry lacks)."""
    return METHODS[name].label if name in METHODS else name


def score_label(task: str) -> str:
    """What a task's validation score means (the y-axis label of the curves)."""
    return TASKS[task].score_label if task in TASKS else "score"


def panel_title(task: str, size: str) -> str:
    """Title of one task/size panel."""
    return f"{TASKS[task].label if task in TASKS else task} · {size}"


def order_methods(names: Iterable[str]) -> list[str]:
    """The paper's methods in its order, then any others (a new baseline) alphabetically."""
    names = set(names)
    known = [m for m in PAPER_METHODS if m in names]
    return known + sorted(names - set(PAPER_METHODS))


def cells_of(df: "pd.DataFrame") -> list[tuple[str, str]]:
    """The (task, size) pairs present in a frame, in the paper's order."""
    pairs = df[["task", "size"]].drop_duplicates()
    return order_cells(zip(pairs["task"].tolist(), pairs["size"].tolist()))


def panel_grid(cells: Sequence[tuple[str, str]], width: float = 4.2, height: float = 3.4):
    """A figure with one row per task and one column per size; returns (fig, {(task, size): ax}), unused axes hidden."""
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(t for t, _ in cells))
    sizes = [s for s in SIZES if any(c[1] == s for c in cells)] + sorted({s for _, s in cells} - set(SIZES))
    fig, axes = plt.subplots(len(tasks), len(sizes), figsize=(width * len(sizes), height * len(tasks)), squeeze=False)
    grid = {}
    for i, t in enumerate(tasks):
        for j, s in enumerate(sizes):
            if (t, s) in cells:
                grid[(t, s)] = axes[i][j]
            else:
                axes[i][j].set_visible(False)
    return fig, grid


def order_cells(cells: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """(task, size) pairs in the grid's task order, then size order (tre.grid), unknown names last."""
    tasks, sizes = list(TASKS), list(SIZES)

    def key(c: tuple[str, str]) -> tuple:
        t, s = c
        return (tasks.index(t) if t in tasks else len(tasks), t, sizes.index(s) if s in sizes else len(sizes), s)
    return sorted(set(cells), key=key)


def t_ci95(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean and the half-width of the t-based 95 % CI over seeds (NaN half-width for one seed)."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(vals)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(vals) / n
    if n == 1:
        return mean, math.nan, 1
    from scipy.special import stdtrit  # scipy.special imports in ~0.3 s; scipy.stats would take ~1 s

    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    return mean, float(stdtrit(n - 1, 0.975)) * sd / math.sqrt(n), n


def read_table(results: Path, name: str, required: Sequence[str] = (), dtype: Optional[dict] = None) -> "pd.DataFrame":
    """One CSV table of the archive; ArchiveError naming the file (and `collect`) when it is missing or broken."""
    import pandas as pd

    path = Path(results) / name
    if not path.is_file():
        make = "dists --runs RUNS_DIR" if name == DISTS_FILE else "collect RUNS_DIR"
        raise ArchiveError(f"{path}: missing; run `python -m figures {make} --results {results}` first")
    try:
        df = pd.read_csv(path, keep_default_na=True, dtype=dtype)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ArchiveError(f"{path}: not a readable CSV table ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ArchiveError(f"{path}: missing columns {', '.join(missing)}")
    return df


def read_metrics(results: Path, metrics: Optional[Sequence[str]] = None) -> "pd.DataFrame":
    """The tidy metrics table (only the given metric names): metrics.parquet when collected, else metrics.csv."""
    parquet = Path(results) / METRICS_PARQUET
    if parquet.is_file():
        # Only the needed metrics and columns: at the paper's grid size this is ~50x less to read than the CSV.
        filters = [("metric", "in", list(metrics))] if metrics else None
        try:
            table = read_parquet(parquet, "archive", columns=[*RUN_KEY, "step", "metric", "value"], filters=filters)
        except BadFile as e:
            raise ArchiveError(f"{e}; rerun `python -m figures collect RUNS_DIR --results {results}`") from None
        df = table.to_pandas()
    else:
        df = read_table(results, METRICS_FILE, (*RUN_KEY, "step", "metric", "value"))
        if metrics:
            df = df[df["metric"].isin(list(metrics))]
    return df.reset_index(drop=True)


def val_curves(results: Path) -> "pd.DataFrame":
    """Validation score per run and step: columns task, size, method, seed, step, value."""
    runs = read_table(results, RUNS_FILE, (*RUN_KEY, "val_metric"))
    metrics = read_metrics(results, sorted(set(runs["val_metric"].dropna())))
    val = metrics.merge(runs[[*RUN_KEY, "val_metric"]], on=list(RUN_KEY))
    val = val[val["metric"] == val["val_metric"]]
    return val[[*RUN_KEY, "step", "value"]].sort_values([*RUN_KEY, "step"]).reset_index(drop=True)


def mean_ci_by_step(df: "pd.DataFrame", group: Sequence[str]) -> "pd.DataFrame":
    """Per `group` + step: mean, CI half-width and seed count of `value` (t-based, over seeds), vectorised."""
    import numpy as np
    from scipy.special import stdtrit

    agg = df.groupby([*group, "step"], sort=True)["value"].agg(["mean", "std", "count"]).reset_index()
    n = agg["count"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        half = np.where(n >= 2, stdtrit(np.maximum(n - 1, 1), 0.975) * agg["std"].to_numpy() / np.sqrt(n), np.nan)
    return agg.assign(ci95=half, n=n)[[*group, "step", "mean", "ci95", "n"]]


# Okabe & Ito's colour-blind-safe palette (Color Universal Design); yellow is left out, too light on white.
OKABE_ITO = ("#000000", "#e69f00", "#56b4e9", "#009e73", "#0072b2", "#d55e00", "#cc79a7")
# The paper's six methods: PPO black, global entropy red and TRE in greens as in its Figure 1. Colour, lightness
# (greyscale 0.00 / 0.47 / 0.59 / 0.34 / 0.41 / 0.23), line style and marker each tell them apart on their own,
# so the curves stay readable in greyscale and for colour-blind readers.
PAPER_STYLES = {
    "ppo": {"color": "#000000", "ls": (0, (4, 2)), "marker": "o"},
    "entropy": {"color": "#d55e00", "ls": "-.", "marker": "s"},
    "kl_cov": {"color": "#cc79a7", "ls": (0, (1, 1.2)), "marker": "^"},
    "forking_tokens": {"color": "#0072b2", "ls": (0, (5, 1.5, 1, 1.5, 1, 1.5)), "marker": "D"},
    "tre_k": {"color": "#009e73", "ls": (0, (8, 2)), "marker": "v"},
    "tre_p": {"color": "#00513a", "ls": "-", "marker": "P"},
}
# Any other method (a new baseline): the palette's remaining hues, solid, with markers of their own.
EXTRA_STYLES = tuple({"color": c, "ls": "-", "marker": m} for c, m in zip(("#e69f00", "#56b4e9", "#7f7f7f", "#8c564b"), "X*hp"))


def setup_style() -> None:
    """Seaborn's whitegrid/paper styling shared by every figure (Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # (the seaborn styles ship with matplotlib, so seaborn itself, 2-3 s to import, stays out of the figure path)
    plt.style.use(["seaborn-v0_8-whitegrid", "seaborn-v0_8-paper"])
    plt.rcParams.update({"axes.prop_cycle": matplotlib.cycler(color=OKABE_ITO), "font.size": 10,
                         "axes.titlesize": 10, "axes.labelsize": 10, "legend.fontsize": 8,
                         "axes.formatter.useoffset": False})  # offsets ("1e-5+9.5e-1") collide with titles


def method_styles(methods: Sequence[str]) -> dict[str, dict]:
    """A stable line style (color, ls, marker) per method: the paper's six keep theirs whatever subset is drawn."""
    extra = iter(EXTRA_STYLES * (1 + len(methods) // len(EXTRA_STYLES)))
    return {m: dict(PAPER_STYLES[m] if m in PAPER_STYLES else next(extra)) for m in order_methods(methods)}


def legend_outside(fig: "Figure", axes: Iterable) -> None:
    """One figure legend (every method once) to the right of the panels, where it covers no data."""
    handles: dict = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="center left", bbox_to_anchor=(1.0, 0.5),
                   frameon=False, handlelength=3.2)


def plot_band(ax, stats: "pd.DataFrame", label: str, style: dict, bounds: tuple = (None, None)) -> None:
    """One mean line (`style`: color, ls, marker) with its 95 % CI band (where >= 2 seeds); limits kept by hand.

    bounds: the range the quantity cannot leave (a probability: (0, 1)); the band is clipped to it, since a t
    interval over 3 seeds easily reaches past 0 for a mass that is never negative.
    """
    import math

    from matplotlib.ticker import MaxNLocator

    # Autoscaling re-runs on every artist and dominates drawing at the paper's grid size (30 panels x 6
    # methods), so the data limits are tracked here and set once per call instead.
    ax.set_autoscale_on(False)
    # About six markers a line: enough to tell the methods apart where colours fail, few enough to read the curve.
    ax.plot(stats["step"], stats["mean"], label=label, lw=1.8, ms=4.5, markevery=max(1, round(len(stats) / 6)),
            scalex=False, scaley=False, **style)
    band = stats[stats["n"] >= 2]
    lower, upper = (band["mean"] - band["ci95"]).clip(*bounds), (band["mean"] + band["ci95"]).clip(*bounds)
    if len(band):
        ax.fill_between(band["step"], lower, upper, color=style["color"], alpha=0.1, lw=0)
    lo = lower.min() if len(band) else math.inf
    hi = upper.max() if len(band) else -math.inf
    x0, x1, y0, y1 = getattr(ax, "_tre_limits", (math.inf, -math.inf, math.inf, -math.inf))
    x0, x1 = min(x0, stats["step"].min()), max(x1, stats["step"].max())
    y0, y1 = min(y0, lo, stats["mean"].min()), max(y1, hi, stats["mean"].max())
    ax._tre_limits = (x0, x1, y0, y1)
    if not all(map(math.isfinite, (x0, x1, y0, y1))):
        return
    xpad = 0.5 if x1 == x0 else 0.02 * (x1 - x0)
    ypad = max(abs(y1), 1.0) * 0.05 if y1 == y0 else 0.05 * (y1 - y0)
    ax.set_xlim(x0 - xpad, x1 + xpad)
    ax.set_ylim(y0 - ypad, y1 + ypad)
    # Five ticks a side: tick labels and grid lines are most of a multi-panel figure's drawing time.
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=5))


def save_figure(fig: "Figure", out_dir: Path, name: str) -> list[Path]:
    """Save `fig` as <out_dir>/<name>.pdf and .png (atomically) and close it; returns the two paths."""
    import io

    import matplotlib.pyplot as plt

    paths = []
    w, h = fig.get_size_inches()
    dpi = 150 if w * h <= 60 else 100  # big multi-panel figures: PNG encoding time grows with the pixel count
    # Figures with a fixed layout (no layout engine) skip the extra draw that a tight bounding box costs.
    tight = "tight" if fig.get_layout_engine() is not None or getattr(fig, "_tre_tight", True) else None
    for ext, kw in (("pdf", {"metadata": {"CreationDate": None}}), ("png", {"dpi": dpi, "pil_kwargs": {"compress_level": 3}})):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, bbox_inches=tight, **kw)
        path = Path(out_dir) / f"{name}.{ext}"
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    plt.close(fig)
    return paths
