"""MATH scorers: Hendrycks normalisation (authors' reward) and math-verify, with known answers."""

import threading
import time

import pytest

from evaluation.tasks import math_lighteval as m


@pytest.mark.parametrize(
    "raw, normalised",
    [
        ("\\dfrac{1}{2}", "\\frac{1}{2}"),
        ("\\tfrac12", "\\frac{1}{2}"),
        ("\\frac1b", "\\frac{1}{b}"),
        ("\\frac1{72}", "\\frac{1}{72}"),
        ("3/4", "\\frac{3}{4}"),
        ("0.5", "\\frac{1}{2}"),
        (".25", "0.25"),
        (".5", "\\frac{1}{2}"),
        ("\\sqrt3", "\\sqrt{3}"),
        ("65^\\circ", "65"),
        ("120^{\\circ}", "120"),
        ("\\$9.90", "9.90"),
        ("15\\%", "15"),
        ("60\\text{ mph}", "60"),
        ("\\left(2, -3\\right)", "(2,-3)"),
        ("x = 7", "7"),
        ("k=\\frac{1}{3}", "\\frac{1}{3}"),
        ("a\\!b\nc", "abc"),
        ("", ""),
    ],
)
def test_strip_string_known_outputs(raw, normalised):
    assert m.strip_string(raw) == normalised


def test_is_equiv_keeps_non_integer_a_slash_b_and_falls_back_to_raw_strings_on_errors():
    # verl's fix_a_slash_b swallows int("x") and returns the string, so normalisation goes on (spaces removed).
    assert m.is_equiv("x/2", "x/ 2") is True
    assert m.is_equiv("\\pi/ 3", "\\pi/3") is True
    assert m.is_equiv("x/2", "x/3") is False
    # "\\sqrt" with nothing after it makes fix_sqrt index an empty string: the raw strings are compared instead.
    assert m.is_equiv("2\\sqrt", "2\\sqrt") is True
    assert m.is_equiv("2\\sqrt", "2 \\sqrt") is False
    assert m.is_equiv(None, None) is True
    assert m.is_equiv(None, "1") is False


def test_scorer_is_verls_own_file():
    import importlib.metadata

    assert importlib.metadata.version("verl") == "0.4.1"
    assert m.VERL_MATH.__file__.endswith("verl/utils/reward_score/math.py")
    assert m.strip_string is m.VERL_MATH.strip_string


@pytest.mark.parametrize(
    "text, boxed",
    [
        ("so $\\boxed{5}$.", "5"),
        ("first \\boxed{1} then \\boxed{\\frac{2}{3}}", "\\frac{2}{3}"),
        ("nested \\boxed{\\frac{\\sqrt{2}}{2}} end", "\\frac{\\sqrt{2}}{2}"),
        ("answer \\boxed 7$ done", "7"),
        ("old style \\fbox{12}", ValueError),  # verl's remove_boxed asserts the \\boxed wrapper
        ("\\boxed{11} then \\fbox{12}", "11"),  # \\fbox is looked for only when there is no \\boxed
        ("no answer here", None),
        ("unclosed \\boxed{3", None),
    ],
)
def test_extract_boxed_answer(text, boxed):
    if boxed is ValueError:
        with pytest.raises(ValueError, match="^not a \\\\boxed expression"):
            m.extract_boxed_answer(text)
    else:
        assert m.extract_boxed_answer(text) == boxed


