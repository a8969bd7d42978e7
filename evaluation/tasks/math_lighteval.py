"""MATH (DigitalLearningGmbH/MATH-lighteval): prompts, data preparation and the two answer scorers."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import select
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

from evaluation.tasks import common

NAME = "math"
DATA_SOURCE = "DigitalLearningGmbH/MATH-lighteval"
HUB_ID = DATA_SOURCE
VAL_METRIC = f"val-core/{DATA_SOURCE}/reward/mean@1"
MAX_RESPONSE_LENGTH = 8192
ABILITY = "math"
FIXTURE = Path(__file__).parent / "fixtures" / "math.jsonl"
INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."

SCORERS = ("hendrycks", "math_verify")
SCORER_ENV = "TRE_MATH_SCORER"
DEFAULT_SCORER = "hendrycks"
# Bounds on math-verify's work per response: the tail it sees, and the wall time before its process is killed.
MATH_VERIFY_MAX_CHARS = 20_000
MATH_VERIFY_TIMEOUT_S = 10.0
MATH_VERIFY_START_TIMEOUT_S = 120.0


# ---------------------------------------------------------------- the authors' scorer (verl 0.4.1's, unchanged)


def _load_verl_math() -> ModuleType:
    """verl's own `verl/utils/reward_score/math.py`, the authors' MATH scorer, loaded as a standalone module."""
    # `import verl.utils.reward_score.math` runs verl/__init__.py, which imports torch, ray and transformers (about
    # 10 s of CPU) and configures logging; the file itself imports nothing, so it is loaded alone, from the pinned
    # verl, without running the package. The authors' fork ships this file byte for byte.
    spec = importlib.util.find_spec("verl")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("verl is not installed: the MATH scorer is verl 0.4.1's verl/utils/reward_score/math.py")
    path = Path(list(spec.submodule_search_locations)[0]) / "utils" / "reward_score" / "math.py"
    module_spec = importlib.util.spec_from_file_location("_tre_verl_reward_score_math", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


VERL_MATH = _load_verl_math()
# The authors' answer extraction and normalisation, re-exported for data preparation and the lm-eval task.
last_boxed_only_string = VERL_MATH.last_boxed_only_string
remove_boxed = VERL_MATH.remove_boxed
strip_string = VERL_MATH.strip_string
is_equiv = VERL_MATH.is_equiv


def extract_boxed_answer(text: str) -> str | None:
    """The content of the last `\\boxed{...}` / `\\boxed ...` in `text`; None without one; ValueError for `\\fbox`."""
    boxed = last_boxed_only_string(text)
    if boxed is None:
        return None
    try:
        return remove_boxed(boxed)
    except AssertionError:  # verl's remove_boxed asserts the `\\boxed` wrapper (a last `\\fbox{}` fails it)
        raise ValueError(f"not a \\boxed expression: {boxed[:50]!r}") from None


def score_hendrycks(solution_str: str, ground_truth: str) -> float:
    """Authors' MATH reward (verl's `math.compute_score`): last boxed answer, `is_equiv` -> 1.0 else 0.0."""
    # verl's compute_score body, minus its `print(e)` of the caught error: the evaluation CLI's stdout carries JSON.
    # tests/tasks/test_scorer_differential.py proves it equal to compute_score itself on generated answers.
    try:
        answer = extract_boxed_answer(solution_str)
        return 1.0 if answer is not None and is_equiv(answer, ground_truth) else 0.0
    except Exception:  # compute_score turns any failure into 0.0
        return 0.0


# ---------------------------------------------------------------- math-verify


def _math_verify_equal(solution_str: str, ground_truth: str) -> float:
    """math-verify equivalence of the model output against `\\boxed{ground_truth}` (runs in the helper process)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    try:
        gold = parse("\\boxed{" + ground_truth + "}", [LatexExtractionConfig()])
        pred = parse(solution_str, [ExprExtractionConfig(), LatexExtractionConfig()])
        return 1.0 if gold and pred and verify(gold, pred) else 0.0
    except Exception:  # a sympy failure on untrusted output is a wrong answer, not a crash
        return 0.0


def serve_math_verify() -> None:
    """Helper-process loop: read JSON [solution, ground truth] lines on stdin, write one score per line."""
    import math_verify  # noqa: F401  (imported before announcing readiness, so call timeouts exclude start-up)

    # The protocol owns stdout; anything else that prints goes to stderr.
    protocol, sys.stdout = sys.stdout, sys.stderr
    print("ready", file=protocol, flush=True)
    for line in sys.stdin:
        solution_str, ground_truth = json.loads(line)
        print(_math_verify_equal(solution_str, ground_truth), file=protocol, flush=True)


