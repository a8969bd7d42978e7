"""compare: Welch deltas and t-tests over seeds vs PPO/TRE, the table and the curves figure."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import pandas as pd
import pytest
from scipy import stats

from figures import compare


def test_welch_against_hand_arithmetic():
    w = compare.welch([0.5, 0.7, 0.6], [0.2, 0.3, 0.4])
    # equal variances 0.01 and n = 3 a side: se^2 = 2 * 0.01 / 3, df = 4
    assert w.delta == pytest.approx(0.3, abs=1e-12)
    assert w.df == pytest.approx(4.0, rel=1e-12)
    assert w.ci95 == pytest.approx(2.7764451051977987 * math.sqrt(0.02 / 3), rel=1e-12)
    assert w.t == pytest.approx(0.3 / math.sqrt(0.02 / 3), rel=1e-9)
    assert w.p == pytest.approx(2 * stats.t.sf(0.3 / math.sqrt(0.02 / 3), 4), rel=1e-9)
    one = compare.welch([0.5], [0.2, 0.3])
    assert one.delta == pytest.approx(0.25) and math.isnan(one.p) and math.isnan(one.ci95)
    assert compare.welch([0.5, 0.5], [0.2, 0.2]).ci95 == 0.0


def test_compare_new_method_against_the_archive(archive, tmp_path, make_run):
    new = tmp_path / "new_runs"
    for seed, score in enumerate([0.35, 0.45, 0.4]):
        make_run(new, "math", "tiny", "my_baseline", seed, {0: 0.0, 2: score})
    res = compare.run(new, archive, tmp_path / "cmp")
    assert [p.name for p in res.paths] == ["compare.csv", "compare.md", "compare_curves.pdf", "compare_curves.png"]
    final = res.table[res.table["stat"] == "final"].set_index("reference")
    assert sorted(final.index) == ["ppo", "tre_k"]  # no tre_p in the archive
    assert final.loc["ppo", "delta"] == pytest.approx(0.1, abs=1e-12)
    assert final.loc["tre_k", "delta"] == pytest.approx(-0.2, abs=1e-12)
    assert (final.loc["ppo", "n"], final.loc["ppo", "ref_n"]) == (3, 3)
    ref = stats.ttest_ind([0.35, 0.45, 0.4], [0.2, 0.3, 0.4], equal_var=False)
    assert final.loc["ppo", "p_value"] == pytest.approx(ref.pvalue, rel=1e-12)
    md = res.paths[1].read_text().splitlines()
    assert md[2].startswith("| MATH · tiny | my_baseline | final | 0.400 ± 0.124 (n=3) | PPO | 0.300 (n=3) | +0.100 ± ")
    curves = matplotlib.image.imread(res.paths[3])
    assert curves.std() > 0
    assert pd.read_csv(res.paths[0])["reference"].tolist() == ["ppo", "tre_k", "ppo", "tre_k"]


def test_compare_rejects_an_empty_runs_dir(archive, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="--runs: no collectable run directories"):
        compare.run(tmp_path / "empty", archive, tmp_path / "cmp")
