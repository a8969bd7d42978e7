"""Countdown: answer extraction, the safe evaluator, the authors' reward rules, solver and generator."""

import json
import time

import pytest

from evaluation.tasks import countdown as c

GT = {"target": 24, "numbers": [4, 6, 1]}


def answer(equation: str) -> str:
    """A well-formed response around `equation`."""
    return f"<think>let me try</think>\n<answer>{equation}</answer>"


@pytest.mark.parametrize(
    "response, equation",
    [
        ("<think>a</think><answer> 4 * 6 * 1 </answer>", "4 * 6 * 1"),
        ("<think>a</think>  \n <answer>1+2</answer>\n", "1+2"),
        ("preamble <think>a</think><answer>1+2</answer>", "1+2"),
        ("<think>a</think><answer>1+2</answer> trailing", None),
        ("<think>a</think><answer>1+2</answer>\n\n", None),  # `$` allows one final newline only
        ("<answer>1+2</answer>", None),
        ("<think>a<answer>1+2</answer>", None),
        ("<think>a</think>b<answer>1+2</answer>", None),
        ("<think>x</think><answer>1</answer> <think>y</think><answer>2</answer>", "1</answer> <think>y</think><answer>2"),
        ("", None),
    ],
)
def test_extract_equation_follows_authors_regex(response, equation):
    assert c.extract_equation(response) == equation


# Each value is what Python's eval gives the string (ints stay ints, / makes floats, // floors), None where eval
# raises (the authors score those 0).
@pytest.mark.parametrize(
    "equation, value",
    [
        ("4 * 6 * 1", 24),
        ("(6 - 4) / 4", 0.5),
        ("-(3 - 5)", 2),
        ("2.5 * 2", 5.0),
        ("10 / 3 * 3", 10.0),
        ("2**3", 8),
        ("2 ** -1", 0.5),
        ("-2**2", -4),  # ** binds tighter than unary minus
        ("2**3**2", 512),  # and is right-associative
        ("7//2", 3),
        ("-7 // 2", -4),  # floor, not truncation
        ("7.5 // 2", 3.0),
        ("1. + .5", 1.5),
        ("00 + 1", 1),
        ("01 + 1", None),  # leading zeros are a SyntaxError in Python 3
        ("(4 *\n 6)", 24),  # a newline inside parentheses is fine
        ("4 *\n 6", None),
        ("(0 - 8) ** (1 / 3)", (-8) ** (1 / 3)),  # a complex number, as in Python
        ("1/0", None),
        ("1/(2-2)", None),
        ("1.0 // 0", None),
        ("0 ** -1", None),
        ("1.5 ** 100000", None),  # float overflow raises
        ("7 % 2", None),
        ("abs(-3)", None),
        ("__import__('os')", None),
        ("(4)(6)", None),  # calling an int: TypeError
        ("()", None),
        ("...", None),
        ("1 +", None),
        ("\u0663 + 1", None),  # Arabic-Indic digit three: passes the character check, fails Python's parser
        ("4 *\u00a06", None),  # so does a no-break space
        ("(" * 200 + "1" + ")" * 200, 1),  # Python's parser allows 200 nested parentheses
        ("(" * 201 + "1" + ")" * 201, None),
        ("-" * 2000 + "1", 1),  # deeper than Python recursion, still parsed by Python
        ("-" * 3000 + "1", None),  # beyond Python's own limit
        ("+".join(["1"] * 300), 300),
        ("99999999 * 99999999", 9999999800000001),
        ("99 ** 99 - 99 ** 99", 0),
        ("1 ** 99 ** 99", 1),  # a huge exponent of 1 is cheap, as in Python
        ("9 ** 9 ** 9", None),  # 1.2e9 bits: over MAX_INT_BITS (Python would take minutes)
        ("2 ** (2 ** 20)", None),
        ("(3 ** 200) ** (3 ** 200)", None),
        ("2 ** 99 ** 99 * 0", None),
        ("(2 ** 200000) * (2 ** 200000)", None),
    ],
)
def test_evaluate_equation(equation, value):
    result = c.evaluate_equation(equation)
    assert result == value and type(result) is type(value)


