"""The grid's names in one torch-free place: tasks, sizes, methods with their labels, TRE's constants, the sampling.

Everything that names a task, size or method (the backend's profiles, the task registry, the workflow schema's
enums, the Snakefile's wildcards, the figures' labels and order) takes it from here. The methods are owned by the
method registry, `baselines/methods.py` (a new method = one module in baselines/ plus one `Method` entry there), and
re-exported here with TRE's constants, so this module is the one place to import the whole grid from.
Tasks and sizes are owned here: they are names of the experiment, which the backend (verl overrides per task and
size), the task modules (`evaluation/tasks/<task>.py`, registered under these names), the workflow and the figures
each use, and this module imports only the standard library and the method registry, so every one of them can
import it at no cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, Optional

from baselines.methods import (  # noqa: F401  (re-exported: the grid's methods)
    METHODS,
    PAPER_METHODS,
    TRE_MAX_CANDIDATES,
    TRE_TOP_K,
    TRE_TOP_P,
    Method,
    get_method,
)


@dataclass(frozen=True)
class Task:
    """One RL task of the grid; its prompt, data and scorer are the module evaluation/tasks/<module>.py."""

    name: str
    module: str  # the module under evaluation.tasks
    label: str  # display name in tables and figures
    score_label: str  # what its validation score means (the y-axis label of the curves)
    demonstrations: bool = False  # its module has demonstration(row): the miniature's warm start can teach it


@dataclass(frozen=True)
class Size:
    """One policy size of the grid."""

    name: str
    hub_model: Optional[str] = None  # the policy the paper starts from; None: a local model (the miniature's)


def _by_name(kind: str, *entries):
    table = {e.name: e for e in entries}
    if len(table) != len(entries):
        raise ValueError(f"{kind}: a name is given twice: {[e.name for e in entries]}")
    return MappingProxyType(table)


# The paper's order: the figures' rows and the tables' columns follow it.
TASKS: Mapping[str, Task] = _by_name(
    "TASKS",
    Task("math", "math_lighteval", "MATH", "Pass@1 (fraction correct)", demonstrations=True),
    Task("countdown", "countdown", "Countdown", "Pass@1 (mean reward, 1 = solved)", demonstrations=True),
    Task("hh", "hh", "HH", "Reward (RM score)", demonstrations=True),
)

# Smallest first: the figures' columns follow it. "tiny" is the CPU miniature's random Qwen2 (miniature/).
SIZES: Mapping[str, Size] = _by_name(
    "SIZES",
    Size("tiny"),
    Size("1.5b", "Qwen/Qwen2.5-1.5B-Instruct"),
    Size("7b", "Qwen/Qwen2.5-7B-Instruct"),
)
PAPER_SIZES: tuple[str, ...] = tuple(name for name, size in SIZES.items() if size.hub_model)

# The TRE methods (an entropy bonus over a trust region): the ones Figure 1 can compare with the global entropy bonus.
TRE_METHODS: tuple[str, ...] = tuple(name for name, m in METHODS.items() if m.entropy in ("tre_k", "tre_p"))

# How validation (in training) and checkpoint evaluation sample, as the authors' scripts' val_kwargs: one sample at
# T = 1.0 with top-p 0.7 and no top-k (docs/fidelity.md, "Configs").
VALIDATION_TEMPERATURE = 1.0
VALIDATION_TOP_P = 0.7
