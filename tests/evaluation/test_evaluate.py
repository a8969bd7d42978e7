"""Checkpoint evaluation: pass@k estimator, mean@n, sampling + scoring plumbing, files written, CLI errors."""

from __future__ import annotations

import json
import math

import pytest

from evaluation.__main__ import main
from evaluation.evaluate import EvalError, default_scorer, evaluate, ks_for, lm_eval_docs, load_examples, pass_at_k, summarise


def _chen(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def test_pass_at_k_golden():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4, abs=1e-15)
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7, abs=1e-15)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 0, 3) == 0.0 and pass_at_k(5, 5, 3) == 1.0 and pass_at_k(4, 1, 4) == 1.0
    for n, c, k in [(10, 3, 4), (16, 1, 8), (200, 7, 50)]:
        assert pass_at_k(n, c, k) == pytest.approx(_chen(n, c, k), rel=1e-12)
    with pytest.raises(ValueError, match="need 0 <= c <= n and 1 <= k <= n"):
        pass_at_k(3, 4, 1)


def test_summarise_golden():
    assert ks_for(1) == [1] and ks_for(4) == [1, 2, 4] and ks_for(6) == [1, 2, 4, 6]
    got = summarise([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.1]], binary=True)
    assert got == pytest.approx({"mean@4": 0.2625, "pass@1": 0.25, "pass@2": (1 - 1 / 6) / 2, "pass@4": 0.5}, abs=1e-15)
    assert summarise([[3.5], [4.5]], binary=False) == {"mean@1": 4.0}  # HH: mean reward only


def test_default_scorers_route_through_evaluation_tasks():
    math_score = default_scorer("math")
    assert math_score(["DigitalLearningGmbH/MATH-lighteval"] * 2, ["so $x = \\boxed{5}$", "\\boxed{6}"], ["5", "5"], [None, None]) == [1.0, 0.0]
    cd = default_scorer("countdown")
    gt = {"target": 3, "numbers": [1, 2]}
    responses = ["<think>add</think> <answer>1 + 2</answer>", "<think>sub</think> <answer>2 - 1</answer>"]
    assert cd(["countdown"] * 2, responses, [gt, gt], [None, None]) == [1.0, 0.0]


