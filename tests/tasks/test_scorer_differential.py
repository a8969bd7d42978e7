"""Differential tests of the task rewards: generated answers scored by ours and by the authors' rules must agree.

MATH: the authors' reward is verl 0.4.1's `verl/utils/reward_score/math.py::compute_score` (their fork ships the
file unchanged). Each generated answer form carries the normal form the authors' rules give it, stated below, so
the expected reward is known without running any scorer; verl's own compute_score is run on the same pairs too.

Countdown: the authors' reward is their fork's `verl/utils/reward_score/countdown.py::compute_score`
(TinyZero-style, format score 0), restated in `authors_countdown` below from its rules and run with Python's eval on
generated benign equations only.
"""

from __future__ import annotations

import contextlib
import io
import random
import re
from typing import Any

from evaluation.tasks import countdown as c
from evaluation.tasks import math_lighteval as m

# ---------------------------------------------------------------- MATH
#
# The authors' rules (compute_score, last_boxed_only_string, remove_boxed, is_equiv, strip_string):
#  E1 if "\boxed " (with a space) occurs anywhere, the answer is the text after the last "\boxed " up to the next "$";
#  E2 else the last "\boxed{...}" (balanced braces), its content; E3 with no \boxed but an \fbox{...}: reward 0
#     (remove_boxed asserts the \boxed wrapper); E4 no box: 0.
#  N  both answer and gold are normalised, then compared as strings: newlines, "\!" removed; "\\" -> "\";
#     tfrac/dfrac -> frac; \left \right removed; ^{\circ} ^\circ removed; "\$" removed; one "\text{ unit}" suffix
#     removed; "\%" removed; " ." -> " 0.", "{." -> "{0.", a leading "." gets a "0"; "k = v" -> "v" when there is
#     exactly one "=" and its left side has at most 2 characters (spaces included); \sqrt3 -> \sqrt{3}; spaces
#     removed; \frac12 -> \frac{1}{2}; "0.5" -> \frac{1}{2}; "a/b" -> \frac{a}{b} only when a and b are integers
#     written plainly, any other a/b (x/5, \pi/3) is kept as it is (spaces already gone).

Form = tuple[str, str]  # (answer as written, its normal form under rule N)


def _integer_forms(rng: random.Random) -> list[Form]:
    n = rng.choice([rng.randint(0, 9), rng.randint(10, 9999), -rng.randint(1, 99)])
    forms = [(f"{n}", f"{n}"), (f" {n} ", f"{n}"), (f"{n}^\\circ", f"{n}"), (f"{n}^{{\\circ}}", f"{n}"),
             (f"\\${n}", f"{n}"), (f"{n}\\%", f"{n}"), (f"{n}\\text{{ cm}}", f"{n}"), (f"{n} \\text{{ units}}", f"{n}"),
             (f"{n}\\text{{cm}}", f"{n}\\text{{cm}}"), (f"x = {n}", f"{n}"), (f"k={n}", f"{n}"),
             (f"xy = {n}", f"xy={n}"), (f"\\left( {n} \\right)", f"({n})")]
    if n > 0:
        forms.append((f"+{n}", f"+{n}"))
    if n >= 1000:
        comma = f"{n // 1000},{n % 1000:03d}"
        forms += [(f"{n // 1000}\\!{n % 1000:03d}", f"{n}"), (comma, comma)]
    return forms


def _fraction_forms(rng: random.Random) -> list[Form]:
    p, q = rng.randint(1, 12), rng.randint(2, 12)
    frac = f"\\frac{{{p}}}{{{q}}}"
    forms = [(frac, frac), (f"\\dfrac{{{p}}}{{{q}}}", frac), (f"\\tfrac{{{p}}}{{{q}}}", frac), (f"{p}/{q}", frac),
             (f"{p} / {q}", frac), (f"x = {p}/{q}", frac), (f"-{p}/{q}", f"\\frac{{-{p}}}{{{q}}}"),
             (f"-\\frac{{{p}}}{{{q}}}", f"-{frac}"), (f"\\left( {frac} \\right)", f"({frac})")]
    if p < 10 and q < 10:
        forms += [(f"\\frac{p}{q}", frac), (f"\\dfrac{p}{q}", frac), (f"\\frac{p}{{{q}}}", frac)]
    if (p, q) == (1, 2):
        forms += [("0.5", frac), (".5", frac), ("x = .5", frac)]
    return forms


