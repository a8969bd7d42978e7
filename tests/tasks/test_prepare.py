"""Task data: registry, prepare() on the shipped fixtures, the CLI, and the verl RLHFDataset round trip."""

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from evaluation import tasks
from evaluation.tasks import common, countdown, hh, math_lighteval
from evaluation.tasks.__main__ import main


def test_registry_and_constants():
    assert list(tasks.TASKS) == ["math", "countdown", "hh"]
    assert tasks.get_task("countdown") is countdown
    with pytest.raises(ValueError, match=r"^task: must be one of math, countdown, hh, got 'x'$"):
        tasks.get_task("x")
    assert [(t.NAME, t.DATA_SOURCE, t.VAL_METRIC, t.MAX_RESPONSE_LENGTH) for t in tasks.TASKS.values()] == [
        ("math", "DigitalLearningGmbH/MATH-lighteval", "val-core/DigitalLearningGmbH/MATH-lighteval/reward/mean@1", 8192),
        ("countdown", "countdown", "val-core/countdown/reward/mean@1", 512),
        ("hh", "hh", "val-core/hh/reward/mean@1", 1024),
    ]


def test_compute_score_routes_like_the_authors():
    gt = {"target": 3, "numbers": [1, 2]}
    assert tasks.compute_score("countdown", "<think></think><answer>1 + 2</answer>", gt) == 1.0
    assert tasks.compute_score("my_countdown_v2", "<think></think><answer>1 + 2</answer>", gt) == 1.0
    for source in tasks.MATH_DATA_SOURCES:
        assert tasks.compute_score(source, "so \\boxed{\\dfrac12}", "\\frac{1}{2}") == 1.0
    assert tasks.compute_score("lighteval/MATH", "\\boxed{0.5}", "\\frac{1}{2}", None, math_scorer="math_verify") == 1.0
    with pytest.raises(ValueError, match=r"^data_source: must be one of countdown, hh, DigitalLearningGmbH/MATH-lighteval"):
        tasks.compute_score("openai/gsm8k", "1", "1")


def read(path):
    return pq.read_table(path).to_pylist()


