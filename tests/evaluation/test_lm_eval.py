"""The tre_math_local lm-eval task: its answer extraction and grading, and a real harness run on the tiny model."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation.evaluate import LM_EVAL_DIR, LM_EVAL_PYTHON, evaluate


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


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lm_eval_python() -> Path:
    """.venv-lmeval (lm-eval[math], antlr 4.11) built by the setup script; a no-op when it is up to date."""
    subprocess.run(["bash", str(REPO / "workflow" / "setup.sh"), "--lm-eval-math"], check=True, timeout=1800)
    return LM_EVAL_PYTHON


@pytest.mark.slow  # builds .venv-lmeval once (about 2 minutes), then ~30 s of harness
def test_minerva_math500_is_lm_evals_own_task_run_in_its_own_interpreter(run_dir, lm_eval_python):
    from evaluation.tasks import math_lighteval

    res = evaluate(run_dir, limit=3, lm_eval=True, lm_eval_task="minerva_math500", lm_eval_data=math_lighteval.FIXTURE)
    lm = res["lm_eval"]
    assert lm["task"] == "minerva_math500_local" and lm["python"] == str(lm_eval_python) and lm["n_docs"] == 3
    assert lm["num_fewshot"] == 4 and set(lm["metrics"]) == {"exact_match", "math_verify"}
    assert all(0.0 <= v <= 1.0 for v in lm["metrics"].values())
    assert json.loads((run_dir / "eval" / "2" / "scores.json").read_text())["lm_eval"] == lm
    # lm-eval's logged requests: our file's problems, in minerva's 4-shot prompt (its exemplars, its answer format)
    samples = [json.loads(line) for f in (run_dir / "eval" / "2" / "lm_eval").rglob("samples_*.jsonl") for line in f.open()]
    fixture = [json.loads(line) for line in math_lighteval.FIXTURE.open()][:3]
    assert [s["doc"]["problem"] for s in samples] == [r["problem"] for r in fixture]
    prompt = samples[0]["arguments"]["gen_args_0"]["arg_0"]
    assert prompt.count("Problem:\n") == 5 and prompt.endswith(fixture[0]["problem"] + "\n\nSolution:")
    assert "Final Answer: The final answer is" in prompt


def test_minerva_bad_input_is_one_line(run_dir, tmp_path, capsys):
    from evaluation.__main__ import main

    base = ["evaluate", str(run_dir), "--limit", "1", "--lm-eval"]
    cases = [
        (["--lm-eval-data", str(tmp_path / "x.jsonl")], "--lm-eval-python/--lm-eval-data: only with --lm-eval-task minerva_math500"),
        (["--lm-eval-task", "minerva_math500", "--lm-eval-python", str(tmp_path / "nope")],
         f"--lm-eval-python: {tmp_path / 'nope'} is not an executable interpreter; build .venv-lmeval with"),
        (["--lm-eval-task", "minerva_math500", "--lm-eval-python", sys.executable, "--lm-eval-data", str(tmp_path / "x.jsonl")],
         f"--lm-eval-data: no such file {str(tmp_path / 'x.jsonl')!r}"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exc:
            main(base + argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert not (run_dir / "eval").exists()  # refused before sampling: nothing written
