"""Countdown (Jiayi-Pan/Countdown-Tasks-3to4-Unique or our seeded generator): prompts, data, solver, reward."""

from __future__ import annotations

import ast
import functools
import math
import numbers as numbers_abc
import operator
import random
import re
from pathlib import Path
from typing import Any
from collections.abc import Sequence

from evaluation.tasks import common

NAME = "countdown"
DATA_SOURCE = "countdown"
HUB_ID = "Jiayi-Pan/Countdown-Tasks-3to4-Unique"
VAL_METRIC = f"val-core/{DATA_SOURCE}/reward/mean@1"
MAX_RESPONSE_LENGTH = 512
ABILITY = "math"
FIXTURE = Path(__file__).parent / "fixtures" / "countdown.jsonl"
FIXTURE_SEED = 2602

TOLERANCE = 1e-5
OPS = "+-*/"  # the operators the prompt allows (and the solver and generator use unless restricted)
# The only bound the authors' Python does not already put on an answer (its parser rejects more than 200 nested
# parentheses and unary chains of about 3,000): the size of an integer an operator may produce. Beyond it Python
# would spend seconds to hours (9**9**9 has 1.2e9 bits); we score 0 instead (docs/fidelity.md).
MAX_INT_BITS = 1 << 18

# The authors' character check and number extraction, in re's default Unicode mode as theirs: Unicode digits and
# spaces pass these and then fail Python's parser, exactly as in their eval.
_ALLOWED_CHARS = re.compile(r"^[\d+\-*/().\s]+$")
_INTEGERS = re.compile(r"\d+")
_ANSWER_AFTER_THINK = re.compile(r"\s*<answer>")


# ---------------------------------------------------------------- prompt and rows


def make_prompt(numbers: Sequence[int], target: int) -> str:
    """The authors' Countdown prompt (numbers printed as a Python list)."""
    nums = [int(n) for n in numbers]
    return (
        f"Using the numbers {nums}, create an equation that equals {int(target)}. You can use basic arithmetic "
        "operations (+, -, *, /) and each number can only be used once. Show your work in <think> </think> tags. "
        "And return the final answer in <answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>."
    )