def _symbolic_forms(rng: random.Random) -> list[Form]:
    symbol, q = rng.choice(["x", "\\pi", "y", "\\sqrt{2}"]), rng.randint(2, 9)
    slash = f"{symbol}/{q}"
    return [(slash, slash), (f"{symbol} / {q}", slash), (f"{symbol}/ {q}", slash), (f"x = {symbol} / {q}", slash),
            (f"\\frac{{{symbol}}}{{{q}}}", f"\\frac{{{symbol}}}{{{q}}}"),
            (f"\\dfrac{{{symbol}}}{{{q}}}", f"\\frac{{{symbol}}}{{{q}}}")]


def _decimal_forms(rng: random.Random) -> list[Form]:
    whole, frac = rng.choice([0, rng.randint(1, 99)]), rng.randint(1, 99)
    d = f"{whole}.{frac:02d}"
    forms = [(d, d), (f" {d}", d), (f"\\${d}", d), (f"{d}\\%", d), (f"{d}0", f"{d}0")]
    if whole == 0:
        forms += [(f".{frac:02d}", d), (f"\\$.{frac:02d}", d), (f"x = .{frac:02d}", d)]
    return forms


def _sqrt_forms(rng: random.Random) -> list[Form]:
    k, r = rng.randint(2, 9), rng.choice([2, 3, 5, 6, 7])
    s = f"{k}\\sqrt{{{r}}}"
    root = f"\\sqrt{{{k * k * r}}}"
    return [(s, s), (f"{k} \\sqrt{{{r}}}", s), (f"{k}\\sqrt{r}", s), (root, root),
            (f"\\frac{{\\sqrt{{{r}}}}}{{{k}}}", f"\\frac{{\\sqrt{{{r}}}}}{{{k}}}"),
            (f"\\dfrac{{\\sqrt{r}}}{{{k}}}", f"\\frac{{\\sqrt{{{r}}}}}{{{k}}}")]


def _interval_forms(rng: random.Random) -> list[Form]:
    a, b = sorted(rng.sample(range(-9, 10), 2))
    left, right = rng.choice(["(", "["]), rng.choice([")", "]"])
    plain = f"{left}{a},{b}{right}"
    return [(plain, plain), (f"{left}{a}, {b}{right}", plain), (f"\\left{left} {a}, {b} \\right{right}", plain),
            (f"{left}{a},\\infty)", f"{left}{a},\\infty)"), (f"\\{{{a},{b}\\}}", f"\\{{{a},{b}\\}}")]


FAMILIES = [_integer_forms, _fraction_forms, _symbolic_forms, _decimal_forms, _sqrt_forms, _interval_forms]


def _response(rng: random.Random, written: str, decoy: str) -> tuple[str, str | None]:
    """A response carrying `written` in one of the box layouts, and the answer rules E1-E4 extract from it."""
    layout = rng.randrange(8)
    if layout == 0:
        return f"Let me think. The answer is $\\boxed{{{written}}}$.", written
    if layout == 1:
        return f"First $\\boxed{{{decoy}}}$, no: $\\boxed{{{written}}}$", written
    if layout == 2:
        return f"$\\boxed{{{written}}}$ or rather $\\boxed{{{decoy}}}$", decoy
    if layout == 3:
        return f"So \\fbox{{{written}}}.", None  # E3
    if layout == 4:
        return f"\\fbox{{{decoy}}} then \\boxed{{{written}}}", written
    if layout == 5:
        return f"\\boxed{{{decoy}}} then \\fbox{{{written}}}", decoy  # \fbox only counts without any \boxed
    if layout == 6 and "$" not in written:
        return f"so \\boxed {written}$ done", written  # E1
    return f"The answer is {written}.", None  # E4


