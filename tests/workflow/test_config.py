"""workflow.config: merging, schema validation (one-line errors), the grid and the step command lines."""
from __future__ import annotations

import json
import shlex

import pytest

from workflow import config as wfc


def user(**over):
    return over


def test_default_is_the_tiny_grid():
    cfg = wfc.resolve({})
    assert cfg["grid"] == "tiny" and cfg["sizes"] == ["tiny"]
    runs = list(wfc.runs(cfg))
    assert len(runs) == 3 * 6 * 3  # the paper's 3 tasks x 6 methods x 3 seeds
    assert cfg["tasks"] == ["math", "countdown", "hh"]
    assert runs[0] == wfc.Run("math", "tiny", "ppo", 0)
    assert runs[0].run_dir == "runs/math/tiny/ppo/seed0"


def test_paper_grid_is_the_full_grid():
    cfg = wfc.resolve({"grid": "paper"})
    runs = list(wfc.runs(cfg))
    assert len(runs) == 3 * 2 * 6 * 3
    assert {r.size for r in runs} == {"1.5b", "7b"}
    assert set(cfg["methods"]) == {"ppo", "entropy", "kl_cov", "forking_tokens", "tre_k", "tre_p"}
    assert wfc.step_resources(cfg, "train", "7b")["gpus_per_node"] == 8


def test_user_keys_merge_deeply_over_the_grid():
    cfg = wfc.resolve({"seeds": [3, 4], "data": {"math": {"train_size": 5}}})
    assert cfg["seeds"] == [3, 4]
    assert cfg["data"]["math"] == {"generate": True, "max_operand": 6, "train_size": 5, "test_size": 126, "seed": 0}


def test_deep_merge_replaces_lists_and_scalars():
    assert wfc.deep_merge({"a": {"b": 1, "c": [1]}, "d": 1}, {"a": {"c": [2]}, "d": {"e": 1}}) == {
        "a": {"b": 1, "c": [2]}, "d": {"e": 1}}


@pytest.mark.parametrize("over, message", [
    ({"tasks": ["maths"]}, "config: tasks.0: 'maths' is not one of math, countdown, hh"),
    ({"resources": {"train": {"tiny": {"gpu": 1}}}},
     "config: resources.train.tiny.gpu: unknown key (allowed: account, additional, constraint, cpus_per_task, "
     "gpus_per_node, max_requeue, mem_gb, nodes, partition, qos, setup, signal_delay_s, tasks_per_node, timeout_min)"),
    ({"seeds": [-1]}, "config: seeds.0: -1 is less than the minimum of 0"),
    ({"methods": ["ppo", "foo"]}, "config: methods.1: 'foo' is not one of "),
    ({"grid": "huge"}, "config: grid: 'huge' is not one of tiny, paper"),
    ({"launcher": {"cluster": "pbs"}}, "config: launcher.cluster: 'pbs' is not one of auto, slurm, local, debug"),
    ({"sizes": ["7b"]}, "config: models.7b: required for size '7b'"),
    ({"train": {"overrides": ["no_equals_sign"]}}, "config: train.overrides.0: 'no_equals_sign' does not match"),
    ({"bogus": 1}, "config: bogus: unknown key (allowed: "),
    ({"warm_start": None}, "config: warm_start: required when a policy is models/tiny/warm"),
    ({"warm_start": {"base": "models/tiny/policy", "tasks": {"math": {"lr": 0}}}},
     "config: warm_start.tasks.math.lr: 0 is less than or equal to"),
    ({"warm_start": {"base": "models/tiny/policy", "tasks": {"maths": {}}}}, "config: warm_start.tasks.maths: unknown key"),
    ({"data": {"countdown": {"max_operand": 3}}}, "config: data.countdown.max_operand: only for math with generate"),
    ({"data": {"math": {"ops": "+"}}}, "config: data.math.ops: only for countdown with generate"),
    ({"data": {"countdown": {"generate": False, "numbers": 3}}},
     "config: data.countdown.numbers: only for countdown with generate"),
    ({"data": {"countdown": {"ops": "+x"}}}, "config: data.countdown.ops: '+x' does not match"),
    ({"train": {"task_overrides": {"maths": []}}}, "config: train.task_overrides.maths: unknown key"),
    ({"warm_start": {"base": "models/tiny/policy", "plain_fraction": 1}},
     "config: warm_start.plain_fraction: 1 is greater than or equal to the maximum of 1"),
    ({"warm_start": {"base": "models/tiny/policy", "lr": 0}}, "config: warm_start.lr: 0 is less than or equal to"),
    ({"wandb": {"mode": "on"}}, "config: wandb.mode: 'on' is not one of disabled, offline, online"),
    ({"wandb": {"mode": "offline", "team": "x"}}, "config: wandb.team: unknown key (allowed: entity, group, mode, project)"),
    ({"wandb": {"mode": "offline", "project": ""}}, "config: wandb.project: '' should be non-empty"),
])
def test_bad_config_is_one_line_naming_the_key(over, message):
    with pytest.raises(wfc.ConfigError) as e:
        wfc.resolve(over)
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


