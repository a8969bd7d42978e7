"""`python -m figures` CLI: list, build, collect, compare and its error lines."""

from __future__ import annotations

import subprocess
import sys

import pytest

from figures import ARTEFACTS
from figures.__main__ import main


def test_list_names_every_artefact(capsys):
    assert main(["list"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == list(ARTEFACTS) == ["table_final", "curves", "entropy_dynamics", "response_length", "figure1"]


def test_unknown_name_is_one_line_listing_the_valid_names(capsys):
    assert main(["nope"]) == 2
    err = capsys.readouterr().err
    assert err == ("figures: unknown name 'nope'; valid names: list, collect, compare, dists, all, table_final, curves, "
                   "entropy_dynamics, response_length, figure1\n")


def test_collect_then_build_via_subprocess(runs_dir, tmp_path):
    results = tmp_path / "res"
    out = subprocess.run([sys.executable, "-m", "figures", "collect", str(runs_dir), "--results", str(results)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"collected 9 runs into {results} (144 metric rows")
    out = subprocess.run([sys.executable, "-m", "figures", "table_final", "--results", str(results)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and (results / "tables" / "table_final.md").is_file()


def test_collect_reports_skips_and_bad_dirs(tmp_path, make_run, capsys):
    d = make_run(tmp_path / "runs", "math", "tiny", "ppo", 0, {0: 0.0})
    (d / "metrics.jsonl").write_text("")
    assert main(["collect", str(tmp_path / "runs"), "--results", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"skipped {d}: {d / 'metrics.jsonl'}: empty"
    with pytest.raises(SystemExit) as e:
        main(["collect", str(tmp_path / "missing")])
    assert e.value.code == 2
    assert f"RUNS_DIR: not a directory: {tmp_path / 'missing'}" in capsys.readouterr().err


def test_build_without_archive_is_one_line(tmp_path, capsys):
    assert main(["curves", "--results", str(tmp_path)]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_compare_cli(archive, tmp_path, make_run, capsys):
    make_run(tmp_path / "new", "countdown", "tiny", "clip_cov", 0, {0: 0.0, 2: 0.3})
    assert main(["compare", "--runs", str(tmp_path / "new"), "--against", str(archive), "--out", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "| Countdown · tiny | clip_cov | final | 0.300 ± – (n=1) | PPO | 0.200 (n=2) | +0.100 | – |" in out