def math_cases(n: int, seed: int) -> list[tuple[str, str, float]]:
    """n (response, gold, expected reward) triples, the expected reward derived from rules E1-E4 and N."""
    rng = random.Random(seed)
    cases = []
    while len(cases) < n:
        family = rng.choice(FAMILIES)
        forms = family(rng)
        gold, gold_normal = rng.choice(forms)
        written, normal = rng.choice(forms if rng.random() < 0.7 else family(rng))
        decoy, decoy_normal = rng.choice(family(rng))
        response, extracted = _response(rng, written, decoy)
        if extracted is None:
            expected = 0.0
        else:
            extracted_normal = normal if extracted == written else decoy_normal
            expected = float(extracted_normal == gold_normal)
        cases.append((response, gold.strip(), expected))
    return cases


def verl_compute_score(solution_str: str, ground_truth: str) -> float:
    """verl 0.4.1's compute_score itself (the authors' MATH reward), its printing of caught errors silenced."""
    with contextlib.redirect_stdout(io.StringIO()):
        return m.VERL_MATH.compute_score(solution_str, ground_truth)


def test_math_reward_matches_the_authors_rules_on_generated_answer_forms():
    cases = math_cases(4000, seed=11)
    mismatches = [(r, g, e) for r, g, e in cases if m.score(r, g, scorer="hendrycks") != e]
    assert mismatches == []
    assert [verl_compute_score(r, g) for r, g, _ in cases] == [e for _, _, e in cases]
    rewards = [e for _, _, e in cases]
    assert 0.1 < sum(rewards) / len(rewards) < 0.9  # both outcomes well represented
    # the two forms the lm-eval variant of the normaliser and an \fbox-accepting extractor get wrong
    assert any("/ " in r and e == 1.0 and "\\boxed{x" in r for r, _, e in cases)
    assert any("\\fbox" in r and "\\boxed" not in r for r, _, e in cases)


_FUZZ_TOKENS = ["\\boxed{", "\\boxed ", "\\boxed", "\\fbox{", "{", "}", "$", "\\$", "\\frac", "\\dfrac", "\\sqrt",
                "/", " ", "=", "x", "1", "2", "12", ".", "0.5", "\\text{ ", "\\%", "^\\circ", "\\left(", "\\right)",
                "\\!", "\\\\", "\n", "-", ","]


def test_math_reward_equals_verls_compute_score_on_random_token_strings():
    rng = random.Random(5)
    pairs = []
    for _ in range(4000):
        response = "".join(rng.choice(_FUZZ_TOKENS) for _ in range(rng.randint(0, 14)))
        gold = "".join(rng.choice(_FUZZ_TOKENS[4:]) for _ in range(rng.randint(0, 5)))
        pairs.append((response, gold))
    ours = [m.score(r, g, scorer="hendrycks") for r, g in pairs]
    assert ours == [verl_compute_score(r, g) for r, g in pairs]
    assert 0 < sum(ours) < len(ours)


# ---------------------------------------------------------------- Countdown

_AUTHORS_ANSWER = re.compile(r"<think>.*?</think>\s*<answer>(.*?)</answer>$", re.DOTALL)


def authors_countdown(solution_str: str, ground_truth: dict[str, Any]) -> float:
    """The authors' Countdown reward, from its rules: the last `<think>..</think> <answer>..</answer>` at the end,
    its integers exactly the given numbers, only digits `+ - * / ( ) .` and spaces, Python's value within 1e-5."""
    matches = list(_AUTHORS_ANSWER.finditer(solution_str))
    if not matches:
        return 0.0
    equation = matches[-1].group(1).strip()
    try:
        if sorted(int(n) for n in re.findall(r"\d+", equation)) != sorted(ground_truth["numbers"]):
            return 0.0
    except ValueError:
        return 0.0
    if not re.match(r"^[\d+\-*/().\s]+$", equation):
        return 0.0
    try:
        result = eval(equation, {"__builtins__": None}, {})  # benign generated equations only (small exponents)
        return 1.0 if abs(result - ground_truth["target"]) < 1e-5 else 0.0
    except Exception:
        return 0.0


