"""table_final: golden values of mean ± t-based 95 % CI over seeds, bold best per column, three formats."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from figures import table_final
from figures.common import t_ci95

T2 = 4.302652729749462  # t quantile 0.975 with 2 degrees of freedom
T1 = 12.706204736174698  # ... with 1 degree of freedom


def test_t_ci95_arithmetic():
    mean, half, n = t_ci95([0.2, 0.3, 0.4])
    assert (n, mean) == (3, pytest.approx(0.3, abs=1e-15))
    assert half == pytest.approx(T2 * 0.1 / math.sqrt(3), rel=1e-12)
    mean, half, n = t_ci95([0.15, 0.25])
    assert half == pytest.approx(T1 * math.sqrt(0.005) / math.sqrt(2), rel=1e-12)
    assert t_ci95([0.7])[:1] == (0.7,) and math.isnan(t_ci95([0.7])[1])
    assert t_ci95([])[2] == 0


def test_summary_golden_values(archive):
    df = table_final.summarise(pd.read_csv(archive / "runs.csv"))
    final = df[df["stat"] == "final"].set_index(["task", "method"])
    assert final.loc[("math", "ppo"), "mean"] == pytest.approx(0.3, abs=1e-12)
    assert final.loc[("math", "ppo"), "ci95"] == pytest.approx(0.24841377118, rel=1e-9)
    assert final.loc[("math", "tre_k"), "mean"] == pytest.approx(0.6, abs=1e-12)
    assert final.loc[("math", "entropy"), "n"] == 1 and math.isnan(final.loc[("math", "entropy"), "ci95"])
    assert final.loc[("countdown", "ppo"), "ci95"] == pytest.approx(0.635310236808735, rel=1e-9)
    assert final["is_best"].to_dict() == {("countdown", "ppo"): True, ("math", "entropy"): False,
                                          ("math", "ppo"): False, ("math", "tre_k"): True}
    best = df[df["stat"] == "best"].set_index(["task", "method"])
    # tre_k seed 1 peaked at 0.8 on step 0: best = (0.5 + 0.8 + 0.6) / 3
    assert best.loc[("math", "tre_k"), "mean"] == pytest.approx(1.9 / 3, abs=1e-12)


def test_incomplete_runs_are_left_out_of_the_table():
    runs = pd.DataFrame({"task": ["math"] * 2, "size": ["tiny"] * 2, "method": ["ppo"] * 2, "seed": [0, 1],
                         "status": ["completed", "incomplete"], "final_val_score": [0.5, 0.0], "best_val_score": [0.5, 0.0]})
    df = table_final.summarise(runs)
    assert df[["stat", "n", "mean"]].values.tolist() == [["final", 1, 0.5], ["best", 1, 0.5]]


def test_markdown_and_latex_golden(archive, tmp_path):
    paths = table_final.build(archive, tmp_path / "tables")
    assert [p.name for p in paths] == ["table_final.csv", "table_final.md", "table_final.tex"]
    md = paths[1].read_text().splitlines()
    assert md[:7] == [
        "### Final validation score (mean ± 95% CI over seeds)",
        "",
        "| Method | MATH · tiny | Countdown · tiny |",
        "|---|:---:|:---:|",
        "| PPO | 0.300 ± 0.248 | **0.200 ± 0.635** |",
        "| PPO + entropy | 0.100 | – |",
        "| TRE-K | **0.600 ± 0.248** | – |",
    ]
    tex = paths[2].read_text()
    assert r"TRE-K & \textbf{0.600 $\pm$ 0.248} & -- \\" in tex
    assert r"Method & MATH $\cdot$ tiny & Countdown $\cdot$ tiny \\" in tex
    csv = pd.read_csv(paths[0])
    assert list(csv.columns) == ["task", "size", "method", "stat", "n", "mean", "ci95", "is_best"] and len(csv) == 8
