"""Figure 1 from data: rank vs probability of a real next-token distribution before training, after PPO + entropy
and after TRE, with the trust-region boundary (the p = 0.99 nucleus of the pre-trained policy, at most 256) marked."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import textwrap

from figures.common import DISTS_FILE, ArchiveError, method_label, read_table, save_figure, setup_style
from tre.grid import METHODS, TRE_METHODS

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

NAME = "figure1"
DESCRIPTION = "rank vs probability of the tiny policy's next-token distribution: pre-trained, PPO+entropy, TRE"
# Colour-blind safe and apart in greyscale (lightness 0.00 / 0.47 / 0.23) and by line style.
STYLES = {"base": dict(color="#000000", ls=(0, (4, 2))), "entropy": dict(color="#d55e00", ls="-."),
          "tre": dict(color="#00513a", ls="-")}
STAGES = ("base", "entropy", "tre")


def tail_mass(dist: "pd.DataFrame", boundary: int) -> float:
    """Probability outside the first `boundary` ranks of one stage's distribution."""
    return float(max(0.0, 1.0 - dist.loc[dist["rank"] <= boundary, "prob"].sum()))


def _text(value) -> str:
    """A table cell as plain text for matplotlib: '' for an empty cell, '$' escaped (no mathtext)."""
    return "" if value is None or value != value else str(value).replace("$", r"\$")


def trust_region(method: str) -> str:
    """The trust region of a TRE method in words: 'top-2' or 'p = 0.99 nucleus'."""
    m = METHODS[method]
    return f"p = {m.top_p} nucleus" if m.top_p is not None else f"top-{m.top_k}"


def caption(dists: "pd.DataFrame") -> str:
    """The title naming what Figure 1 conditions on: the prompt (and response so far), the runs' seed, the TRE variant."""
    first = dists.iloc[0]
    trained = dists[dists["stage"] != "base"]
    seeds = sorted({int(s) for s in trained.get("seed", []) if s == s and s is not None})
    tre = dists.loc[dists["stage"] == "tre", "method"].dropna().unique() if "method" in dists else []
    what = [*(f"runs of seed {s}" for s in seeds),
            *(f"TRE variant {method_label(m)}" + (f" ({trust_region(m)})" if m in TRE_METHODS else "") for m in tre if m)]
    lines = [" · ".join(["Next-token distribution of the tiny policy", *what])]
    prompt, prefix = _text(first.get("prompt")), _text(first.get("response_prefix"))
    if prompt:
        lines += textwrap.wrap(f"Prompt: “{prompt}”" + (f", response so far: “{prefix}”" if prefix else ""), 90)
    return "\n".join(lines)


def draw(dists: "pd.DataFrame") -> "Figure":
    """Rank (log) vs probability (log) per stage, trust region shaded up to the pre-trained policy's nucleus."""
    import matplotlib.pyplot as plt

    setup_style()
    base = dists[dists["stage"] == "base"]
    if base.empty:
        raise ArchiveError(f"{DISTS_FILE}: no 'base' (pre-trained) distribution")
    boundary = int(base["nucleus_size"].iloc[0])
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    ax.axvspan(1, boundary, color="tab:green", alpha=0.08, lw=0, label=f"Trust region (|A_TR| = {boundary})")
    ax.axvline(boundary, color="k", ls=":", lw=1.2, label="Trust-region boundary")
    for stage in [s for s in STAGES if s in set(dists["stage"])] + sorted(set(dists["stage"]) - set(STAGES)):
        d = dists[dists["stage"] == stage].sort_values("rank")
        label = f"{d['label'].iloc[0]} (mass beyond boundary {tail_mass(d, boundary):.3f})"
        ax.plot(d["rank"], d["prob"], lw=1.6, label=label, **STYLES.get(stage, {}))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("Token rank (log scale)")
    ax.set_ylabel("Next-token probability")
    ax.set_title(caption(dists), fontsize="small")
    ax.legend(fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    fig.tight_layout()
    return fig


def build(results: Path, out_dir: Path) -> list[Path]:
    """Write <out_dir>/figure1.{pdf,png} from results/next_token_dists.csv (made by `python -m figures dists`)."""
    dists = read_table(results, DISTS_FILE, ("stage", "label", "rank", "prob", "nucleus_size"))
    return save_figure(draw(dists), out_dir, NAME)