def test_evaluate_writes_samples_and_scores(run_dir):
    # Injected scorer: 1.0 for an even number of characters, so pass@k can be re-derived from the samples.
    scorer = lambda ds, rs, gts, eis: [float(len(r) % 2 == 0) for r in rs]  # noqa: E731
    res = evaluate(run_dir, n=4, lm_eval=False, scorer=scorer, seed=3)
    assert (res["step"], res["n"], res["num_prompts"], res["split"]) == (2, 4, 3, "test")
    assert res["sampling"] == {"temperature": 1.0, "top_p": 0.7, "top_k": 0, "max_new_tokens": 8, "seed": 3}
    samples = [json.loads(line) for line in (run_dir / "eval" / "2" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 12 and [s["index"] for s in samples] == [0] * 4 + [1] * 4 + [2] * 4
    assert all(s["score"] == float(len(s["response"]) % 2 == 0) for s in samples)
    assert samples[4]["prompt"][0]["content"].startswith("What is $1 + 1$?") and samples[4]["ground_truth"] == "2"
    per_prompt = [[s["score"] for s in samples if s["index"] == i] for i in range(3)]
    assert res["metrics"] == summarise(per_prompt, binary=True)
    assert set(res["metrics"]) == {"mean@4", "pass@1", "pass@2", "pass@4"}
    assert json.loads((run_dir / "eval" / "2" / "scores.json").read_text())["metrics"] == res["metrics"]
    again = evaluate(run_dir, n=4, lm_eval=False, scorer=scorer, seed=3)
    assert [json.loads(x)["response"] for x in (run_dir / "eval" / "2" / "samples.jsonl").read_text().splitlines()] == \
        [s["response"] for s in samples] and again["metrics"] == res["metrics"]


def test_evaluation_samples_without_importing_scikit_learn_or_scipy(run_dir):
    # transformers imports them (2-3 CPU s) unless told they are absent (common.imports)
    import subprocess
    import sys

    code = ("import sys\nfrom evaluation.evaluate import evaluate\n"
            f"evaluate({str(run_dir)!r}, n=1, lm_eval=False, scorer=lambda ds, rs, gts, eis: [0.0] * len(rs))\n"
            "print({m.split('.')[0] for m in sys.modules} & {'sklearn', 'scipy'}, 'transformers.generation.utils' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "set() True"


def test_step_zero_evaluates_the_initial_model_with_the_task_scorer(run_dir, tiny_model):
    res = evaluate(run_dir, step=0, limit=2, lm_eval=False)
    assert res["model"] == str(tiny_model) and res["num_prompts"] == 2 and set(res["metrics"]) == {"mean@1", "pass@1"}
    assert (run_dir / "eval" / "0" / "scores.json").is_file()


def test_lm_eval_docs_strip_the_instruction(run_dir):
    docs = lm_eval_docs(load_examples(run_dir.parents[4] / "data" / "math" / "test.parquet"))
    assert docs[0] == {"problem": "Solve for $x$: $3x + 7 = 22$.", "solution": "\\boxed{5}", "answer": "5"}


def test_bad_inputs_are_one_clear_line(run_dir, tmp_path, capsys):
    with pytest.raises(EvalError, match=r"^--step: must be 0 or one of 2, got 7$"):
        evaluate(run_dir, step=7, lm_eval=False)
    with pytest.raises(EvalError, match=r"^--n: must be >= 1, got 0$"):
        evaluate(run_dir, n=0)
    with pytest.raises(EvalError, match=r"^--lm-eval: the lm-eval cross-check is for task math"):
        cfg = json.loads((run_dir / "config.json").read_text())
        (run_dir / "config.json").write_text(json.dumps({**cfg, "task": "countdown"}))
        evaluate(run_dir, lm_eval=True, limit=1, scorer=lambda *a: [0.0])
    for argv, msg in [([str(tmp_path)], f"RUN_DIR: {tmp_path} is not a run directory (no config.json)"),
                      ([str(run_dir), "--n", "0"], "argument --n: must be an integer >= 1, got '0'"),
                      ([str(run_dir), "--data", str(tmp_path / "x.parquet")], f"data: no such file '{tmp_path / 'x.parquet'}'")]:
        with pytest.raises(SystemExit) as e:
            main(["evaluate", *argv])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.strip().splitlines()[-1].endswith(msg) and "Traceback" not in err


def test_hh_is_scored_in_one_batch_by_the_reward_model(run_dir, monkeypatch):
    import evaluation.tasks.hh as hh

    calls = []

    def fake_rewards(prompts, responses, **kw):
        calls.append(len(responses))
        return [float(len(r)) for r in responses]

    monkeypatch.setattr(hh, "request_rewards", fake_rewards)
    cfg = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**cfg, "task": "hh"}))
    gts = [{"prompt": "p0"}, {"prompt": "p1"}]
    scores = default_scorer("hh")(["hh", "hh"], ["abc", "de"], gts, [None, None])
    assert scores == [3.0, 2.0] and calls == [2]
    from evaluation import evaluate as ev

    monkeypatch.setattr(ev, "load_examples", lambda path, limit: [ev.Example([{"role": "user", "content": "hi"}], g, "hh") for g in gts])
    res = evaluate(run_dir, n=2)
    samples = [json.loads(x) for x in (run_dir / "eval" / "2" / "samples.jsonl").read_text().splitlines()]
    assert calls[-1] == 4 and set(res["metrics"]) == {"mean@2"} and res["lm_eval"] is None
    assert res["metrics"]["mean@2"] == pytest.approx(sum(len(s["response"]) for s in samples) / 4)