def test_load_or_exit_exits_2_with_the_line(capsys):
    with pytest.raises(SystemExit) as e:
        wfc.load_or_exit({"tasks": []})
    assert e.value.code == 2
    assert capsys.readouterr().err == "config: tasks: [] should be non-empty\n"


def test_step_resources_layers_default_launcher_and_step():
    cfg = wfc.resolve({"launcher": {"partition": "gpu", "account": "proj"},
                       "resources": {"train": {"tiny": {"partition": "long", "timeout_min": 7}}}})
    assert wfc.step_resources(cfg, "train", "tiny") == {
        "timeout_min": 7, "cpus_per_task": 1, "mem_gb": 6, "gpus_per_node": 0, "nodes": 1, "tasks_per_node": 1,
        "partition": "long", "account": "proj", "signal_delay_s": 60, "max_requeue": 3}
    assert wfc.step_resources(cfg, "eval", "tiny")["partition"] == "gpu"
    with pytest.raises(wfc.ConfigError):
        wfc.step_resources(cfg, "bake", "tiny")


def test_command_lines_follow_the_step_interfaces():
    cfg = wfc.resolve({"train": {"overrides": ["trainer.total_training_steps=2"],
                                 "task_overrides": {"math": ["data.max_prompt_length=72", "data.max_response_length=20"]},
                                 "method_overrides": {"tre_k": ["actor_rollout_ref.actor.entropy_coeff=0.01"]}}})
    run = wfc.Run("hh", "tiny", "tre_k", 1)
    assert wfc.train_args(cfg, run) == [
        "train", "--task", "hh", "--size", "tiny", "--method", "tre_k", "--seed", "1", "--profile", "tiny",
        "--run-dir", "runs/hh/tiny/tre_k/seed1", "--data-dir", "data/hh", "--model-path", "models/tiny/warm/hh",
        "trainer.total_training_steps=2", "actor_rollout_ref.actor.entropy_coeff=0.01"]
    # global, then the task's, then the method's (the last one wins in Hydra)
    assert wfc.train_args(cfg, wfc.Run("math", "tiny", "tre_k", 0))[-4:] == [
        "trainer.total_training_steps=2", "data.max_prompt_length=72", "data.max_response_length=20",
        "actor_rollout_ref.actor.entropy_coeff=0.01"]
    assert wfc.data_args(cfg, "countdown") == [
        "prepare", "countdown", "--out", "data/countdown", "--generate", "--train-size", "2000", "--test-size", "32",
        "--seed", "0", "--numbers", "3", "--max-number", "9", "--max-target", "50", "--ops", "+*", "--train-from-test"]
    assert wfc.rm_train_args(cfg, "tiny") == [
        "train", "--base", "models/tiny/reward", "--data", "evaluation/tasks/fixtures/ultrafeedback.jsonl",
        "--out", "models/rm/tiny", "--preset", "tiny"]
    assert wfc.eval_args(cfg, run) == ["evaluate", "runs/hh/tiny/tre_k/seed1", "--n", "4", "--no-lm-eval"]
    assert wfc.eval_args(wfc.resolve({"grid": "paper"}), run)[-4:] == ["--n", "8", "--lm-eval-task", "minerva_math500"]