@pytest.mark.parametrize(
    "response, reward",
    [
        (answer("4 * 6 * 1"), 1.0),
        (answer("(6 * 4) / 1"), 1.0),
        (answer("6 * 4"), 0.0),  # 1 unused
        (answer("6 * 4 * 1 * 1"), 0.0),  # 1 reused
        (answer("6 * 4 + 1"), 0.0),  # wrong value
        (answer("6 * 4 * 1 = 24"), 0.0),  # '=' is outside the allowed characters
        (answer("6 ** 4 * 1"), 0.0),  # 1296
        (answer("(6 - 1) ** 4"), 0.0),  # 625: each number once, value wrong
        (answer("6 * 4 ** 1"), 1.0),  # ** counts, as in the authors' eval
        (answer("(6 // 1) * 4"), 1.0),  # and so does //
        (answer("((6 * 4)) // 1"), 1.0),
        (answer("6 * 4 / (1 - 1)"), 0.0),
        ("<answer>4 * 6 * 1</answer>", 0.0),  # missing <think>
        ("<think>4 * 6 * 1 = 24</think>", 0.0),  # missing <answer>
        (answer("\u0664 * \u0666 * \u0661"), 0.0),  # unicode digits
        (answer("4 * 6 * 1") + " done", 0.0),  # answer not at the end
        ("<think>" * 20_000 + answer("4 * 6 * 1"), 1.0),
    ],
)
def test_score_rules(response, reward):
    assert c.score(response, GT) == reward


def test_power_floor_division_and_long_answers_score_like_the_authors_eval():
    assert c.score(answer("4**2 - 16"), {"target": 0, "numbers": [4, 2, 16]}) == 1.0
    assert c.score(answer("29 // 2 + 9"), {"target": 23, "numbers": [29, 2, 9]}) == 1.0
    assert c.score(answer("29 / 2 + 9"), {"target": 23, "numbers": [29, 2, 9]}) == 0.0  # 23.5
    assert c.score(answer("(" + " " * 5000 + "4 * 6 * 1" + " " * 5000 + ")"), GT) == 1.0
    assert c.score(answer("(((((" + " \n " * 2000 + "4 * 6 * 1)))))"), GT) == 1.0
    assert c.score(answer("-" * 2000 + "(4 * 6 * 1)"), GT) == 1.0  # an even number of minus signs


def test_score_tolerance_and_ground_truth_forms():
    assert c.score(answer("(1 + 2) / 3"), {"target": 1, "numbers": (3, 2, 1)}) == 1.0
    assert c.score(answer("10 / 3 * 3"), {"target": 10, "numbers": [10, 3, 3]}) == 1.0
    assert c.score(answer("1 / 3"), {"target": 0.333333, "numbers": [1, 3]}) == 1.0
    assert c.score(answer("1 / 3"), {"target": 0.3333, "numbers": [1, 3]}) == 0.0
    with pytest.raises(ValueError, match="^ground_truth: Countdown needs"):
        c.score(answer("1"), {"target": 1})


