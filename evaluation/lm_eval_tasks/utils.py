"""Functions of the tre_math_local lm-eval task: minerva-style prompt and answer extraction, our MATH graders."""

from __future__ import annotations

import re
from typing import Any

from evaluation.tasks.math_lighteval import extract_boxed_answer, is_equiv, score_math_verify

# Minerva's answer convention: "Final Answer: The final answer is X. I hope it is correct."
_FINAL_ANSWER = re.compile(r"Final Answer: The final answer is(.*?)\. I hope it is correct\.", re.DOTALL)


def doc_to_text(doc: dict[str, Any]) -> str:
    """Minerva's zero-shot prompt."""
    return "Problem:\n" + doc["problem"] + "\n\nSolution:"


def _answer(doc: dict[str, Any]) -> dict[str, Any]:
    answer = doc.get("answer") or extract_boxed_answer(doc["solution"]) or ""
    return {"problem": doc["problem"], "solution": doc["solution"], "answer": str(answer)}


def process_docs(dataset):
    """Keep problem/solution and add the reference answer (the `answer` field, else the solution's last \\boxed{})."""
    return dataset.map(_answer, remove_columns=[c for c in dataset.column_names if c not in ("problem", "solution", "answer")])


def extract_answer(text: str) -> str | None:
    """The minerva final answer (without $...$), else the last \\boxed{} content, else None."""
    m = _FINAL_ANSWER.search(text)
    if m:
        return m.group(1).strip().strip("$").strip()
    try:
        return extract_boxed_answer(text)
    except ValueError:
        return None


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, int]:
    """exact_match: Hendrycks-normalised string match of the extracted answer; math_verify: symbolic equivalence."""
    candidate = results[0]
    answer = extract_answer(candidate)
    exact = int(answer is not None and is_equiv(answer, doc["answer"]))
    verified = int(score_math_verify(candidate if answer is None else "\\boxed{" + answer + "}", doc["answer"]) == 1.0)
    return {"exact_match": exact, "math_verify": verified}