def test_prepare_math_fixture(tmp_path):
    result = math_lighteval.prepare(tmp_path, source=str(math_lighteval.FIXTURE), train_size=20, test_size=10)
    assert result["train_size"] == 20 and result["test_size"] == 10
    train, test = read(tmp_path / "train.parquet"), read(tmp_path / "test.parquet")
    assert len(train) == 20 and len(test) == 10
    assert train[0] == {
        "data_source": "DigitalLearningGmbH/MATH-lighteval",
        "prompt": [{"role": "user", "content": "Solve for $x$: $3x + 7 = 22$. Let's think step by step and output "
                                               "the final answer within \\boxed{}."}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": "5"},
        "extra_info": {"split": "train", "index": 0, "solution": "Subtracting 7 from both sides gives $3x = 15$, and "
                                                               "dividing by 3 gives $x = \\boxed{5}$."},
        "level": "Level 1",
        "type": "Algebra",
    }
    assert test[0]["extra_info"]["split"] == "test" and test[0]["extra_info"]["index"] == 0
    assert test[-1]["reward_model"]["ground_truth"] == "\\left(2, -3\\right)"  # the last box of the solution
    answers = [row["reward_model"]["ground_truth"] for row in train + test]
    # Every fixture answer is graded correct against itself and wrong against its neighbour, by both scorers.
    for i, gold in enumerate(answers):
        assert math_lighteval.score(f"\\boxed{{{gold}}}", gold) == 1.0
        assert math_lighteval.score(f"\\boxed{{{gold}}}", answers[i - 1]) == 0.0
    # The reference solutions themselves earn full reward under both scorers.
    solutions = [record["solution"] for record in common.read_records(math_lighteval.FIXTURE)]
    for solution, gold in zip(solutions, answers):
        assert math_lighteval.score(solution, gold, scorer="hendrycks") == 1.0
        assert math_lighteval.score(solution, gold, scorer="math_verify") == 1.0


def test_prepare_math_directory_keeps_splits(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    lines = math_lighteval.FIXTURE.read_text().splitlines()
    (src / "train.jsonl").write_text("\n".join(lines[:25]) + "\n")
    (src / "test.jsonl").write_text("\n".join(lines[25:]) + "\n")
    result = math_lighteval.prepare(tmp_path / "out", source=str(src), train_size=25, test_size=5)
    assert (result["train_size"], result["test_size"]) == (25, 5)
    assert read(tmp_path / "out" / "test.parquet")[0]["reward_model"]["ground_truth"] == "\\tfrac{1}{3}"


def test_prepare_countdown_generated_and_fixture(tmp_path):
    countdown.prepare(tmp_path / "gen", generated=True, seed=3, train_size=6, test_size=4)
    generated = countdown.generate(10, seed=3)
    train = read(tmp_path / "gen" / "train.parquet")
    test = read(tmp_path / "gen" / "test.parquet")
    assert [row["reward_model"]["ground_truth"] for row in train + test] == [
        {"target": t["target"], "numbers": t["nums"]} for t in generated
    ]
    assert train[0]["prompt"] == [{"role": "user", "content": countdown.make_prompt(generated[0]["nums"], generated[0]["target"])}]
    assert (train[0]["ability"], train[0]["data_source"]) == ("math", "countdown")
    assert train[0]["reward_model"]["style"] == "rule"

    countdown.prepare(tmp_path / "fx", source=str(countdown.FIXTURE), train_size=48, test_size=16)
    fixture = [json.loads(line) for line in countdown.FIXTURE.read_text().splitlines()]
    test = read(tmp_path / "fx" / "test.parquet")
    assert test[0]["reward_model"]["ground_truth"] == {"target": fixture[48]["target"], "numbers": fixture[48]["nums"]}
    with pytest.raises(ValueError, match="^source: give either a source or generated=True"):
        countdown.prepare(tmp_path, source="x.jsonl", generated=True)


def test_math_arithmetic_generator_golden_and_self_consistent(tmp_path):
    problems = math_lighteval.arithmetic_problems()
    assert len(problems) == 169 + 169 + 91 and len({p["problem"] for p in problems}) == len(problems)
    assert problems[0] == {"problem": "What is $0 \\times 0$?", "level": "Level 1", "type": "Arithmetic",
                           "solution": "$0 \\times 0 = \\boxed{0}$."}
    for record in problems:
        a, op, b = record["problem"][len("What is $"):-len("$?")].split()
        value = {"+": int(a) + int(b), "-": int(a) - int(b), "\\times": int(a) * int(b)}[op]
        assert 0 <= int(a) <= 12 and 0 <= int(b) <= 12 and value >= 0
        assert math_lighteval.extract_boxed_answer(record["solution"]) == str(value)
    train, test = math_lighteval.generate(200, 128, seed=0)
    assert (train, test) == math_lighteval.generate(200, 128, seed=0) != math_lighteval.generate(200, 128, seed=1)
    assert len(train) == 200 and len({r["problem"] for r in test}) == 128  # a test problem is never repeated
    result = math_lighteval.prepare(tmp_path, generated=True, train_size=30, test_size=10, seed=3)
    assert result["source"] == "arithmetic generator(seed=3, max_operand=12)"
    rows = read(tmp_path / "train.parquet") + read(tmp_path / "test.parquet")
    train, test = math_lighteval.generate(30, 10, seed=3)
    assert [r["extra_info"]["solution"] for r in rows] == [r["solution"] for r in train + test]
    for row in rows:  # the demonstration is what the warm start teaches, and it earns full reward
        demo = math_lighteval.demonstration(row)
        assert tasks.compute_score(row["data_source"], demo, row["reward_model"]["ground_truth"]) == 1.0
    with pytest.raises(ValueError, match="source: give either"):
        math_lighteval.prepare(tmp_path, source="x.jsonl", generated=True)
    with pytest.raises(ValueError, match="max_operand: must be >= 1"):
        math_lighteval.arithmetic_problems(0)
    with pytest.raises(ValueError, match="0 <= test <= 429"):
        math_lighteval.generate(1, 430, seed=0)


def test_cli_max_operand_makes_the_miniatures_126_problems(tmp_path, capsys):
    small = math_lighteval.arithmetic_problems(6)
    assert len(small) == 49 + 49 + 28
    assert main(["prepare", "math", "--generate", "--max-operand", "6", "--train-size", "40", "--test-size", "126",
                 "--out", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["source"] == "arithmetic generator(seed=0, max_operand=6)"
    test = read(tmp_path / "test.parquet")
    assert sorted(r["extra_info"]["solution"] for r in test) == sorted(p["solution"] for p in small)
    for argv in (["prepare", "math", "--out", "x", "--max-operand", "6"],
                 ["prepare", "countdown", "--out", "x", "--generate", "--max-operand", "6"],
                 ["prepare", "math", "--out", "x", "--generate", "--max-operand", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    assert "--max-operand: only with math --generate" in capsys.readouterr().err


def test_countdown_demonstration_is_a_full_reward_answer_in_the_authors_format(tmp_path):
    countdown.prepare(tmp_path, generated=True, train_size=20, test_size=1, seed=0)
    for row in read(tmp_path / "train.parquet"):
        demo = countdown.demonstration(row)
        assert demo.startswith("<think>") and "</think> <answer>" in demo and demo.endswith("</answer>")
        assert tasks.compute_score(row["data_source"], demo, row["reward_model"]["ground_truth"]) == 1.0
    row = {"reward_model": {"ground_truth": {"target": 1000, "numbers": [1, 2]}}}
    with pytest.raises(ValueError, match="no expression over \\[1, 2\\] reaches 1000"):
        countdown.demonstration(row)


def test_countdown_miniature_options_train_from_test_restricted_demonstrations_and_slips(tmp_path, capsys):
    argv = ["prepare", "countdown", "--generate", "--numbers", "3", "--max-number", "9", "--max-target", "50",
            "--ops", "+*", "--train-from-test", "--train-size", "40", "--test-size", "4", "--out", str(tmp_path)]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["source"] == (
        "generator(seed=0, numbers=3, max_number=9, max_target=50, ops=+*, train_from_test=True)")
    train, test = read(tmp_path / "train.parquet"), read(tmp_path / "test.parquet")
    assert [row["reward_model"]["ground_truth"] for row in test] == [
        {"target": 47, "numbers": [7, 5, 8]}, {"target": 11, "numbers": [5, 2, 4]},
        {"target": 16, "numbers": [3, 4, 1]}, {"target": 12, "numbers": [1, 4, 3]}]
    truths = [row["reward_model"]["ground_truth"] for row in train]
    assert len(truths) == 40 and all(t in truths for t in [row["reward_model"]["ground_truth"] for row in test])
    assert all(t in [row["reward_model"]["ground_truth"] for row in test] for t in truths)  # only the test's tasks
    assert test[0]["extra_info"] == {"split": "test", "index": 0, "ops": "+*"}
    # the demonstration uses the generator's operators; its slip writes the result into the answer, worth 0
    assert countdown.demonstration(test[2]) == "<think>(3 + 1) * 4 = 16</think> <answer>(3 + 1) * 4</answer>"
    slip = countdown.demonstration(test[2], plain=True)
    assert slip == "<think>(3 + 1) * 4 = 16</think> <answer>(3 + 1) * 4 = 16</answer>"
    assert countdown.score(countdown.demonstration(test[2]), test[2]["reward_model"]["ground_truth"]) == 1.0
    assert countdown.score(slip, test[2]["reward_model"]["ground_truth"]) == 0.0
    ones = {"reward_model": {"ground_truth": {"target": 1, "numbers": [1, 1, 1]}}}
    assert countdown.demonstration(ones) == "<think>(1 + 1) - 1 = 1</think> <answer>(1 + 1) - 1</answer>"
    assert countdown.demonstration({**ones, "extra_info": {"ops": "+*"}}) == (
        "<think>(1 * 1) * 1 = 1</think> <answer>(1 * 1) * 1</answer>")
    for bad, err in ((["--numbers", "1"], "--numbers: must be an integer >= 2"),
                     (["--ops", "+"], "--ops: only with countdown --generate"),
                     (["--train-from-test"], "--train-from-test: only with countdown --generate")):
        with pytest.raises(SystemExit) as exit_info:
            main(["prepare", "countdown" if bad[0] == "--numbers" else "math", "--generate", "--out", "x", *bad])
        assert exit_info.value.code == 2 and err in capsys.readouterr().err
    assert main(["prepare", "countdown", "--generate", "--ops", "+%", "--out", str(tmp_path / "y")]) == 2
    assert capsys.readouterr().err == "error: countdown: ops: must be one or more of the distinct characters +-*/, got '+%'\n"
    with pytest.raises(ValueError, match="^ops: only for generated tasks"):
        countdown.prepare(tmp_path / "z", source=str(countdown.FIXTURE), ops="+")


def test_prepare_hh_shuffles_like_datasets(tmp_path):
    import datasets

    hh.prepare(tmp_path, source=str(hh.FIXTURE), train_size=30, test_size=10)
    records = common.read_records(hh.FIXTURE)
    expected = [r["chosen"][0]["content"] for r in datasets.Dataset.from_list(records).shuffle(seed=42)]
    rows = read(tmp_path / "train.parquet") + read(tmp_path / "test.parquet")
    assert [row["prompt"][0]["content"] for row in rows] == expected
    assert rows[0]["reward_model"] == {"style": "model", "ground_truth": {"prompt": expected[0]}}
    assert (rows[0]["ability"], rows[0]["data_source"]) == ("alignment", "hh")
    chosen = {r["chosen"][0]["content"]: r["chosen"][1]["content"] for r in records}
    assert rows[30]["extra_info"] == {"split": "test", "index": 0, "chosen": chosen[expected[30]]}


def test_hh_demonstration_is_the_preferred_reply_of_the_row(tmp_path):
    hh.prepare(tmp_path, source=str(hh.FIXTURE), train_size=2, test_size=1)
    row = read(tmp_path / "train.parquet")[0]
    assert row["prompt"][0]["content"] == "What is the opposite of 'generous'?"
    assert hh.demonstration(row) == 'Common opposites are "stingy", "selfish" or "mean".'
    assert "chosen" not in row["reward_model"]["ground_truth"]  # the reward model never sees the reference reply
    with pytest.raises(ValueError, match="^plain: HH replies have no format to slip"):
        hh.demonstration(row, plain=True)


def test_bad_sources_give_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"^test-size: asked for 20 rows from offset 30, but the source has 40 rows$"):
        hh.prepare(tmp_path, source=str(hh.FIXTURE), train_size=30, test_size=20)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "1+1?", "solution": "2"}\n')
    with pytest.raises(ValueError, match=r"^solution: row 0 of train has no \\boxed\{\} answer$"):
        math_lighteval.prepare(tmp_path / "o", source=str(bad), train_size=1, test_size=0)
    with pytest.raises(FileNotFoundError, match="^source: no such file"):
        hh.prepare(tmp_path, source=str(tmp_path / "missing.parquet"))
    bad.write_text('{"chosen": [{"role": "assistant", "content": "hi"}]}\n')
    with pytest.raises(ValueError, match="^chosen: row 0 of train must start with a user message"):
        hh.prepare(tmp_path / "o", source=str(bad), train_size=1, test_size=0)
    bad.write_text('{"chosen": [{"role": "user", "content": "hi"}]}\n')
    with pytest.raises(ValueError, match="^chosen: row 0 of train needs an assistant reply with string content"):
        hh.prepare(tmp_path / "o", source=str(bad), train_size=1, test_size=0)


def test_hub_unreachable_is_data_unavailable(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(common, "hub_reachable", lambda timeout_s=5.0: False)
    with pytest.raises(common.DataUnavailable, match=r"^math: cannot reach the Hugging Face hub to load "
                                                     r"'DigitalLearningGmbH/MATH-lighteval'; .*--source PATH"):
        math_lighteval.prepare("unused")


def test_cli_prepare_and_user_errors(tmp_path, capsys, monkeypatch):
    assert main(["prepare", "hh", "--out", str(tmp_path / "hh"), "--source", str(hh.FIXTURE),
                 "--train-size", "30", "--test-size", "10"]) == 0
    assert json.loads(capsys.readouterr().out)["train_size"] == 30

    assert main(["prepare", "countdown", "--out", str(tmp_path), "--source", str(hh.FIXTURE),
                 "--train-size", "50"]) == 2
    assert capsys.readouterr().err == "error: countdown: train-size: asked for 50 rows from offset 0, but the source has 40 rows\n"

    monkeypatch.setattr(common, "hub_reachable", lambda timeout_s=5.0: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    assert main(["prepare", "countdown", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--generate" in err and str(countdown.FIXTURE) in err

    for argv in (["prepare", "nope", "--out", "x"], ["prepare", "hh", "--out", "x", "--generate"],
                 ["prepare", "math", "--out", "x", "--train-size", "-3"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2


def test_cli_offline_subprocess_exits_2_with_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run([sys.executable, "-m", "evaluation.tasks", "prepare", "math", "--out", str(tmp_path / "m")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: math: cannot load 'DigitalLearningGmbH/MATH-lighteval'")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_parquet_round_trips_through_verl_rlhf_dataset(tmp_path):
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn

    from miniature.tiny_model import build_tokenizer

    tokenizer = build_tokenizer(tmp_path / "tok", vocab_size=8192)
    countdown.prepare(tmp_path / "cd", source=str(countdown.FIXTURE), train_size=4, test_size=2)
    math_lighteval.prepare(tmp_path / "math", source=str(math_lighteval.FIXTURE), train_size=3, test_size=1)
    config = OmegaConf.create({"max_prompt_length": 256, "truncation": "error", "filter_overlong_prompts": True,
                               "filter_overlong_prompts_workers": 1, "cache_dir": str(tmp_path / "cache")})
    fixture = [json.loads(line) for line in countdown.FIXTURE.read_text().splitlines()]

    dataset = RLHFDataset(str(tmp_path / "cd" / "train.parquet"), tokenizer, config)
    assert len(dataset) == 4
    item = dataset[1]
    assert item["data_source"] == "countdown"
    ground_truth = item["reward_model"]["ground_truth"]
    assert (ground_truth["target"], list(ground_truth["numbers"])) == (fixture[1]["target"], fixture[1]["nums"])
    assert item["extra_info"] == {"split": "train", "index": 1} and item["index"] == 1
    prompt_ids = item["input_ids"][item["attention_mask"].bool()].tolist()
    expected = tokenizer.apply_chat_template(
        [{"role": "user", "content": countdown.make_prompt(fixture[1]["nums"], fixture[1]["target"])}],
        add_generation_prompt=True, tokenize=False,
    )
    assert tokenizer.decode(prompt_ids) == expected
    assert item["input_ids"].shape == (256,)

    batch = collate_fn([dataset[i] for i in range(4)])
    assert batch["input_ids"].shape == (4, 256)
    assert list(batch["data_source"]) == ["countdown"] * 4

    math_item = RLHFDataset(str(tmp_path / "math" / "test.parquet"), tokenizer, config)[0]
    assert math_item["reward_model"] == {"style": "rule", "ground_truth": "65^\\circ"}
    assert {k: math_item["extra_info"][k] for k in ("split", "index")} == {"split": "test", "index": 0}
    assert math_item["extra_info"]["solution"].endswith("\\boxed{65^\\circ}$.")


def test_verl_loads_compute_score_by_file_path():
    from omegaconf import OmegaConf
    from verl.trainer.ppo.reward import get_custom_reward_fn

    config = OmegaConf.create({"custom_reward_function": {
        "path": tasks.__file__, "name": "compute_score", "reward_kwargs": {"math_scorer": "math_verify"}}})
    fn = get_custom_reward_fn(config)
    # The keyword names verl 0.4.1's naive reward manager uses.
    assert fn(data_source="DigitalLearningGmbH/MATH-lighteval", solution_str="\\boxed{0.75}",
              ground_truth="\\frac{3}{4}", extra_info={"split": "test", "index": 0}) == 1.0
    assert fn(data_source="countdown", solution_str="<think></think><answer>3 - 1</answer>",
              ground_truth={"target": 2, "numbers": [1, 3]}, extra_info=None) == 1.0
