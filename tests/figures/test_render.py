"""Figures are actually rendered: files non-empty and openable, axes labels and legend entries as expected."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pandas as pd
import pytest
from matplotlib.image import imread

from figures import curves, entropy_dynamics, figure1, response_length
from figures.common import ArchiveError, method_styles, val_curves
from figures.next_token import dist_rows, nucleus_size


def _legend(ax) -> list[str]:
    leg = ax.get_legend()
    return [t.get_text() for t in leg.get_texts()] if leg else []


def _figure_legend_outside_axes(fig) -> list[str]:
    """The figure legend's entries, after checking that its box overlaps no panel."""
    fig.canvas.draw()
    (leg,) = fig.legends
    box = leg.get_window_extent()
    assert not any(box.overlaps(ax.get_window_extent()) for ax in fig.axes if ax.get_visible())
    return [t.get_text() for t in leg.get_texts()]


def test_the_six_methods_differ_in_colour_line_style_and_marker():
    from matplotlib.colors import to_rgb

    styles = method_styles(["ppo", "entropy", "kl_cov", "forking_tokens", "tre_k", "tre_p", "new_a", "new_b"])
    grey = {m: 0.299 * r + 0.587 * g + 0.114 * b for m, (r, g, b) in ((m, to_rgb(s["color"])) for m, s in styles.items())}
    for key in ("color", "marker"):
        assert len({str(s[key]) for s in styles.values()}) == len(styles), key
    paper = [styles[m] for m in ("ppo", "entropy", "kl_cov", "forking_tokens", "tre_k", "tre_p")]
    assert len({str(s["ls"]) for s in paper}) == 6  # apart in greyscale by line style alone
    assert max(grey.values()) < 0.65  # every line stands out on white and on the light CI bands
    assert method_styles(["tre_p"]) == {"tre_p": styles["tre_p"]}  # a subset keeps the paper's styles


def _check_files(paths, name):
    assert [p.name for p in paths] == [f"{name}.pdf", f"{name}.png"]
    assert paths[0].read_bytes()[:5] == b"%PDF-"
    img = imread(paths[1])
    assert img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 0  # not a blank canvas


def test_curves(archive, tmp_path):
    val = val_curves(archive)
    assert len(val) == 18
    fig = curves.draw(val)
    ax_math, ax_cd = fig.axes
    assert ax_math.get_title() == "MATH · tiny" and ax_math.get_xlabel() == "Training step"
    assert ax_math.get_ylabel() == "Validation Pass@1 (fraction correct)"
    assert _legend(ax_math) == _legend(ax_cd) == []  # one figure legend, outside the panels
    assert _figure_legend_outside_axes(fig) == ["PPO", "PPO + entropy", "TRE-K"]
    line = ax_math.get_lines()[0]  # PPO: mean over seeds at steps 0 and 2
    assert list(line.get_xdata()) == [0, 2] and list(line.get_ydata()) == pytest.approx([0.1 / 3, 0.3])
    assert len(ax_math.collections) == 2  # CI bands for PPO and TRE-K, none for the single-seed entropy run
    _check_files(curves.build(archive, tmp_path / "out"), "curves")


def test_entropy_dynamics(archive, tmp_path):
    metrics = pd.read_csv(archive / "metrics.csv")
    fig = entropy_dynamics.draw(metrics)
    assert len(fig.axes) == 2 * 5
    assert [a.get_title() for a in fig.axes[:5]] == ["Full-vocabulary entropy", "Top-1 probability",
                                                     "Trust-region size (p = 0.99 nucleus)", "Tail mass outside the nucleus",
                                                     "Tail mass outside the top-2"]
    assert [a.get_ylabel() for a in fig.axes[:5]] == ["MATH · tiny\nEntropy (nats)", "Mean max probability",
                                                      "Tokens in nucleus", "Probability mass", "Probability mass"]
    assert fig.axes[5].get_ylabel() == "Countdown · tiny\nEntropy (nats)"
    assert [a.get_xlabel() for a in fig.axes] == [""] * 5 + ["Training step"] * 5
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["PPO", "PPO + entropy", "TRE-K"]
    # math ppo seeds are runs 0, 1, 2 of the grid: entropy = i + step, mean over seeds = 1 + step
    assert list(fig.axes[0].get_lines()[0].get_ydata()) == [2.0, 3.0]
    _check_files(entropy_dynamics.build(archive, tmp_path / "out"), "entropy_dynamics")