_OPS = ["+", "-", "*", "/", "//", "**"]


def _expression(rng: random.Random, leaves: list[str]) -> str:
    """A random expression over the leaves in order: + - * / // ** (exponents single small literals), parentheses."""
    if len(leaves) == 1:
        leaf = leaves[0]
        return f"-{leaf}" if rng.random() < 0.05 else leaf
    split = rng.randint(1, len(leaves) - 1)
    left, right = _expression(rng, leaves[:split]), _expression(rng, leaves[split:])
    op = rng.choice(_OPS)
    if op == "**" and not (len(leaves) - split == 1 and right.isdigit() and int(right) <= 4):
        op = rng.choice(_OPS[:5])
    space = rng.choice(["", " ", " ", "  ", "\t"])
    text = f"{left}{space}{op}{space}{right}"
    return f"({text})" if rng.random() < 0.6 else text


def _countdown_case(rng: random.Random) -> tuple[str, dict[str, Any]]:
    """One generated response and ground truth: reuse, omission, ** and //, whitespace, tags."""
    numbers = [rng.choice([rng.randint(1, 9), rng.randint(1, 99)]) for _ in range(rng.randint(3, 4))]
    leaves = [str(n) for n in numbers]
    rng.shuffle(leaves)
    kind = rng.random()
    if kind < 0.07:
        leaves.append(rng.choice(leaves))  # a number reused
    elif kind < 0.12:
        leaves.pop()  # a number left out
    elif kind < 0.14:
        leaves[0] = "0" + leaves[0]  # a leading zero: Python refuses it
    elif kind < 0.16:
        leaves[0] += ".0"  # "5.0" adds the integer 0
    equation = _expression(rng, leaves)
    if rng.random() < 0.05:
        equation = "(" + " " * rng.randint(500, 3000) + equation + "\n" * rng.randint(0, 3) + ")"
    try:
        value = eval(equation, {"__builtins__": None}, {})
        target = round(value.real) if rng.random() < 0.8 else round(value.real) + rng.choice([-1, 1])
    except Exception:
        target = rng.randint(1, 100)
    wrap = rng.randrange(10)
    body = rng.choice([" ", "", "\n"]) + equation + rng.choice([" ", "", "\n"])
    response = {
        0: f"<think>work</think> <answer>{body}</answer>",
        1: f"<think>work</think>\n\n<answer>{body}</answer>\n",
        2: f"<answer>{body}</answer>",  # no <think>
        3: f"<think>work</think> <answer>{body}</answer> done",  # not at the end
        4: f"<think>a</think> <answer>1</answer> <think>b</think><answer>{body}</answer>",
        5: f"<think>x</think> so <answer>{body}</answer>",  # text between the tags
        6: f"Assistant: <think>{equation} = {target}</think><answer>{body}</answer>\n\n",
    }.get(wrap, f"<think>let me try</think><answer>{body}</answer>")
    return response, {"target": target, "numbers": numbers}


def test_countdown_reward_matches_the_authors_rules_on_generated_answers():
    rng = random.Random(2602)
    cases = [_countdown_case(rng) for _ in range(6000)]
    expected = [authors_countdown(r, g) for r, g in cases]
    ours = [c.score(r, g) for r, g in cases]
    mismatches = [(r, g, e) for (r, g), e, o in zip(cases, expected, ours) if e != o]
    assert mismatches == []
    assert 0.1 < sum(ours) / len(ours) < 0.9
    # the forms the issue names are among the correct answers: ** and //, and answers over 1,000 characters
    correct = [r for (r, _), o in zip(cases, ours) if o == 1.0]
    assert sum("**" in r for r in correct) > 50 and sum("//" in r for r in correct) > 50
    assert sum(len(r) > 1000 for r in correct) > 20