def test_wandb_is_off_by_default_and_passed_to_training_and_evaluation(monkeypatch):
    assert wfc.resolve({})["wandb"] == wfc.resolve({"grid": "paper"})["wandb"] == {
        "mode": "disabled", "project": "tre", "entity": None, "group": None}
    run = wfc.Run("math", "tiny", "ppo", 2)
    assert "--wandb" not in wfc.train_args(wfc.resolve({}), run) and wfc.wandb_args(wfc.resolve({})) == []
    cfg = wfc.resolve({"wandb": {"mode": "offline", "group": "sweep1"}})
    assert wfc.wandb_args(cfg) == ["--wandb", "offline", "--wandb-project", "tre", "--wandb-group", "sweep1"]
    assert wfc.train_args(cfg, run)[-6:] == wfc.wandb_args(cfg)  # no train overrides in the tiny grid
    assert wfc.method_spec(cfg, run) == wfc.method_spec(wfc.resolve({}), run)  # turning it on reruns nothing
    monkeypatch.setenv("WANDB_API_KEY", "k")
    assert wfc.wandb_args(wfc.resolve({"wandb": {"mode": "online", "entity": "lab"}})) == [
        "--wandb", "online", "--wandb-project", "tre", "--wandb-entity", "lab"]


def test_online_without_an_api_key_stops_before_any_job(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with pytest.raises(wfc.ConfigError) as e:
        wfc.resolve({"grid": "paper", "wandb": {"mode": "online", "project": "tre"}})
    assert str(e.value).startswith("config: wandb.mode: wandb mode online needs WANDB_API_KEY") and "\n" not in str(e.value)
    assert wfc.resolve({"wandb": {"mode": "online"}, "archive_only": True})["archive_only"]  # no job: no key needed


def test_each_task_with_demonstrations_gets_its_own_warm_start():
    cfg = wfc.resolve({"tasks": ["hh", "countdown", "math"], "models": {"tiny": {"policy": "models/tiny/warm"}},
                       "warm_start": {"base": "models/tiny/policy", "steps": 600, "lr": 0.003, "batch_size": 32,
                                      "seed": 0, "plain_fraction": 0.5, "tasks": {"countdown": {"steps": 7, "lr": 0.01}}}})
    assert wfc.warm_start_tasks(cfg) == ["hh", "countdown", "math"]
    # math alone, with the shared settings: the arguments (and so the model) of the one warm start before tasks had their own
    assert wfc.warm_start_args(cfg, "math", 2) == [
        "--model", "models/tiny/policy", "--data", "data/math/train.parquet", "--out", "models/tiny/warm/math",
        "--threads", "2", "--steps", "600", "--lr", "0.003", "--batch-size", "32", "--seed", "0", "--plain-fraction", "0.5"]
    assert wfc.warm_start_args(cfg, "countdown", 2)[:8] == [
        "--model", "models/tiny/policy", "--data", "data/countdown/train.parquet", "--out", "models/tiny/warm/countdown",
        "--threads", "2"]
    assert wfc.warm_start_settings(cfg, "countdown")["steps"] == 7 and wfc.warm_start_settings(cfg, "countdown")["lr"] == 0.01
    policies = {t: wfc.policy_path(cfg, wfc.Run(t, "tiny", "ppo", 0)) for t in cfg["tasks"]}
    assert policies == {"hh": "models/tiny/warm/hh", "countdown": "models/tiny/warm/countdown", "math": "models/tiny/warm/math"}
    assert wfc.is_made_path(policies["math"])
    assert wfc.resolve({"grid": "paper"})["warm_start"] is None
    assert wfc.warm_start_tasks(wfc.resolve({"models": {"tiny": {"policy": "models/tiny/policy"}}})) == []


def test_paper_runs_pass_hub_models_and_multi_node_overrides():
    cfg = wfc.resolve({"grid": "paper", "resources": {"train": {"7b": {"nodes": 2}}}})
    args = wfc.train_args(cfg, wfc.Run("math", "7b", "ppo", 0))
    assert args[args.index("--model-path") + 1] == "Qwen/Qwen2.5-7B-Instruct"
    assert args[-2:] == ["trainer.nnodes=2", "trainer.n_gpus_per_node=8"]
    assert wfc.data_args(cfg, "math") == ["prepare", "math", "--out", "data/math", "--train-size", "7500",
                                          "--test-size", "5000"]


def test_method_spec_changes_with_the_method_and_its_overrides():
    cfg = wfc.resolve({"train": {"overrides": ["a=1"]}})
    table = wfc.method_table()
    assert table["tre_k"]["entropy"] == "tre_k" and table["tre_k"]["top_k"] == 2
    assert "label" not in table["tre_k"]  # presentation: relabelling a method reruns nothing
    a = wfc.method_spec(cfg, wfc.Run("math", "tiny", "tre_k", 0))
    b = wfc.method_spec(wfc.resolve({"train": {"overrides": ["a=1"], "method_overrides": {"tre_k": ["x=1"]}}}),
                        wfc.Run("math", "tiny", "tre_k", 0))
    assert a["method_spec"] == table["tre_k"] and a["overrides"] == ["a=1"]
    assert b["overrides"] == ["a=1", "x=1"]
    assert json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True)
    assert wfc.method_spec(cfg, wfc.Run("math", "tiny", "tre_p", 0))["method_spec"] == table["tre_p"] != table["tre_k"]