def test_adversarial_inputs_are_bounded():
    huge = [
        "x" * 100_000,
        "<think>" + "(" * 50_000 + "</think><answer>" + "(" * 50_000 + "</answer>",
        answer("(" * 100_000 + "4*6*1" + ")" * 100_000),
        answer("4 * 6 * 1" + " " * 100_000),  # whitespace is stripped: still correct
        "<think></think>" * 7000 + "<answer>4 * 6 * 1</answer>",
        answer("9" * 5000 + " * 4 * 6 * 1"),
        answer("-" * 5999 + "4 * 6 * 1"),
        answer("(" * 200 + "-" * 2990 + "4 * 6 * 1" + ")" * 200),
        answer(" " * 200_000 + "(4 * 6 * 1)" + "()" * 50_000),
        answer("4 * 6 * 1" + " + ..." * 30_000),
    ]
    towers = [  # (response, ground truth): Python would take minutes to hours or run out of memory
        (answer("9**9**9"), {"target": 0, "numbers": [9, 9, 9]}),
        (answer("99 ** 99 ** 99 - 99 ** 99 ** 99"), {"target": 0, "numbers": [99] * 6}),
        (answer("(2 ** 3 ** 4 ** 5) // 2"), {"target": 1, "numbers": [2, 3, 4, 5, 2]}),
        (answer("2 ** (3 ** 11) * 4 ** (5 ** 7)"), {"target": 1, "numbers": [2, 3, 11, 4, 5, 7]}),
    ]
    start = time.monotonic()
    assert [c.score(text, GT) for text in huge] == [0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert [c.score(text, truth) for text, truth in towers] == [0.0] * len(towers)
    assert time.monotonic() - start < 2.0


def test_solve_returns_scoring_expressions():
    assert c.solve([44, 19, 35], 98) is not None
    assert c.solve([4, 4, 4, 4], 0) == "((4 + 4) - 4) - 4"
    assert c.solve([7], 7) == "7"
    assert c.solve([3, 3], 9) == "3 * 3"
    assert c.solve([1, 5, 5, 5], 24) is None  # needs the fraction 1/5
    assert c.solve([2, 3], 7) is None
    for nums, target in [([44, 19, 35], 98), ([25, 3, 8, 2], 59), ([90, 5, 3], 15)]:
        expr = c.solve(nums, target)
        assert c.score(answer(expr), {"target": target, "numbers": nums}) == 1.0
    with pytest.raises(ValueError, match="^numbers: must be a non-empty list of non-negative integers"):
        c.solve([], 3)


def test_generate_is_deterministic_unique_and_solvable():
    tasks = c.generate(40, seed=7)
    assert tasks == c.generate(40, seed=7)
    assert tasks != c.generate(40, seed=8)
    assert len({(tuple(sorted(t["nums"])), t["target"]) for t in tasks}) == 40
    for t in tasks:
        assert 3 <= len(t["nums"]) <= 4 and all(1 <= n <= 99 for n in t["nums"]) and 10 <= t["target"] <= 100
        expr = c.solve(t["nums"], t["target"])
        assert c.score(answer(expr), {"target": t["target"], "numbers": t["nums"]}) == 1.0
    assert {len(t["nums"]) for t in tasks} == {3, 4}
    assert c.generate(5, seed=1, min_numbers=2, max_numbers=2) == c.generate(5, seed=1, min_numbers=2, max_numbers=2)
    with pytest.raises(ValueError, match="^min_numbers/max_numbers"):
        c.generate(3, seed=0, min_numbers=5, max_numbers=4)


def test_operator_restriction_and_the_prompt_order_of_sums_and_products():
    # + and * keep the numbers in the prompt's order; - and / put the larger first
    assert c.solve([7, 5, 8], 47) == "7 + (5 * 8)"
    assert c.solve([5, 2, 4], 11) == "(5 + 2) + 4"
    assert c.solve([2, 9], 7) == "9 - 2"
    assert sorted(c.reachable([1, 2, 3], "+*").items()) == [
        (5, "(1 * 2) + 3"), (6, "(1 + 2) + 3"), (7, "1 + (2 * 3)"), (8, "(1 + 3) * 2"), (9, "(1 + 2) * 3")]
    assert c.solve([2, 3, 4], 9, "+") == "(2 + 3) + 4" and c.solve([2, 3, 4], 10, "+") is None
    assert c.solve([2, 3, 4], 10, "+*") == "(2 * 3) + 4" and c.solve([6, 3], 2, "+-*") is None
    assert c.solve([6, 3], 2) == "6 / 3"
    for bad in ("", "x", "++", "+ ", None):
        with pytest.raises(ValueError, match=r"^ops: must be one or more of the distinct characters \+-\*/, got "):
            c.reachable([1, 2], bad)


def test_generate_with_exactly_three_small_numbers_and_restricted_operators():
    tasks = c.generate(4, seed=0, min_numbers=3, max_numbers=3, max_number=9, max_target=50, ops="+*")
    assert tasks == [{"target": 47, "nums": [7, 5, 8]}, {"target": 11, "nums": [5, 2, 4]},
                     {"target": 16, "nums": [3, 4, 1]}, {"target": 12, "nums": [1, 4, 3]}]
    for t in c.generate(200, seed=1, min_numbers=3, max_numbers=3, max_number=9, max_target=50, ops="+*"):
        assert len(t["nums"]) == 3 and all(1 <= n <= 9 for n in t["nums"]) and 10 <= t["target"] <= 50
        assert set(c.solve(t["nums"], t["target"], "+*")) <= set("0123456789+*() ")
    with pytest.raises(ValueError, match="^ops: "):
        c.generate(1, seed=0, ops="%")


def test_frozen_fixture_is_the_generator_output():
    lines = c.FIXTURE.read_text().splitlines()
    assert [json.loads(line) for line in lines] == c.generate(len(lines), seed=c.FIXTURE_SEED)
    assert len(lines) == 64


def test_prompt_is_the_authors_text():
    assert c.make_prompt([44, 19, 35], 98) == (
        "Using the numbers [44, 19, 35], create an equation that equals 98. You can use basic arithmetic operations "
        "(+, -, *, /) and each number can only be used once. Show your work in <think> </think> tags. And return the "
        "final answer in <answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>."
    )