class _MathVerifyProcess:
    """math-verify in a helper process, killed and restarted when one call overruns its time limit."""

    # Why a process: sympy can spend minutes inside one C-level big-integer operation (\boxed{9^{9^{9^9}}}),
    # which neither math-verify's signal.alarm (main thread only) nor any thread-based timeout can interrupt.
    # A plain `python -c` child (not multiprocessing) so nothing depends on the parent's __main__ (Ray workers).
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None

    def _readline(self, timeout_s: float) -> str | None:
        """One line from the helper within timeout_s, or None."""
        assert self._proc is not None and self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout_s)
        return self._proc.stdout.readline() if ready else None

    def _start(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from evaluation.tasks.math_lighteval import serve_math_verify as s; s()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )
        if (self._readline(MATH_VERIFY_START_TIMEOUT_S) or "").strip() != "ready":
            self._stop()
            raise RuntimeError(f"math_verify: helper process did not start within {MATH_VERIFY_START_TIMEOUT_S} s")

    def _stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            for pipe in (self._proc.stdin, self._proc.stdout):
                if pipe is not None:
                    pipe.close()
        self._proc = None

    def score(self, solution_str: str, ground_truth: str, timeout_s: float) -> float:
        """1.0 if math-verify judges the response equal to the ground truth within timeout_s, else 0.0."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._stop()
                self._start()
            assert self._proc is not None and self._proc.stdin is not None
            try:
                self._proc.stdin.write(json.dumps([solution_str, ground_truth]) + "\n")
                self._proc.stdin.flush()
                line = self._readline(timeout_s)
                if line:
                    return float(line)
            except (OSError, ValueError):  # the helper died mid-call; the next call starts a new one
                pass
            self._stop()
            return 0.0


_MATH_VERIFY = _MathVerifyProcess()


def score_math_verify(solution_str: str, ground_truth: str) -> float:
    """math-verify reward: 1.0 if the response is equivalent to `\\boxed{ground_truth}`, else 0.0 (thread-safe)."""
    if len(solution_str) > MATH_VERIFY_MAX_CHARS:
        solution_str = solution_str[-MATH_VERIFY_MAX_CHARS:]
    return _MATH_VERIFY.score(solution_str, ground_truth, MATH_VERIFY_TIMEOUT_S)


_SCORE_FNS = {"hendrycks": score_hendrycks, "math_verify": score_math_verify}


def scorer_name(scorer: str | None = None) -> str:
    """The scorer actually used: `scorer`, else env TRE_MATH_SCORER, else 'hendrycks' (the authors')."""
    name = scorer if scorer is not None else os.environ.get(SCORER_ENV) or DEFAULT_SCORER
    if name not in _SCORE_FNS:
        source = "scorer" if scorer is not None else SCORER_ENV
        raise ValueError(f"{source}: must be one of {', '.join(SCORERS)}, got {name!r}")
    return name


def score(solution_str: str, ground_truth: str, *, scorer: str | None = None) -> float:
    """MATH reward of one response with the selected scorer (see `scorer_name`)."""
    return _SCORE_FNS[scorer_name(scorer)](solution_str, str(ground_truth))


# ---------------------------------------------------------------- data


def make_prompt(problem: str) -> str:
    """The authors' MATH prompt: the problem, one space, the boxed-answer instruction."""
    return problem + " " + INSTRUCTION


def make_row(record: dict[str, Any], split: str, index: int) -> dict[str, Any]:
    """One verl RLHFDataset row from a MATH-lighteval record (problem, level, type, solution)."""
    for field in ("problem", "solution"):
        if not isinstance(record.get(field), str):
            raise ValueError(f"{field}: MATH records need a string {field!r} (row {index} of {split})")
    try:
        answer = extract_boxed_answer(record["solution"])
    except ValueError as exc:
        raise ValueError(f"solution: row {index} of {split}: {exc}") from None
    if answer is None:
        raise ValueError(f"solution: row {index} of {split} has no \\boxed{{}} answer")
    return {
        "data_source": DATA_SOURCE,
        "prompt": common.chat_prompt(make_prompt(record["problem"])),
        "ability": ABILITY,
        "reward_model": {"style": "rule", "ground_truth": answer},
        "extra_info": {"split": split, "index": index, "solution": record["solution"]},
        "level": str(record.get("level", "")),
        "type": str(record.get("type", "")),
    }


def load_splits(source: str | None) -> tuple[list[dict], list[dict] | None]:
    """(train records, test records or None when one file must be split) from the hub or a local path."""
    if source is None or not common.is_local(source):
        hub_id = source or HUB_ID
        return common.load_hub(NAME, hub_id, "train"), common.load_hub(NAME, hub_id, "test")
    path = Path(source)
    if path.is_dir():
        train, test = common.split_file(path, "train"), common.split_file(path, "test")
        if train is None or test is None:
            raise ValueError(f"source: directory {str(path)!r} needs train.(jsonl|json|parquet) and test.(...)")
        return common.read_records(train), common.read_records(test)
    return common.read_records(path), None


# The arithmetic miniature: MATH-schema problems a tiny policy can learn in a minute (the tiny CPU grid).
ARITHMETIC_OPS = {"+": ("+", lambda a, b: a + b), "-": ("-", lambda a, b: a - b), "*": ("\\times", lambda a, b: a * b)}


def arithmetic_problems(max_operand: int = 12) -> list[dict[str, Any]]:
    """Every distinct problem of the arithmetic miniature, in a fixed order (MATH schema, one worked line)."""
    if max_operand < 1:
        raise ValueError(f"max_operand: must be >= 1, got {max_operand}")
    records = []
    for op in sorted(ARITHMETIC_OPS):
        symbol, fn = ARITHMETIC_OPS[op]
        for a in range(max_operand + 1):
            for b in range(max_operand + 1):
                if op == "-" and a < b:  # non-negative results only
                    continue
                records.append({"problem": f"What is ${a} {symbol} {b}$?", "level": "Level 1", "type": "Arithmetic",
                                "solution": f"${a} {symbol} {b} = \\boxed{{{fn(a, b)}}}$."})
    return records


def generate(n_train: int, n_test: int, *, seed: int, max_operand: int = 12) -> tuple[list[dict], list[dict]]:
    """(train, test) arithmetic problems, deterministic given the seed.

    The test split is n_test distinct problems (verl's validation groups responses by prompt text, so repeats
    would shrink it); the train split draws n_train i.i.d. from all of them, the test problems included: the
    miniature measures whether PPO sharpens arithmetic facts the warm start half knows, not generalisation to
    facts never seen.
    """
    problems = arithmetic_problems(max_operand)
    if n_train < 0 or not 0 <= n_test <= len(problems):
        raise ValueError(f"train-size/test-size: need train >= 0 and 0 <= test <= {len(problems)} "
                         f"(the distinct problems with operands up to {max_operand}), got {n_train}, {n_test}")
    rng = random.Random(seed)
    test = rng.sample(problems, n_test)
    train = [rng.choice(problems) for _ in range(n_train)]
    return train, test


def demonstration(row: dict[str, Any], *, plain: bool = False) -> str:
    """The worked solution of a prepared row (the warm start's target response).

    plain=True writes the final answer without \\boxed{} (the warm start's format slip): a sound solution the
    scorer gives 0, because the prompt asks for the boxed answer.
    """
    solution = row["extra_info"]["solution"]
    if not plain:
        return solution
    boxed_answer = last_boxed_only_string(solution)
    if boxed_answer is None:
        return solution
    return solution.replace(boxed_answer, remove_boxed(boxed_answer))


def prepare(
    out_dir: str | Path,
    *,
    source: str | None = None,
    train_size: int = 7500,
    test_size: int = 5000,
    seed: int = 0,
    generated: bool = False,
    max_operand: int = 12,
) -> dict:
    """Write MATH train/test parquet files: the hub's splits, a local file split in order, or generated arithmetic."""
    if generated and source is not None:
        raise ValueError("source: give either a source or generated=True (--generate), not both")
    if generated:
        train_records, test_records = generate(train_size, test_size, seed=seed, max_operand=max_operand)
        origin = f"arithmetic generator(seed={seed}, max_operand={max_operand})"
    else:
        # the authors take the splits in their published order (no seed)
        train_records, test_records = load_splits(source)
        origin = source or HUB_ID
    if test_records is None:
        train = common.take(train_records, 0, train_size, what="train-size")
        test = common.take(train_records, train_size, test_size, what="test-size")
    else:
        train = common.take(train_records, 0, train_size, what="train-size")
        test = common.take(test_records, 0, test_size, what="test-size")
    result = common.write_dataset(
        out_dir, common.build_rows(train, make_row, "train"), common.build_rows(test, make_row, "test")
    )
    return {"task": NAME, "source": origin, **result}