def test_schema_enums_are_the_grids_names():
    from figures import ARTEFACTS
    from tre.backend.profiles import PROFILES
    from tre.grid import METHODS, SIZES, TASKS, TRE_METHODS

    props = wfc.load_schema()["properties"]
    assert props["tasks"]["items"]["enum"] == list(TASKS) == ["math", "countdown", "hh"]
    assert props["sizes"]["items"]["enum"] == list(SIZES) == ["tiny", "1.5b", "7b"]
    assert props["methods"]["items"]["enum"] == list(METHODS)
    assert props["figures"]["items"]["enum"] == list(ARTEFACTS)
    assert props["profile"]["enum"] == list(PROFILES) and props["grid"]["enum"] == list(wfc.GRIDS)
    assert props["figure1"]["properties"]["tre_method"]["enum"] == list(TRE_METHODS) == ["tre_k", "tre_p"]
    assert list(props["data"]["properties"]) == list(props["train"]["properties"]["task_overrides"]["properties"]) == list(TASKS)
    assert list(props["models"]["properties"]) == list(SIZES)


def test_the_tiny_grid_is_the_backends_tiny_profile():
    """The miniature's training settings live in the backend's tiny profile: the grid adds no override of its own."""
    cfg = wfc.resolve({})
    assert all(wfc.train_overrides(cfg, run) == [] for run in wfc.runs(cfg))


def test_launcher_cmd_quotes_everything():
    cfg = wfc.resolve({})
    cmd = wfc.launcher_cmd("/py", name="train", log_dir="logs/train/x", config=cfg, resources={"nodes": 1},
                           argv=["/py", "-m", "tre.backend", "a b"], checkpointable=True, reward_model="models/rm/tiny",
                           supersede=("runs/x", '{"k": 1}'), term_grace_s=30)
    assert shlex.split(cmd) == [
        "/py", "-m", "workflow.launcher", "run", "--name", "train", "--log-dir", "logs/train/x", "--cluster", "auto",
        "--resources", '{"nodes": 1}', "--checkpointable", "--reward-model", "models/rm/tiny",
        "--supersede", "runs/x", '{"k": 1}', "--term-grace-s", "30", "--", "/py", "-m", "tre.backend", "a b"]


def test_made_paths_are_rule_inputs_hub_ids_are_not():
    assert wfc.is_made_path("models/tiny/policy") and wfc.is_made_path("models/rm/7b")
    assert not wfc.is_made_path("Qwen/Qwen2.5-7B-Instruct") and not wfc.is_made_path(None)


def test_figure1_needs_its_runs_in_the_grid():
    with pytest.raises(wfc.ConfigError) as e:
        wfc.resolve({"methods": ["ppo", "tre_k"]})
    assert str(e.value) == ("config: figures: figure1 compares the entropy and tre_p runs; add 'entropy' to methods "
                            "or drop figure1")
    with pytest.raises(wfc.ConfigError) as e:
        wfc.resolve({"tasks": ["countdown"]})
    assert str(e.value) == "config: figure1.task: 'math' is not in tasks ['countdown']"
    assert wfc.resolve({"methods": ["ppo"], "figures": ["curves"]})["methods"] == ["ppo"]
    assert wfc.figure1_run(wfc.resolve({"grid": "paper"})) == {"task": "countdown", "size": "1.5b", "seed": 0,
                                                                "prompt_index": 0, "response_prefix": "",
                                                                "tre_method": "tre_p"}


