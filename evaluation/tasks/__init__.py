"""The three RL tasks (MATH, Countdown, HH): registry, and verl's reward entry point routed by data_source."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

from evaluation.tasks import countdown, hh, math_lighteval
from tre.grid import TASKS as GRID_TASKS

# name -> module, for the grid's tasks (tre.grid names each task's module). Spelled out, not f"{__name__}...": verl
# loads this file as its custom reward function under the module name "custom_module".
TASKS: dict[str, ModuleType] = {name: importlib.import_module(f"evaluation.tasks.{task.module}") for name, task in GRID_TASKS.items()}
FIXTURES_DIR = Path(__file__).parent / "fixtures"

# The data sources the authors route to the MATH scorer (their reward_score/__init__.py::default_compute_score).
MATH_DATA_SOURCES = (
    "DigitalLearningGmbH/MATH-lighteval",
    "lighteval/MATH",
    "math-ai/aime25",
    "math-ai/math500",
)


def get_task(name: str) -> ModuleType:
    """The task module registered under `name`."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"task: must be one of {', '.join(TASKS)}, got {name!r}") from None


def task_for_source(data_source: str) -> ModuleType:
    """The task module whose rows carry this data_source (the authors' routing order)."""
    if "countdown" in data_source:
        return countdown
    if "hh" in data_source.lower():
        return hh
    if data_source in MATH_DATA_SOURCES:
        return math_lighteval
    allowed = ", ".join(["countdown", "hh", *MATH_DATA_SOURCES])
    raise ValueError(f"data_source: must be one of {allowed}, got {data_source!r}")


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Any = None,
    *,
    math_scorer: str | None = None,
) -> float:
    """verl `custom_reward_function`: the task reward, routed by data_source in the authors' order."""
    del extra_info
    task = task_for_source(data_source)
    if task is math_lighteval:
        return math_lighteval.score(solution_str, ground_truth, scorer=math_scorer)
    return task.score(solution_str, ground_truth)
