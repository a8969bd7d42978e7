"""Tests for evaluation.reward_model.train: presets, data loading, and a real TRL training run on the tiny model."""

from __future__ import annotations

import json
import math

import pytest

from evaluation.reward_model import train as rmt
from evaluation.reward_model.__main__ import main


def test_presets_reproduce_the_authors_settings():
    k15 = rmt.training_kwargs(rmt.PRESETS["1.5b"], "out", world_size=8)
    assert {k: k15[k] for k in ("learning_rate", "num_train_epochs", "warmup_ratio", "per_device_train_batch_size",
                                 "gradient_accumulation_steps", "bf16", "gradient_checkpointing",
                                 "center_rewards_coefficient", "max_length")} == {
        "learning_rate": 1e-5, "num_train_epochs": 3, "warmup_ratio": 0.1, "per_device_train_batch_size": 8,
        "gradient_accumulation_steps": 8, "bf16": True, "gradient_checkpointing": False,
        "center_rewards_coefficient": 0.01, "max_length": None}
    assert "model_init_kwargs" not in k15  # fp32 weights under bf16 autocast
    assert "deepspeed" not in k15

    k7 = rmt.training_kwargs(rmt.PRESETS["7b"], "out", world_size=8, deepspeed_config="ds.json")
    assert (k7["per_device_train_batch_size"], k7["gradient_accumulation_steps"]) == (1, 64)
    assert k7["gradient_checkpointing"] is True
    assert k7["gradient_checkpointing_kwargs"] == {"use_reentrant": False}
    assert k7["deepspeed"] == "ds.json"
    assert k7["model_init_kwargs"] == {"dtype": "bfloat16"}
    assert (k7["learning_rate"], k7["num_train_epochs"], k7["warmup_ratio"]) == (1e-5, 3, 0.1)


def test_effective_batch_is_kept_across_world_sizes():
    p15, p7 = rmt.PRESETS["1.5b"], rmt.PRESETS["7b"]
    assert [rmt.grad_accumulation(p15, w) for w in (1, 2, 4, 8)] == [64, 32, 16, 8]
    assert [rmt.grad_accumulation(p7, w) for w in (1, 8, 16)] == [512, 64, 32]
    assert rmt.grad_accumulation(rmt.PRESETS["tiny"], 1) == 1
    with pytest.raises(ValueError, match="effective batch 512 is not divisible by per-device batch 8 x 3 processes"):
        rmt.grad_accumulation(p15, 3)


def test_deepspeed_zero3_config():
    cfg = rmt.DEEPSPEED_ZERO3
    assert cfg["zero_optimization"]["stage"] == 3
    assert cfg["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert cfg["bf16"] == {"enabled": "auto"}
    assert json.loads(json.dumps(cfg)) == cfg


def test_load_preferences_local_and_errors(tmp_path, prefs_path, monkeypatch):
    ds = rmt.load_preferences(str(prefs_path))
    assert ds.column_names == ["chosen", "rejected"] and len(ds) == 48

    h4 = tmp_path / "h4.jsonl"  # a text prompt beside full chats: the prompt column is dropped
    h4.write_text(json.dumps({"prompt": "hi", "chosen": [{"role": "user", "content": "hi"}],
                              "rejected": [{"role": "user", "content": "hi"}]}) + "\n")
    assert rmt.load_preferences(str(h4)).column_names == ["chosen", "rejected"]

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"chosen": "a"}) + "\n")
    with pytest.raises(ValueError, match=r"missing field\(s\) rejected"):
        rmt.load_preferences(str(bad))
    with pytest.raises(ValueError, match="no such file"):
        rmt.load_preferences(str(tmp_path / "nope.jsonl"))
    csv = tmp_path / "d.csv"
    csv.write_text("x\n")
    with pytest.raises(ValueError, match="unsupported file type '.csv'"):
        rmt.load_preferences(str(csv))

    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match=r"could not load split 'train' from the Hugging Face hub \(ConnectionError\); "
                                         r"pass a local .jsonl or .parquet file instead"):
        rmt.load_preferences("trl-lib/ultrafeedback_binarized")