def test_entropy_dynamics_marks_unlogged_metrics():
    df = pd.DataFrame({"task": ["math"], "size": ["tiny"], "method": ["ppo"], "seed": [0], "step": [1],
                       "metric": ["actor/entropy_loss"], "value": [1.0]})
    fig = entropy_dynamics.draw(df)
    assert len(fig.axes[0].get_lines()) == 1  # verl 0.4.0's name is accepted for the full entropy
    assert fig.axes[1].texts[0].get_text() == "actor/top1_prob_sum not logged"


def test_response_length(archive, tmp_path):
    fig = response_length.draw(pd.read_csv(archive / "metrics.csv"))
    assert [a.get_ylabel() for a in fig.axes] == ["Mean response length (tokens)"] * 2
    assert list(fig.axes[0].get_lines()[0].get_ydata()) == [21.0, 22.0]
    assert _figure_legend_outside_axes(fig) == ["PPO", "PPO + entropy", "TRE-K"]
    _check_files(response_length.build(archive, tmp_path / "out"), "response_length")


def test_nucleus_size_matches_the_tre_p_rule():
    assert nucleus_size([0.995, 0.005]) == 1
    assert nucleus_size([0.5, 0.3, 0.15, 0.04, 0.01]) == 4  # mass before rank 5 is 0.99, not < 0.99
    assert nucleus_size([1 / 1000] * 1000) == 256  # capped at 256 candidates
    rows = dist_rows("base", "m", "ctx", [0.5, 0.3, 0.2], 3, keep=2)
    assert [(r["rank"], r["prob"], r["nucleus_size"]) for r in rows] == [(1, 0.5, 3), (2, 0.3, 3)]
    assert [r["tail_beyond"] for r in rows] == pytest.approx([0.2, 0.2], abs=1e-15)


def test_figure1_from_a_dists_table(tmp_path):
    base = [0.6, 0.3, 0.05, 0.03, 0.02]
    rows = (dist_rows("base", "b", "c", base, 5, 5) + dist_rows("entropy", "e", "c", [0.3, 0.2, 0.2, 0.15, 0.15], 5, 5)
            + dist_rows("tre", "t", "c", [0.5, 0.4, 0.05, 0.03, 0.02], 5, 5))
    results = tmp_path / "results"
    results.mkdir()
    pd.DataFrame(rows).to_csv(results / "next_token_dists.csv", index=False)
    fig = figure1.draw(pd.read_csv(results / "next_token_dists.csv"))
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("Token rank (log scale)", "Next-token probability")
    assert _legend(ax) == ["Trust region (|A_TR| = 5)", "Trust-region boundary",
                           "Pre-trained (mass beyond boundary 0.000)", "After PPO + entropy (mass beyond boundary 0.000)",
                           "After TRE (mass beyond boundary 0.000)"]
    assert figure1.tail_mass(pd.DataFrame(dist_rows("e", "e", "c", [0.3, 0.2, 0.2, 0.15, 0.15], 5, 5)), 2) == pytest.approx(0.5)
    assert ax.get_title() == "Next-token distribution of the tiny policy"  # no runs named: nothing claimed
    _check_files(figure1.build(results, tmp_path / "out"), "figure1")


def test_figure1_title_names_the_prompt_the_seed_and_the_tre_variant():
    run = dict(prompt="What is $4 - 0$?", response_prefix="$4 - 0 =")
    rows = (dist_rows("base", "models/tiny/warm", "c", [0.6, 0.4], 2, 2, **run)
            + dist_rows("entropy", "e", "c", [0.5, 0.5], 2, 2, method="entropy", seed=1, **run)
            + dist_rows("tre", "t", "c", [0.7, 0.3], 2, 2, method="tre_k", seed=1, **run))
    title = figure1.draw(pd.DataFrame(rows)).axes[0].get_title()
    assert title == ("Next-token distribution of the tiny policy · runs of seed 1 · TRE variant TRE-K (top-2)\n"
                     "Prompt: “What is \\$4 - 0\\$?”, response so far: “\\$4 - 0 =”")  # '$' shown, not mathtext


def test_missing_archive_names_the_file_and_the_command(tmp_path):
    with pytest.raises(ArchiveError, match=r"next_token_dists.csv: missing; run `python -m figures dists"):
        figure1.build(tmp_path, tmp_path)
    with pytest.raises(ArchiveError, match=r"runs.csv: missing; run `python -m figures collect"):
        curves.build(tmp_path, tmp_path)
