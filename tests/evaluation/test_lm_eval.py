"""The tre_math_local lm-eval task: its answer extraction and grading, and a real harness run on the tiny model."""

from __future__ import annotations

import importlib.util
import json

import pytest

from evaluation.evaluate import LM_EVAL_DIR, evaluate


def _utils():
    spec = importlib.util.spec_from_file_location("tre_lm_eval_utils", LM_EVAL_DIR / "utils.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_minerva_style_extraction_and_grading():
    u = _utils()
    doc = {"problem": "p", "solution": "\\boxed{\\frac{3}{4}}", "answer": "\\frac{3}{4}"}
    minerva = "So it is $0.75$.\nFinal Answer: The final answer is $0.75$. I hope it is correct."
    assert u.extract_answer(minerva) == "0.75"
    assert u.process_results(doc, [minerva]) == {"exact_match": 0, "math_verify": 1}  # string match misses 0.75
    assert u.process_results(doc, ["thus \\boxed{\\frac34}"]) == {"exact_match": 1, "math_verify": 1}
    assert u.process_results(doc, ["no idea"]) == {"exact_match": 0, "math_verify": 0}
    assert u.doc_to_text(doc) == "Problem:\np\n\nSolution:"


@pytest.mark.slow  # ~20-25 s: lm-eval import + harness run on 2 cores
def test_evaluate_records_lm_eval_next_to_ours(run_dir):
    res = evaluate(run_dir, limit=2, lm_eval=True)
    lm = res["lm_eval"]
    assert lm["task"] == "tre_math_local" and lm["n_docs"] == 2 and lm["decoding"] == "greedy" and lm["max_gen_toks"] == 8
    # a random tiny model solves nothing, under either harness
    assert lm["metrics"] == {"exact_match": 0.0, "math_verify": 0.0} and res["metrics"] == {"mean@1": 0.0, "pass@1": 0.0}
    saved = json.loads((run_dir / "eval" / "2" / "scores.json").read_text())
    assert saved["lm_eval"]["metrics"] == lm["metrics"]
    docs = (run_dir / "eval" / "2" / "lm_eval_docs.jsonl").read_text().splitlines()
    assert json.loads(docs[1]) == {"problem": "What is $1 + 1$?", "solution": "\\boxed{2}", "answer": "2"}
