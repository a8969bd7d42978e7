"""argparse types shared by the evaluation CLIs: each rejects bad input with one line naming what is allowed."""

from __future__ import annotations

import argparse
import math
from typing import Callable


def int_at_least(lo: int) -> Callable[[str], int]:
    """argparse type: an integer >= lo."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < lo:
            raise argparse.ArgumentTypeError(f"must be an integer >= {lo}, got {text!r}")
        return value

    return parse


def port(text: str) -> int:
    """argparse type: a TCP port 1..65535."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number between 1 and 65535, got {text!r}")
    return value


def _number_in(text: str, ok: Callable[[float], bool], allowed: str) -> float:
    """float(text) when ok() accepts it, else argparse's error naming the allowed range (NaN is never ok)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not ok(value):
        raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}")
    return value


def open_fraction(text: str) -> float:
    """argparse type: a float strictly between 0 and 1."""
    return _number_in(text, lambda v: 0 < v < 1, "a number between 0 and 1 (exclusive)")


def fraction(text: str) -> float:
    """argparse type: a float in [0, 1)."""
    return _number_in(text, lambda v: 0 <= v < 1, "a number in [0, 1)")
