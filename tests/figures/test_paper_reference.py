"""results/paper_reference.csv holds exactly the two known paper numbers; everything else is marked unknown."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

REF = Path(__file__).resolve().parents[2] / "results" / "paper_reference.csv"


def test_only_the_two_known_numbers_have_values():
    df = pd.read_csv(REF, dtype=str, keep_default_na=False)
    known = df[df["value"] != ""]
    assert known[["task", "split", "metric", "size", "method", "value", "status"]].values.tolist() == [
        ["math", "test", "Pass@1", "unknown", "unknown", "74.29", "reported"],
        ["hh", "test", "Reward", "unknown", "unknown", "3.8764", "reported"],
    ]
    assert set(known["source"]) == {"https://www.wizwand.com/paper/6982d2f0a8b01e76cc8e9933"}
    rest = df[df["value"] == ""]
    assert set(rest["status"]) == {"unknown"} and len(rest) == 3 * 2 * 6
    assert all(s.startswith("https://") for s in df["source"])