def make_row(record: dict[str, Any], split: str, index: int, *, ops: str = OPS) -> dict[str, Any]:
    """One verl RLHFDataset row from a {target, nums} record; a generator's operator restriction goes in extra_info."""
    try:
        numbers = [int(n) for n in record["nums"]]
        target = int(record["target"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"nums/target: Countdown records need an integer list 'nums' and an integer 'target' "
                         f"(row {index} of {split})") from None
    return {
        "data_source": DATA_SOURCE,
        "prompt": common.chat_prompt(make_prompt(numbers, target)),
        "ability": ABILITY,
        "reward_model": {"style": "rule", "ground_truth": {"target": target, "numbers": numbers}},
        # the reward still accepts any operator; the restriction only tells demonstration() which solution to show
        "extra_info": {"split": split, "index": index, **({"ops": ops} if ops != OPS else {})},
    }


# ---------------------------------------------------------------- solver and generator


def check_ops(ops: str) -> str:
    """`ops` if it is a non-empty subset of + - * / without repeats (in any order), else ValueError naming it."""
    if not isinstance(ops, str) or not ops or set(ops) - set(OPS) or len(set(ops)) != len(ops):
        raise ValueError(f"ops: must be one or more of the distinct characters {OPS}, got {ops!r}")
    return ops


def _combine(a: int, b: int, ops: str = OPS) -> list[tuple[int, str]]:
    """Every (value, op) with op in `ops` and a non-negative integer result from `larger op smaller` of a pair."""
    hi, lo = max(a, b), min(a, b)
    out = [(hi + lo, "+"), (hi - lo, "-"), (hi * lo, "*")]
    if lo != 0 and hi % lo == 0:
        out.append((hi // lo, "/"))
    return [(value, op) for value, op in out if op in ops]


def reachable(numbers: Sequence[int], ops: str = OPS) -> dict[int, str]:
    """Every value some expression with operators `ops`, using all numbers once, reaches with non-negative integer
    intermediates."""
    nums = [int(n) for n in numbers]
    if not nums or any(n < 0 for n in nums):
        raise ValueError(f"numbers: must be a non-empty list of non-negative integers, got {list(numbers)!r}")
    check_ops(ops)
    # values[mask]: value -> expression over exactly the numbers in bitmask `mask`; composite expressions
    # carry outer parentheses so they can be used as operands directly. Every expression tree splits its
    # numbers into two disjoint groups at the root, so combining complementary sub-masks covers them all.
    values: list[dict[int, str]] = [{} for _ in range(1 << len(nums))]
    for i, n in enumerate(nums):
        values[1 << i].setdefault(n, str(n))
    for mask in range(1, 1 << len(nums)):
        if mask & (mask - 1) == 0:
            continue
        table = values[mask]
        sub = (mask - 1) & mask
        while sub:
            other = mask ^ sub
            if sub < other:  # each unordered split once
                for a, ea in values[sub].items():
                    for b, eb in values[other].items():
                        for value, op in _combine(a, b, ops):
                            if value not in table:
                                # - and / put the larger first (non-negative integers); + and * keep the numbers in
                                # the prompt's order, the order a small policy copies most easily
                                first = (sub & -sub) < (other & -other) if op in "+*" else a >= b
                                left, right = (ea, eb) if first else (eb, ea)
                                table[value] = f"({left} {op} {right})"
            sub = (sub - 1) & mask
    full = values[-1]
    if len(nums) == 1:
        return dict(full)
    return {value: expr[1:-1] for value, expr in full.items()}


def solve(numbers: Sequence[int], target: int, ops: str = OPS) -> str | None:
    """An expression with operators `ops` using every number once, with non-negative integer intermediates, that
    equals target, or None."""
    return reachable(numbers, ops).get(int(target))


def generate(
    n: int,
    *,
    seed: int,
    min_numbers: int = 3,
    max_numbers: int = 4,
    min_number: int = 1,
    max_number: int = 99,
    min_target: int = 10,
    max_target: int = 100,
    ops: str = OPS,
) -> list[dict[str, Any]]:
    """n unique tasks {target, nums} solvable with operators `ops` (Stream-of-Search recipe), deterministic given
    the seed."""
    if n < 0:
        raise ValueError(f"n: must be >= 0, got {n}")
    if not 2 <= min_numbers <= max_numbers:
        raise ValueError(
            f"min_numbers/max_numbers: need 2 <= min_numbers <= max_numbers, got {min_numbers}, {max_numbers}"
        )
    if not 1 <= min_number <= max_number or not 0 <= min_target <= max_target:
        raise ValueError(
            "min_number/max_number/min_target/max_target: need 1 <= min <= max for numbers, 0 <= min <= max for targets"
        )
    check_ops(ops)
    rng = random.Random(seed)
    tasks: list[dict[str, Any]] = []
    seen: set[tuple] = set()
    max_attempts = 1000 * max(n, 1)
    attempts = 0
    while len(tasks) < n:
        # Draw the size first, then redraw numbers and target until solvable, so 3- and 4-number tasks are
        # equally common even though random 3-number draws are solvable far less often.
        count = rng.randint(min_numbers, max_numbers)
        while True:
            attempts += 1
            if attempts > max_attempts:
                raise ValueError(f"generate: could not find {n} unique solvable tasks within these ranges")
            target = rng.randint(min_target, max_target)
            nums = [rng.randint(min_number, max_number) for _ in range(count)]
            key = (tuple(sorted(nums)), target)
            if key not in seen and target in reachable(nums, ops):
                break
        seen.add(key)
        tasks.append({"target": target, "nums": nums})
    return tasks


def demonstration(row: dict[str, Any], *, plain: bool = False) -> str:
    """The solver's answer to a prepared row in the authors' format, with the row's generator operators (the warm
    start's target response).

    plain=True writes the answer as the equation with its result, `<answer>(5 + 2) + 4 = 11</answer>` (the warm
    start's format slip, a common one of instruct models): a sound solution the scorer gives 0, since `=` is not
    an arithmetic character.
    """
    numbers, target = _ground_truth(row["reward_model"]["ground_truth"])
    expression = solve(numbers, int(target), (row.get("extra_info") or {}).get("ops") or OPS)
    if expression is None:
        raise ValueError(f"ground_truth: no expression over {numbers} reaches {int(target)}")
    equation = f"{expression} = {int(target)}"
    return f"<think>{equation}</think> <answer>{equation if plain else expression}</answer>"


# ---------------------------------------------------------------- reward


def extract_equation(solution_str: str) -> str | None:
    """The answer of a response ending in `<think>...</think> <answer>...</answer>` (authors' regex, linear time)."""
    # Same language as re.search(r"<think>.*?</think>\s*<answer>(.*?)</answer>$", s, re.DOTALL), written as
    # plain scans so a 100 kB adversarial response cannot trigger quadratic backtracking.
    if solution_str.endswith("</answer>"):
        end = len(solution_str) - len("</answer>")
    elif solution_str.endswith("</answer>\n"):
        end = len(solution_str) - len("</answer>\n")
    else:
        return None
    think = solution_str.find("<think>")
    if think < 0:
        return None
    close = solution_str.find("</think>", think + len("<think>"))
    while close >= 0:
        match = _ANSWER_AFTER_THINK.match(solution_str, close + len("</think>"))
        if match is not None and match.end() <= end:
            return solution_str[match.end() : end].strip()
        close = solution_str.find("</think>", close + 1)
    return None


class _Reject(Exception):
    """The equation is outside arithmetic or its result outside MAX_INT_BITS."""


Number = int | float | complex
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow}


def _apply(op: type, left: Number, right: Number) -> Number:
    """Python's `left op right`, refused when it would build an integer beyond MAX_INT_BITS."""
    if type(left) is int and type(right) is int:
        if op is ast.Mult and left.bit_length() + right.bit_length() > MAX_INT_BITS + 1:
            raise _Reject("integer too large")
        # |left| <= 1 stays small for any exponent; a negative exponent makes a float.
        if op is ast.Pow and abs(left) > 1 and right > 0 and right * math.log2(abs(left)) > MAX_INT_BITS:
            raise _Reject("integer too large")
    return _BINARY[op](left, right)


def _evaluate(tree: ast.Expression) -> Number:
    """The value Python's eval gives an AST of number literals, unary + -, and + - * / // **; _Reject otherwise."""
    # An explicit stack: Python's parser admits unary chains ~3,000 deep, deeper than Python recursion may go.
    values: list[Number] = []
    stack: list[tuple[ast.AST, bool]] = [(tree.body, False)]
    while stack:
        node, operands_done = stack.pop()
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            values.append(node.value)
        elif isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            if operands_done:
                values.append(_UNARY[type(node.op)](values.pop()))
            else:
                stack += [(node, True), (node.operand, False)]
        elif isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            if operands_done:
                right = values.pop()
                values.append(_apply(type(node.op), values.pop(), right))
            else:
                stack += [(node, True), (node.right, False), (node.left, False)]
        else:  # (), ..., calls: for Python a TypeError or a value that is no number, 0 for the authors too
            raise _Reject(type(node).__name__)
    return values[0]


def evaluate_equation(equation: str) -> Number | None:
    """Python's value of an untrusted equation of digits, `+ - * / ( ) .` and spaces (the authors' eval), or None."""
    if not _ALLOWED_CHARS.match(equation):
        return None
    try:
        # Python's own parser (eval's): the same literals, precedence and limits, without running anything.
        return _evaluate(ast.parse(equation.lstrip(" \t"), mode="eval"))  # eval drops leading spaces and tabs
    except (SyntaxError, ValueError, RecursionError, MemoryError, ArithmeticError, TypeError, _Reject):
        return None


def uses_numbers(equation: str, numbers: Sequence[int]) -> bool:
    """Whether the integers written in the equation are exactly `numbers`, each once (the authors' check)."""
    try:
        # int() refuses more than 4,300 digits (Python's limit), which bounds the work as it did the authors'.
        return sorted(int(n) for n in _INTEGERS.findall(equation)) == sorted(numbers)
    except ValueError:
        return False


def _ground_truth(ground_truth: Any) -> tuple[list[int], int | float]:
    """(numbers, target) from a {target, numbers} mapping (lists may arrive as numpy arrays from parquet)."""
    try:
        numbers = [int(n) for n in ground_truth["numbers"]]
        target = ground_truth["target"]
        # An integral target stays exact (as in the authors' `result - target`); numpy scalars become Python's.
        target = int(target) if isinstance(target, numbers_abc.Integral) else float(target)
    except (KeyError, TypeError, ValueError, IndexError):
        raise ValueError(
            f"ground_truth: Countdown needs {{'target': int, 'numbers': [int, ...]}}, got {ground_truth!r:.200}"
        ) from None
    return numbers, target


def score(solution_str: str, ground_truth: Any) -> float:
    """Authors' Countdown reward: 1.0 if the final answer uses each number once and equals the target, else 0.0."""
    numbers, target = _ground_truth(ground_truth)
    equation = extract_equation(solution_str)
    if equation is None or not uses_numbers(equation, numbers):
        return 0.0
    value = evaluate_equation(equation)
    if value is None:
        return 0.0
    try:
        return 1.0 if abs(value - target) < TOLERANCE else 0.0
    except OverflowError:  # an int beyond float range against a float target: never within tolerance
        return 0.0


# ---------------------------------------------------------------- data


def load_records(source: str | None) -> list[dict[str, Any]]:
    """All {target, nums} records of the hub's train split or of a local file (directory: train.* then test.*)."""
    return common.load_source(NAME, source, HUB_ID, ("train", "test"))


def prepare(
    out_dir: str | Path,
    *,
    source: str | None = None,
    train_size: int = 7500,
    test_size: int = 5000,
    seed: int = 0,
    generated: bool = False,
    numbers: int | None = None,
    max_number: int = 99,
    min_target: int = 10,
    max_target: int = 100,
    ops: str = OPS,
    train_from_test: bool = False,
) -> dict:
    """Write Countdown train/test parquet: first train_size rows / next test_size rows of the source or generator.

    The generator's options: exactly `numbers` numbers (else 3-4), each in 1..max_number, a target in
    min_target..max_target reachable with the operators `ops`. train_from_test: the test split is test_size unique
    tasks and the train split draws train_size i.i.d. from them (the CPU miniature: solutions the warm start has
    half memorised, as the MATH miniature's sums)."""
    options = {"numbers": numbers, "max_number": max_number, "min_target": min_target, "max_target": max_target,
               "ops": ops, "train_from_test": train_from_test}
    defaults = {"numbers": None, "max_number": 99, "min_target": 10, "max_target": 100, "ops": OPS,
                "train_from_test": False}
    changed = {k: v for k, v in options.items() if v != defaults[k]}
    if generated and source is not None:
        raise ValueError("source: give either a source or generated=True (--generate), not both")
    if changed and not generated:
        raise ValueError(f"{next(iter(changed))}: only for generated tasks (--generate)")
    row = make_row
    if generated:
        if numbers is not None and numbers < 2:
            raise ValueError(f"numbers: must be >= 2, got {numbers}")
        counts = {} if numbers is None else {"min_numbers": numbers, "max_numbers": numbers}
        ranges = {"max_number": max_number, "min_target": min_target, "max_target": max_target, "ops": ops}
        if train_from_test:
            test = generate(test_size, seed=seed, **counts, **ranges)
            rng = random.Random(seed)
            records = [rng.choice(test) for _ in range(train_size)] + test if test else []
        else:
            records = generate(train_size + test_size, seed=seed, **counts, **ranges)
        origin = "generator(" + ", ".join(f"{k}={v}" for k, v in {"seed": seed, **changed}.items()) + ")"
        row = functools.partial(make_row, ops=ops)
    else:
        records = load_records(source)
        origin = source or HUB_ID
    train = common.take(records, 0, train_size, what="train-size")
    test = common.take(records, train_size, test_size, what="test-size")
    result = common.write_dataset(out_dir, common.build_rows(train, row, "train"), common.build_rows(test, row, "test"))
    return {"task": NAME, "source": origin, **result}
