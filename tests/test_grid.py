"""tre.grid: the one torch-free registry of the grid's names, and the places that derive from it."""
from __future__ import annotations

import itertools
import subprocess
import sys

from tre import grid


def test_the_grid_names_tasks_sizes_and_methods_with_their_labels():
    assert list(grid.TASKS) == ["math", "countdown", "hh"]
    assert [t.label for t in grid.TASKS.values()] == ["MATH", "Countdown", "HH"]
    assert list(grid.SIZES) == ["tiny", "1.5b", "7b"] and grid.PAPER_SIZES == ("1.5b", "7b")
    assert {n: m.label for n, m in grid.METHODS.items() if m.in_paper} == {
        "ppo": "PPO", "entropy": "PPO + entropy", "kl_cov": "KL-Cov", "forking_tokens": "Forking tokens",
        "tre_k": "TRE-K", "tre_p": "TRE-P"}
    assert grid.METHODS["clip_cov"].label == "clip_cov"  # no label: its name
    assert grid.TRE_METHODS == ("tre_k", "tre_p")
    assert (grid.METHODS["tre_k"].top_k, grid.METHODS["tre_p"].top_p, grid.METHODS["tre_p"].max_candidates) == (
        grid.TRE_TOP_K, grid.TRE_TOP_P, grid.TRE_MAX_CANDIDATES) == (2, 0.99, 256)
    assert (grid.VALIDATION_TEMPERATURE, grid.VALIDATION_TOP_P) == (1.0, 0.7)


def test_importing_the_grid_loads_neither_torch_nor_numpy():
    probe = "import sys, tre.grid; print(sorted(m for m in ('torch', 'numpy', 'verl') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_the_task_registry_is_the_grids_tasks():
    from evaluation.tasks import TASKS

    assert list(TASKS) == list(grid.TASKS)
    assert all(module.NAME == name for name, module in TASKS.items())


def test_tables_keyed_by_grid_names_cover_the_grid():
    from evaluation.reward_model.train import PRESETS
    from figures.common import PAPER_STYLES
    from tre.backend.profiles import PAPER_GRID

    assert set(PAPER_GRID) == set(itertools.product(grid.TASKS, grid.PAPER_SIZES))
    assert set(PRESETS) == set(grid.SIZES)
    assert tuple(PAPER_STYLES) == grid.PAPER_METHODS


def test_figures_take_labels_and_order_from_the_grid():
    from figures.common import method_label, order_cells, order_methods, panel_title, score_label

    assert method_label("tre_p") == "TRE-P" and method_label("new_baseline") == "new_baseline"
    assert panel_title("countdown", "7b") == "Countdown · 7b" and panel_title("gsm8k", "7b") == "gsm8k · 7b"
    assert score_label("hh") == "Reward (RM score)" and score_label("gsm8k") == "score"
    assert order_methods(["zeta", "tre_p", "ppo", "alpha"]) == ["ppo", "tre_p", "alpha", "zeta"]
    assert order_cells([("hh", "7b"), ("math", "7b"), ("math", "tiny")]) == [("math", "tiny"), ("math", "7b"), ("hh", "7b")]


def test_a_task_has_demonstrations_exactly_when_its_module_makes_them():
    import importlib

    for name, task in grid.TASKS.items():
        module = importlib.import_module(f"evaluation.tasks.{task.module}")
        assert task.demonstrations == hasattr(module, "demonstration"), name
