"""compare: Welch deltas and t-tests over seeds vs PPO/TRE, the table and the curves figure."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pandas as pd
import pytest
from scipy import stats

from figures import compare
from figures.common import ArchiveError

REPO = Path(__file__).resolve().parents[2]


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
    assert md[2].startswith("| MATH · tiny | my_baseline | final | 0.400 ± 0.124 (n=3, runs) | PPO | 0.300 (n=3, archive) | "
                            "+0.100 ± ")
    curves = matplotlib.image.imread(res.paths[3])
    assert curves.std() > 0
    assert pd.read_csv(res.paths[0])["reference"].tolist() == ["ppo", "tre_k", "ppo", "tre_k"]


def test_compare_rejects_an_empty_runs_dir(archive, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="--runs: no collectable run directories"):
        compare.run(tmp_path / "empty", archive, tmp_path / "cmp")


def _new_baseline(runs: Path, make_run) -> None:
    for seed, score in enumerate([0.35, 0.45, 0.4]):
        make_run(runs, "math", "tiny", "my_baseline", seed, {0: 0.0, 2: score})


def test_compare_as_documented_when_the_runs_dir_also_holds_the_archived_runs(archive, runs_dir, tmp_path, make_run):
    """`python -m figures compare --runs runs/ --against results/` where runs/ holds the archive's own runs (as after
    `snakemake all`) plus the new baseline: every archived method overlaps (this crashed with a KeyError)."""
    _new_baseline(runs_dir, make_run)
    proc = subprocess.run([sys.executable, "-m", "figures", "compare", "--runs", "runs/", "--against", "results/"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "results" / "compare"
    assert sorted(p.name for p in out.iterdir()) == ["compare.csv", "compare.md", "compare_curves.pdf",
                                                    "compare_curves.png"]
    table = pd.read_csv(out / "compare.csv")
    mine = table[(table["method"] == "my_baseline") & (table["stat"] == "final")].set_index("reference")
    # the re-run references are the archived runs themselves: the same numbers as against the archive alone
    assert mine.loc["ppo", "delta"] == pytest.approx(0.1, abs=1e-12) and mine.loc["tre_k", "delta"] == pytest.approx(-0.2, abs=1e-12)
    assert set(table["source"]) == {"runs"} and set(table["ref_source"]) == {"runs"}
    assert sorted(set(table["method"])) == ["entropy", "my_baseline", "ppo", "tre_k"]


def test_a_new_run_replaces_the_archived_run_of_the_same_seed_and_the_other_seeds_stay(archive, tmp_path, make_run):
    new = tmp_path / "new_runs"
    _new_baseline(new, make_run)
    make_run(new, "math", "tiny", "ppo", 0, {0: 0.0, 2: 0.5})   # archived seed 0 scored 0.2
    make_run(new, "math", "tiny", "ppo", 3, {0: 0.0, 2: 0.6})   # a seed the archive does not have
    res = compare.run(new, archive, tmp_path / "cmp")
    final = res.table[(res.table["method"] == "my_baseline") & (res.table["stat"] == "final")].set_index("reference")
    ppo = [0.5, 0.3, 0.4, 0.6]  # seeds 0 (new), 1, 2 (archived), 3 (new)
    assert (final.loc["ppo", "ref_n"], final.loc["ppo", "ref_source"]) == (4, "runs+archive")
    assert final.loc["ppo", "ref_mean"] == pytest.approx(sum(ppo) / 4, abs=1e-12)
    assert final.loc["ppo", "p_value"] == pytest.approx(stats.ttest_ind([0.35, 0.45, 0.4], ppo, equal_var=False).pvalue,
                                                        rel=1e-12)
    assert (final.loc["tre_k", "ref_n"], final.loc["tre_k", "ref_source"]) == (3, "archive")
    ppo_rows = res.table[(res.table["method"] == "ppo") & (res.table["stat"] == "final")]
    assert ppo_rows[["n", "source", "reference", "ref_source"]].values.tolist() == [[4, "runs+archive", "tre_k", "archive"]]


def test_compare_writes_nothing_unless_every_output_is_made(archive, tmp_path, make_run):
    new = tmp_path / "new_runs"
    _new_baseline(new, make_run)
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "compare.csv").write_text("an older comparison\n")
    (out / "notes.txt").write_text("mine\n")
    broken = tmp_path / "broken"
    shutil.copytree(archive, broken)
    (broken / "metrics.csv").unlink()
    (broken / "metrics.parquet").unlink()  # the curves cannot be drawn: the table was already computed
    with pytest.raises(ArchiveError, match="metrics.csv: missing"):
        compare.run(new, broken, out)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".cmp", "cmp"))) == ["cmp"]  # no temp dir
    assert {p.name: p.read_text() for p in out.iterdir()} == {"compare.csv": "an older comparison\n", "notes.txt": "mine\n"}
    with pytest.raises(ArchiveError):
        compare.run(new, broken, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()
    res = compare.run(new, archive, out)
    assert sorted(p.name for p in out.iterdir()) == ["compare.csv", "compare.md", "compare_curves.pdf",
                                                    "compare_curves.png", "notes.txt"]
    assert (out / "notes.txt").read_text() == "mine\n" and res.paths[0] == out / "compare.csv"
    assert pd.read_csv(out / "compare.csv")["method"].tolist() == ["my_baseline"] * 4
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".cmp")) == []
    compare.run(new, archive, tmp_path / "fresh")  # a new out dir is the temp dir renamed: it gets a plain dir's mode
    (tmp_path / "plain").mkdir()
    assert (tmp_path / "fresh").stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777