# (gold, predicted) -> (Hendrycks, math-verify), each value checked by hand against the rules of the two scorers.
EQUIVALENCE_TABLE = [
    ("\\frac{3}{4}", "\\frac34", 1.0, 1.0),
    ("\\frac{3}{4}", "0.75", 0.0, 1.0),
    ("\\frac{3}{4}", "3/4", 1.0, 1.0),
    ("\\dfrac{1}{2}", "\\frac{1}{2}", 1.0, 1.0),
    ("5\\sqrt{2}", "\\sqrt{50}", 0.0, 1.0),
    ("(-2,2)", "(-2, 2)", 1.0, 1.0),
    ("7", "x=7", 1.0, 1.0),
    ("10\\%", "10", 1.0, 0.0),
    ("5", "\\$5", 1.0, 1.0),
    ("1000", "1,000", 0.0, 1.0),
    ("\\text{(B)}", "B", 0.0, 1.0),
    ("90^\\circ", "90", 1.0, 1.0),
    ("\\{1,2\\}", "\\{2,1\\}", 0.0, 1.0),
    ("2\\pi", "6.283", 0.0, 0.0),
    ("0.5", "\\frac{1}{2}", 1.0, 1.0),
    ("11", "12", 0.0, 0.0),
    ("[2,5)", "[2,5]", 0.0, 0.0),
    ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}", 0.0, 1.0),
    ("-\\frac{2}{3}", "-2/3", 0.0, 1.0),
    ("x/5", "x / 5", 1.0, 1.0),  # verl keeps a non-integer a/b and removes its spaces
    ("\\pi/3", "\\pi/ 3", 1.0, 1.0),
]


@pytest.mark.parametrize("gold, pred, hendrycks, math_verify", EQUIVALENCE_TABLE)
def test_scorers_on_known_pairs(gold, pred, hendrycks, math_verify):
    response = "Let me think. The answer is $\\boxed{" + pred + "}$."
    assert m.score(response, gold, scorer="hendrycks") == hendrycks
    assert m.score(response, gold, scorer="math_verify") == math_verify


def test_hendrycks_uses_last_box_and_needs_one():
    assert m.score("\\boxed{3} no wait \\boxed{4}", "4") == 1.0
    assert m.score("\\boxed{4} no wait \\boxed{3}", "4") == 0.0
    assert m.score("the answer is 4", "4") == 0.0
    assert m.score("\\boxed\\frac12", "\\frac12") == 0.0
    assert m.score("\\fbox{4}", "4") == 0.0  # verl's remove_boxed asserts the \\boxed wrapper
    assert m.score("\\fbox{3} then \\boxed{4}", "4") == 1.0
    assert m.score("x" * 100_000 + "\\boxed{4}", "4") == 1.0


def test_scorer_selection_and_name(monkeypatch):
    monkeypatch.delenv(m.SCORER_ENV, raising=False)
    assert m.scorer_name() == "hendrycks"
    assert m.scorer_name("math_verify") == "math_verify"
    monkeypatch.setenv(m.SCORER_ENV, "math_verify")
    assert m.scorer_name() == "math_verify"
    assert m.score("$\\boxed{0.75}$", "\\frac{3}{4}") == 1.0  # env picks math-verify
    assert m.score("$\\boxed{0.75}$", "\\frac{3}{4}", scorer="hendrycks") == 0.0
    with pytest.raises(ValueError, match=r"^scorer: must be one of hendrycks, math_verify, got 'sympy'$"):
        m.scorer_name("sympy")
    monkeypatch.setenv(m.SCORER_ENV, "exact")
    with pytest.raises(ValueError, match=r"^TRE_MATH_SCORER: must be one of hendrycks, math_verify, got 'exact'$"):
        m.score("\\boxed{1}", "1")


def test_math_verify_from_worker_threads():
    responses = ["$\\boxed{0.75}$", "$\\boxed{\\frac34}$", "$\\boxed{0.7}$", "$\\boxed{3/4}$"]
    results: dict[int, float] = {}

    def work(i):
        results[i] = m.score(responses[i], "\\frac{3}{4}", scorer="math_verify")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(responses))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {0: 1.0, 1: 1.0, 2: 0.0, 3: 1.0}


def test_math_verify_runaway_answer_is_killed_and_scorer_recovers(monkeypatch):
    monkeypatch.setattr(m, "MATH_VERIFY_TIMEOUT_S", 2.0)
    result = []
    worker = threading.Thread(target=lambda: result.append(m.score("$\\boxed{9^{9^{9^{9}}}}$", "1", scorer="math_verify")))
    start = time.monotonic()
    worker.start()
    worker.join(30)
    assert result == [0.0]
    assert time.monotonic() - start < 15
    assert m.score("$\\boxed{1}$", "1", scorer="math_verify") == 1.0
