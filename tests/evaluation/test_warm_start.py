"""The warm start: demonstrations per task, a deterministic short SFT that lowers the loss, and clean errors."""
from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.files import read_parquet

from miniature import warm_start
from evaluation.tasks import countdown, hh, math_lighteval


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("warm_data")
    math_lighteval.prepare(root / "math", generated=True, train_size=48, test_size=1, seed=0)
    countdown.prepare(root / "countdown", generated=True, train_size=16, test_size=1, seed=0)
    hh.prepare(root / "hh", source=str(hh.FIXTURE), train_size=4, test_size=1)
    return root


def test_demonstrations_come_from_each_rows_task(data):
    pairs = warm_start.demonstrations([data / "math" / "train.parquet", data / "countdown" / "train.parquet"])
    assert len(pairs) == 64
    messages, response = pairs[0]
    assert messages[0]["role"] == "user" and messages[0]["content"].startswith("What is $")
    assert response == math_lighteval.generate(48, 1, seed=0)[0][0]["solution"]
    assert all(r.startswith("<think>") and r.endswith("</answer>") for _, r in pairs[48:])

    messages, response = warm_start.demonstrations([data / "hh" / "train.parquet"])[0]
    assert (messages, response) == ([{"role": "user", "content": "What is the opposite of 'generous'?"}],
                                    'Common opposites are "stingy", "selfish" or "mean".')


def test_plain_fraction_drops_the_box_from_that_share_of_math_demonstrations(data):
    paths = [data / "math" / "train.parquet"]
    boxed = warm_start.demonstrations(paths)
    mixed = warm_start.demonstrations(paths, plain_fraction=0.5, seed=3)
    assert mixed == warm_start.demonstrations(paths, plain_fraction=0.5, seed=3)  # deterministic given the seed
    assert [p for p, _ in mixed] == [p for p, _ in boxed]
    plain = [i for i, (_, r) in enumerate(mixed) if "\\boxed" not in r]
    assert 12 <= len(plain) <= 36
    for i in range(48):
        answer = math_lighteval.remove_boxed(math_lighteval.last_boxed_only_string(boxed[i][1]))
        if i in plain:  # the same worked line, the answer bare: a sound solution the scorer gives 0
            assert mixed[i][1] == boxed[i][1].replace(f"\\boxed{{{answer}}}", answer)
            assert math_lighteval.score(mixed[i][1], answer) == 0.0
        else:
            assert mixed[i][1] == boxed[i][1]


def test_plain_fraction_writes_the_result_into_that_share_of_countdown_answers(data):
    path = data / "countdown" / "train.parquet"
    rows = read_parquet(path, "data").to_pylist()
    mixed = warm_start.demonstrations([path], plain_fraction=0.5, seed=0)
    draws = random.Random(0)
    for row, (_, response) in zip(rows, mixed, strict=True):  # one draw per row, in order
        plain = draws.random() < 0.5
        assert response == countdown.demonstration(row, plain=plain)
        assert countdown.score(response, row["reward_model"]["ground_truth"]) == (0.0 if plain else 1.0)
    assert 4 <= sum(" = " in r.split("<answer>")[1] for _, r in mixed) <= 12


def test_cli_trains_deterministically_and_lowers_the_loss(tmp_path, data, tiny_model, capsys):
    argv = ["--model", str(tiny_model), "--data", str(data / "math" / "train.parquet"), "--steps", "30",
            "--batch-size", "8", "--lr", "3e-3", "--seed", "1", "--threads", "1"]
    assert warm_start.main([*argv, "--out", str(tmp_path / "a")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["examples"] == 48 and summary["steps"] == 30 and summary["threads"] == 1
    record = json.loads((tmp_path / "a" / warm_start.RECORD).read_text())
    assert len(record["losses"]) == 30 and record["losses"][-1] < 0.5 * record["losses"][0]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert (tmp_path / "a" / name).is_file()
    assert warm_start.main([*argv, "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    (tmp_path / "b" / "stale.txt").write_text("left by the earlier warm start")
    assert warm_start.main([*argv, "--out", str(tmp_path / "b")]) == 0  # an earlier warm start's output is replaced
    assert not (tmp_path / "b" / "stale.txt").exists()
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_bad_input_is_one_line_and_keeps_the_previous_output(tmp_path, data, tiny_model, capsys):
    out = tmp_path / "warm"  # an earlier warm start's output: replaced by a good run, kept by a bad one
    out.mkdir()
    (out / "keep.txt").write_text("previous")
    (out / warm_start.RECORD).write_text("{}")
    stale_hh = tmp_path / "stale_hh.parquet"  # made before HH rows carried their preferred reply
    rows = read_parquet(data / "hh" / "train.parquet", "data").to_pylist()
    pq.write_table(pa.Table.from_pylist([{**r, "extra_info": {"split": "train", "index": 0}} for r in rows]), stale_hh)
    cases = [
        (["--model", str(tiny_model), "--data", str(stale_hh)],
         f"error: data: row 0 of {stale_hh} has no hh demonstration (KeyError: 'chosen'); "
         "make the file with `python -m evaluation.tasks prepare hh`\n"),
        (["--model", str(tmp_path), "--data", str(data / "math" / "train.parquet")],
         f"error: model: {tmp_path} is not a model directory (no config.json)\n"),
        (["--model", str(tiny_model), "--data", str(tmp_path / "nope.parquet")],
         f"error: data: no such file {str(tmp_path / 'nope.parquet')!r}\n"),
    ]
    for argv, err in cases:
        assert warm_start.main([*argv, "--out", str(out), "--steps", "1"]) == 2
        assert capsys.readouterr().err == err
    assert (out / "keep.txt").read_text() == "previous"
    for argv in (["--steps", "0"], ["--lr", "-1"], ["--warmup", "1.5"], ["--plain-fraction", "1"]):
        with pytest.raises(SystemExit) as exc:
            warm_start.main(["--model", "m", "--data", "d", "--out", "o", *argv])
        assert exc.value.code == 2