def test_split_holdout(prefs_path):
    ds = rmt.load_preferences(str(prefs_path))
    tr, ev = rmt.split_holdout(ds, 0.1, seed=0)
    assert (len(tr), len(ev)) == (43, 5)
    tr2, ev2 = rmt.split_holdout(ds, 0.1, seed=0)
    assert ev2["chosen"] == ev["chosen"]
    assert not {json.dumps(c) for c in tr["chosen"]} & {json.dumps(c) for c in ev["chosen"]}
    with pytest.raises(ValueError, match="--eval-fraction must be between 0 and 1"):
        rmt.split_holdout(ds, 1.5, seed=0)


def test_cli_errors_exit_2(tmp_path, capsys, tiny_rm_dir, prefs_path):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--base", str(tmp_path / "no-model"), "--data", str(prefs_path), "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"python -m evaluation.reward_model train: error: --base {tmp_path / 'no-model'}: not a model directory, "
        "and loading it from the hub failed (HFValidationError)")
    with pytest.raises(SystemExit) as exc:
        main(["train", "--base", str(tiny_rm_dir), "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"python -m evaluation.reward_model train: error: --data {tmp_path / 'missing.jsonl'}: no such file"
    with pytest.raises(SystemExit) as exc:
        main(["train", "--base", "b", "--data", "d", "--out", "o", "--preset", "70b"])
    assert exc.value.code == 2
    assert "--preset: invalid choice: '70b'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["train", "--base", "b", "--data", "d", "--out", "o", "--eval-fraction", "2"])
    assert exc.value.code == 2
    assert "--eval-fraction: must be a number between 0 and 1" in capsys.readouterr().err


def test_train_tiny_learns_and_writes_eval(tmp_path, tiny_rm_dir, prefs_path):
    out = tmp_path / "rm"
    record = rmt.train(str(tiny_rm_dir), str(prefs_path), str(out), preset="tiny", max_steps=8, seed=0)
    saved = json.loads((out / "eval.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert (saved["n"], saved["train_records"], saved["train_steps"]) == (5, 43, 8)
    # the chosen answer is always the polite one: 8 steps at lr 1e-3 learn it on held-out pairs
    assert saved["accuracy"] == 1.0
    assert saved["margin"] > 0 and saved["loss"] < math.log(2)
    assert saved["center_rewards_coefficient"] == 0.01

    # eval.json is reproducible from the saved checkpoint through the shared scoring path
    from evaluation.reward_model.scoring import load_reward_model

    model, tok = load_reward_model(str(out))
    ds = rmt.load_preferences(str(prefs_path))
    _, held_out = rmt.split_holdout(ds, 0.1, seed=0)
    again = rmt.pairwise_eval(model, tok, held_out, batch_size=8)
    assert again == {k: saved[k] for k in ("accuracy", "n", "loss", "margin")}
    assert model.config.num_labels == 1 and model.config.pad_token_id == tok.pad_token_id


def test_preset_kwargs_are_reward_config_fields():
    import dataclasses

    from trl import RewardConfig

    fields = {f.name for f in dataclasses.fields(RewardConfig)}
    for name, preset in rmt.PRESETS.items():
        kwargs = rmt.training_kwargs(preset, "out", world_size=8 if preset.effective_batch else 1,
                                     max_steps=3, deepspeed_config="ds.json" if preset.deepspeed_zero3 else None)
        assert set(kwargs) <= fields, (name, set(kwargs) - fields)
    cfg = RewardConfig(**rmt.training_kwargs(rmt.PRESETS["1.5b"], "out", world_size=8, use_cpu=True))
    assert (cfg.learning_rate, cfg.warmup_ratio, cfg.center_rewards_coefficient, cfg.gradient_accumulation_steps) == (
        1e-5, 0.1, 0.01, 8)
    assert cfg.lr_scheduler_type == "linear"


def test_cli_train_on_shipped_ultrafeedback_fixture(tmp_path, tiny_rm_dir, capsys):
    from pathlib import Path

    import evaluation

    fixture = Path(evaluation.__file__).parent / "tasks" / "fixtures" / "ultrafeedback.jsonl"
    out = tmp_path / "rm"
    assert main(["train", "--base", str(tiny_rm_dir), "--data", str(fixture), "--out", str(out), "--max-steps", "2"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads((out / "eval.json").read_text())
    assert summary == {k: saved[k] for k in ("accuracy", "n", "loss", "train_steps", "train_seconds")}
    assert (saved["n"], saved["train_records"], saved["train_steps"]) == (4, 36, 2)
    assert saved["accuracy"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