def test_artefact_outputs():
    assert wfc.artefact_outputs("table_final") == ["results/tables/table_final.csv", "results/tables/table_final.md",
                                                   "results/tables/table_final.tex"]
    assert wfc.artefact_outputs("curves") == ["results/figures/curves.pdf", "results/figures/curves.png"]


def _cli(*entries: str) -> dict:
    """What Snakemake's own --config parser hands the workflow for these KEY=VALUE entries."""
    from snakemake.cli import parse_config

    return parse_config(list(entries))


def test_config_cli_values_get_the_schemas_types():
    assert _cli("archive_only=true", "seeds=[0,1]", "eval={n: 4}") == {
        "archive_only": "true", "seeds": ["0", "1"], "eval": {"n": "4"}}  # what Snakemake gives: strings
    cfg = wfc.resolve(_cli("archive_only=true", "seeds=[0,1]", "eval={n: 4, lm_eval: null, step: 3}"))
    assert cfg["archive_only"] is True and cfg["seeds"] == [0, 1]
    assert cfg["eval"] == {"n": 4, "step": 3, "lm_eval": None}
    cfg = wfc.resolve(_cli("grid=paper", "launcher={cluster: slurm, partition: null, account: '123'}",
                           "resources={train: {7b: {mem_gb: 1.5, timeout_min: 10, setup: [module load x]}}}",
                           "warm_start={base: models/tiny/policy, lr: 2e-4, plain_fraction: 0.5}",
                           "figure1={size: 7b, seed: 1}", "tiny_model={vocab_size: 8192}", "sizes=[1.5b,7b]"))
    assert cfg["launcher"] == {"cluster": "slurm", "partition": None, "account": "123"}
    assert cfg["resources"]["train"]["7b"]["mem_gb"] == 1.5 and cfg["resources"]["train"]["7b"]["timeout_min"] == 10
    assert cfg["resources"]["train"]["7b"]["setup"] == ["module load x"]
    assert cfg["warm_start"]["lr"] == 2e-4 and cfg["warm_start"]["plain_fraction"] == 0.5
    assert cfg["figure1"]["size"] == "7b" and cfg["figure1"]["seed"] == 1 and cfg["tiny_model"]["vocab_size"] == 8192
    assert cfg["sizes"] == ["1.5b", "7b"]
    assert wfc.resolve(_cli("archive_only=True"))["archive_only"] is True
    assert wfc.resolve(_cli("warm_start=null", "models={tiny: {policy: models/tiny/policy}}"))["warm_start"] is None


@pytest.mark.parametrize("entries, message", [
    (["archive_only=maybe"], "config: archive_only: 'maybe' is not of type 'boolean'"),
    (["archive_only=1"], "config: archive_only: 1 is not of type 'boolean'"),
    (["seeds=[0,a]"], "config: seeds.1: 'a' is not of type 'integer'"),
    (["seeds=[0.5]"], "config: seeds.0: '0.5' is not of type 'integer'"),
    (["eval={n: four}"], "config: eval.n: 'four' is not of type 'integer'"),
    (["eval={n: 0}"], "config: eval.n: 0 is less than the minimum of 1"),
    (["tasks=[maths]"], "config: tasks.0: 'maths' is not one of math, countdown, hh"),
])
def test_wrong_config_cli_values_are_one_line(entries, message):
    with pytest.raises(wfc.ConfigError) as e:
        wfc.resolve(_cli(*entries))
    assert str(e.value) == message


def test_a_task_without_demonstrations_starts_from_the_base(monkeypatch):
    import dataclasses

    cfg = wfc.resolve({})
    monkeypatch.setattr(wfc, "TASKS", {**wfc.TASKS, "hh": dataclasses.replace(wfc.TASKS["hh"], demonstrations=False)})
    with pytest.raises(wfc.ConfigError, match=r"^config: warm_start.tasks.hh: task hh has no demonstrations to "
                                              r"warm-start from; tasks with them: math, countdown$"):
        wfc.resolve({})
    assert wfc.warm_start_tasks(cfg) == ["math", "countdown"]
    assert wfc.policy_path(cfg, wfc.Run("hh", "tiny", "ppo", 0)) == "models/tiny/policy"
