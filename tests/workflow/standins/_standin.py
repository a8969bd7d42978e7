"""Shared helpers of the stand-in CLIs: record each call, write files."""
import json
import os
import sys
from pathlib import Path


def record(name: str) -> None:
    """Append this call (stand-in name, argv, reward URL) to calls.jsonl in the working directory."""
    with open("calls.jsonl", "a") as f:
        f.write(json.dumps({"name": name, "argv": sys.argv[1:], "pid": os.getpid(),
                            "reward_url": os.environ.get("REWARD_SERVER_URL")}) + "\n")


def write(path: str, text: str) -> None:
    """Write text to path, making parents."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def arg(name: str, default=None):
    """The value after --name in argv."""
    argv = sys.argv
    return argv[argv.index(name) + 1] if name in argv else default
