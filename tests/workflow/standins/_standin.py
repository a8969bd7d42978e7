"""Shared helpers of the stand-in CLIs: become the real package, load a real module the stand-in shadows, record each
call."""
import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType


def repo() -> Path:
    """The real repository ($TRE_STANDIN_REPO)."""
    return Path(os.environ["TRE_STANDIN_REPO"])


def become_real(namespace: dict) -> None:
    """Make a stand-in package the real one but for its stand-in modules: the real package's directory (under
    $TRE_STANDIN_REPO) joins its __path__ and the real __init__ runs in it, so that every other submodule (a writer, a
    parser, a constant) and every package-level name is the real one."""
    real = repo().joinpath(*namespace["__name__"].split("."))
    namespace["__path__"].append(str(real))
    init = real / "__init__.py"
    exec(compile(init.read_text(), str(init), "exec"), namespace)


def real_module(name: str) -> ModuleType:
    """The real module `name` (e.g. "tre.backend.__main__"), loaded from its file under another module name: the
    stand-in holds the real name. Its parser, its writers and its main are then the real ones."""
    path = repo().joinpath(*name.split(".")).with_suffix(".py")
    spec = importlib.util.spec_from_file_location(f"_real_{name.replace('.', '_')}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def record(name: str) -> None:
    """Append this call (stand-in name, argv, reward URL) to calls.jsonl in the working directory."""
    with open("calls.jsonl", "a") as f:
        f.write(json.dumps({"name": name, "argv": sys.argv[1:], "pid": os.getpid(),
                            "reward_url": os.environ.get("REWARD_SERVER_URL")}) + "\n")
