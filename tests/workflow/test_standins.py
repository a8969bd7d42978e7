"""The contract between the rules and the step CLIs: every argv the rules build parses with the real CLI's parser,
and a stand-in rejects a bad argv exactly as the real CLI does (the stand-ins parse with the real parsers)."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workflow import config as wfc

REPO = Path(__file__).resolve().parents[2]


def _parse(module: str, argv: list[str]):
    """argv parsed by the real CLI's parser (with its checks across arguments where it has them)."""
    cli = importlib.import_module(module)
    return cli.parse_args(argv) if hasattr(cli, "parse_args") else cli.build_parser().parse_args(argv)


@pytest.mark.parametrize("user", [{"tasks": ["math", "countdown", "hh"]}, {"grid": "paper"},
                                  {"grid": "paper", "wandb": {"mode": "online", "entity": "lab", "group": "g"}}],
                         ids=["tiny", "paper", "paper-wandb"])
def test_every_argv_the_rules_build_parses_with_the_real_parser(user, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the parsers check output paths relative to the working directory
    monkeypatch.setenv("WANDB_API_KEY", "k")
    config = wfc.resolve(user)
    for task in config["tasks"]:
        assert _parse("evaluation.tasks.__main__", wfc.data_args(config, task)).task == task
    for size in config["sizes"]:
        assert _parse("evaluation.reward_model.__main__", wfc.rm_train_args(config, size)).command == "train"
    for task in wfc.warm_start_tasks(config):  # the paper grid has none
        assert _parse("miniature.warm_start", wfc.warm_start_args(config, task, threads=2)).threads == 2
    for run in wfc.runs(config):
        train = _parse("tre.backend.__main__", wfc.train_args(config, run))
        assert (train.task, train.size, train.method, train.seed) == (run.task, run.size, run.method, run.seed)
        assert train.extra == wfc.train_overrides(config, run)
        assert (train.wandb, train.wandb_project, train.wandb_entity, train.wandb_group) == \
            (config["wandb"]["mode"], config["wandb"]["project"], config["wandb"]["entity"], config["wandb"]["group"])
        evaluate = _parse("evaluation.__main__", [*wfc.eval_args(config, run), *wfc.wandb_args(config)])  # as the rule
        assert str(evaluate.run_dir) == run.run_dir and evaluate.wandb == config["wandb"]["mode"]


BAD = [
    ["tre.backend", "train", "--task", "countdown", "--size", "tiny", "--method", "ppo", "--bogus"],
    ["tre.backend", "train", "--task", "countdown", "--size", "1.5b", "--method", "ppo", "actor_rollout_ref.actor.bogus=1"],
    ["evaluation", "evaluate", "runs/countdown/tiny/ppo/seed0", "--n", "4", "--bogus"],
    ["evaluation", "evaluate", "runs/countdown/tiny/ppo/seed0", "--n", "0"],
    ["evaluation.reward_model", "train", "--base", "b", "--data", "d", "--out", "o", "--bogus"],
    ["evaluation.reward_model", "serve", "--model", "m", "--host", "127.0.0.1", "--port", "0", "--bogus"],
    ["miniature.tiny_model", "--out", "models/tiny", "--kind", "both", "--bogus"],
    ["miniature.warm_start", "--model", "m", "--data", "d.parquet", "--out", "w", "--lr", "0"],
    ["figures", "collect", "runs", "--results", "results", "--bogus"],
    ["figures", "dists", "--runs", "runs", "--bogus"],
    ["figures", "curves", "--bogus"],
]


@pytest.mark.parametrize("argv", BAD, ids=lambda a: " ".join(a[:2]) + " " + a[-1])
def test_a_standin_rejects_a_bad_argv_as_the_real_cli_does(argv, standin_workdir):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    standin = subprocess.run([sys.executable, "-m", *argv], cwd=standin_workdir, env=env, capture_output=True,
                             text=True, timeout=60)
    real = subprocess.run([sys.executable, "-m", *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert (standin.returncode, standin.stderr) == (real.returncode, real.stderr) == (2, real.stderr)
    assert "error: " in real.stderr.strip().splitlines()[-1] and "Traceback" not in real.stderr
    assert (standin_workdir / "calls.jsonl").exists()  # it was the stand-in that ran
