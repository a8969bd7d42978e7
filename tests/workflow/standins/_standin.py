"""Shared helpers of the stand-in CLIs: record each call, write files."""
import json
import os
import sys
from pathlib import Path


def become_real(namespace: dict) -> None:
    """Make a stand-in package the real one but for its stand-in modules: the real package's directory (under
    $TRE_STANDIN_REPO) joins its __path__ and the real __init__ runs in it, so that every other submodule (a writer, a
    parser, a constant) and every package-level name is the real one."""
    real = Path(os.environ["TRE_STANDIN_REPO"], *namespace["__name__"].split("."))
    namespace["__path__"].append(str(real))
    init = real / "__init__.py"
    exec(compile(init.read_text(), str(init), "exec"), namespace)


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
