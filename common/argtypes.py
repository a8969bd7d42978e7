"""argparse pieces shared by the project's CLIs: each rejects bad input with one line naming what is allowed."""

from __future__ import annotations

import argparse
import math
import os
import re
from pathlib import Path
from typing import Callable, NoReturn


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line (`PROG: error: MESSAGE`, exit 2), without the usage dump."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


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


def positive_seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    return _number_in(text, lambda v: 0 < v < math.inf, "a number of seconds > 0")


def fraction(text: str) -> float:
    """argparse type: a float in [0, 1)."""
    return _number_in(text, lambda v: 0 <= v < 1, "a number in [0, 1)")


_DEVICE = re.compile(r"(cpu|cuda(:\d+)?)")


def device(text: str) -> str:
    """argparse type: a torch device, cpu, cuda or cuda:N."""
    if not _DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"must be cpu, cuda or cuda:N, got {text!r}")
    return text


def output_dir(text: str) -> Path:
    """argparse type: a directory to write into, existing or not, but neither a file nor below one."""
    path = Path(text)
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"must be a directory, but {str(parent)!r} is a file")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise argparse.ArgumentTypeError(f"must be a writable directory, but {str(parent)!r} is not writable")
            break
    return path
