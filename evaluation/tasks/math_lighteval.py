"""MATH (DigitalLearningGmbH/MATH-lighteval): prompts, data preparation and the two answer scorers."""

from __future__ import annotations

import json
import os
import random
import select
import subprocess
import sys
import threading
from pathlib import Path
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


# ---------------------------------------------------------------- answer extraction (Hendrycks MATH)


def last_boxed_only_string(text: str) -> str | None:
    """The last `\\boxed{...}` (or `\\boxed ...` up to `$`, or `\\fbox{...}`) in `text`, wrapper included."""
    if "\\boxed " in text:
        return "\\boxed " + text.split("\\boxed ")[-1].split("$")[0]
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return None
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
    return None


def remove_boxed(boxed: str) -> str:
    """The content of a `\\boxed{...}` / `\\boxed ...` / `\\fbox{...}` string."""
    if boxed.startswith("\\boxed "):
        return boxed[len("\\boxed ") :]
    for prefix in ("\\boxed{", "\\fbox{"):
        if boxed.startswith(prefix) and boxed.endswith("}"):
            return boxed[len(prefix) : -1]
    raise ValueError(f"not a boxed expression: {boxed[:50]!r}")


def extract_boxed_answer(text: str) -> str | None:
    """The content of the last boxed expression in `text`, or None."""
    boxed = last_boxed_only_string(text)
    return None if boxed is None else remove_boxed(boxed)


# ---------------------------------------------------------------- Hendrycks normalisation


def _fix_fracs(s: str) -> str:
    """`\\frac12` -> `\\frac{1}{2}`, `\\frac1b` -> `\\frac{1}{b}`, `\\frac1{72}` -> `\\frac{1}{72}`."""
    pieces = s.split("\\frac")
    out = pieces[0]
    for piece in pieces[1:]:
        out += "\\frac"
        # An empty piece (string ends in \frac) raises IndexError on purpose: the reference does, and
        # is_equiv then falls back to comparing the raw strings.
        if piece[0] == "{":
            out += piece
            continue
        if len(piece) < 2:
            return s
        numerator, second, rest = piece[0], piece[1], piece[2:]
        if second != "{":
            out += "{" + numerator + "}{" + second + "}" + rest
        else:
            out += "{" + numerator + "}" + second + rest
    return out


def _fix_a_slash_b(s: str) -> str:
    """`3/4` -> `\\frac{3}{4}` when both sides are plain integers."""
    parts = s.split("/")
    if len(parts) != 2:
        return s
    # int() failing raises ValueError, which (as in the reference) makes is_equiv compare the raw strings.
    numerator, denominator = int(parts[0]), int(parts[1])
    if s != f"{numerator}/{denominator}":
        return s
    return "\\frac{" + str(numerator) + "}{" + str(denominator) + "}"


def _remove_right_units(s: str) -> str:
    """Drop a trailing `\\text{ unit}`."""
    if "\\text{ " in s:
        parts = s.split("\\text{ ")
        if len(parts) != 2:
            raise ValueError("more than one \\text{ unit}")
        return parts[0]
    return s


def _fix_sqrt(s: str) -> str:
    """`\\sqrt3` -> `\\sqrt{3}`."""
    if "\\sqrt" not in s:
        return s
    pieces = s.split("\\sqrt")
    out = pieces[0]
    for piece in pieces[1:]:
        # piece[0] on an empty piece raises on purpose (reference behaviour, see _fix_fracs).
        out += "\\sqrt" + (piece if piece[0] == "{" else "{" + piece[0] + "}" + piece[1:])
    return out


def strip_string(s: str) -> str:
    """Hendrycks MATH answer normalisation (the one verl's math reward and lm-eval's hendrycks_math use)."""
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "")
    s = _remove_right_units(s)
    s = s.replace("\\%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    # "k = 5" -> "5" when the left side is a short variable name.
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:
        s = sides[1]
    s = _fix_sqrt(s)
    s = s.replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _fix_a_slash_b(s)


def is_equiv(answer: str | None, reference: str | None) -> bool:
    """Exact match after `strip_string`; raw comparison when normalisation fails, like the reference."""
    if answer is None or reference is None:
        return answer is None and reference is None
    try:
        return strip_string(answer) == strip_string(reference)
    except Exception:  # the reference falls back on any normalisation failure
        return answer == reference


def score_hendrycks(solution_str: str, ground_truth: str) -> float:
    """Authors' MATH reward: last boxed answer, Hendrycks-normalised, exact match -> 1.0 else 0.0."""
    try:
        answer = extract_boxed_answer(solution_str)
    except ValueError:
        return 0.0
    return 1.0 if answer is not None and is_equiv(answer, ground_truth) else 0.0


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
    answer = extract_boxed_answer(record["solution"])
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


def demonstration(row: dict[str, Any], *, boxed: bool = True) -> str:
    """The worked solution of a prepared row (the warm start's target response).

    boxed=False writes the final answer without \\boxed{} (the warm start's format slips): a sound solution the
    scorer gives 0, because the prompt asks for the boxed answer.
    """
    solution = row["extra_info"]["solution"]
    if boxed:
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
