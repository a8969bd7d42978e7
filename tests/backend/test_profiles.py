"""`python -m tre.backend overrides`: the paper profile equals the authors' 30 scripts field by field (their
experiments/<task>/<size>_ppo*.sh; docs/fidelity.md, "Configs"), the tiny profile runs on CPU, user overrides win,
bad input is one error line with exit code 2, and printing overrides imports neither torch nor verl."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tre.backend.__main__ import main
from tre.backend.profiles import RunSpec, SpecError, override_map, overrides

# One row per authors' script: task, size, method, MRL, entropy coeff, K, P, micro actor/log-prob/ref-log-prob/critic,
# epochs, test_freq, save_freq.  "entropy" (PPO + full entropy) is the sixth method, on the *_ppo.sh scripts.
# method, entropy coeff, K, P: the five methods that have an authors' script for every task x size
SCRIPT_METHODS = (("ppo", 0, None, None), ("forking_tokens", 0, None, None), ("kl_cov", 0, None, None),
                  ("tre_k", 0.001, 2, None), ("tre_p", 0.001, None, 0.99))
SCRIPTS = [
    *[("math", "1.5b", m, 8192, e, k, p, 8, 8, 8, 16, 30, 5, 20) for m, e, k, p in SCRIPT_METHODS],
    *[("math", "7b", m, 8192, e, k, p, 4, 4, 4, 4, 30, 5, 20) for m, e, k, p in SCRIPT_METHODS],
    *[("countdown", "1.5b", m, 512, e, k, p, 16, 16, 16, 32, 29, 20, 100) for m, e, k, p in SCRIPT_METHODS],
    *[("countdown", "7b", m, 512, e, k, p, 16, 16, 16, 32, 29, 5, 100) for m, e, k, p in SCRIPT_METHODS],
    *[("hh", "1.5b", m, 1024, e, k, p, 16, 16, 16, 32, 200, 20, 100) for m, e, k, p in SCRIPT_METHODS],
    *[("hh", "7b", m, 1024, e, k, p, 8, 8, 8, 16, 200, 5, 20) for m, e, k, p in SCRIPT_METHODS],
]
ENTROPY_ROWS = [(t, s, "entropy", mrl, 0.001, None, None, a, l, r, c, ep, tf, sf)
                for t, s, m, mrl, _, _, _, a, l, r, c, ep, tf, sf in SCRIPTS if m == "ppo"]

# Set identically in every script.
COMMON = {
    "algorithm.adv_estimator": "gae", "algorithm.use_kl_in_reward": "False",
    "data.train_batch_size": "512", "data.max_prompt_length": "1024", "data.filter_overlong_prompts": "True",
    "data.truncation": "error",
    "actor_rollout_ref.actor.optim.lr": "1e-06", "critic.optim.lr": "1e-05", "critic.optim.lr_warmup_steps_ratio": "0.05",
    "actor_rollout_ref.actor.ppo_mini_batch_size": "64",
    "actor_rollout_ref.actor.use_kl_loss": "False", "actor_rollout_ref.actor.kl_loss_coef": "0.001",
    "actor_rollout_ref.actor.kl_loss_type": "low_var_kl",
    "actor_rollout_ref.model.use_remove_padding": "True", "critic.model.use_remove_padding": "True",
    "actor_rollout_ref.model.enable_gradient_checkpointing": "True", "critic.model.enable_gradient_checkpointing": "True",
    "actor_rollout_ref.actor.fsdp_config.param_offload": "True", "actor_rollout_ref.actor.fsdp_config.optimizer_offload": "True",
    "critic.model.fsdp_config.param_offload": "True", "critic.model.fsdp_config.optimizer_offload": "True",
    "actor_rollout_ref.ref.fsdp_config.param_offload": "True",
    "actor_rollout_ref.rollout.name": "vllm", "actor_rollout_ref.rollout.tensor_model_parallel_size": "2",
    "actor_rollout_ref.rollout.gpu_memory_utilization": "0.6", "actor_rollout_ref.rollout.enable_chunked_prefill": "False",
    "actor_rollout_ref.rollout.n": "8", "actor_rollout_ref.rollout.temperature": "1.0",
    "actor_rollout_ref.rollout.top_p": "1.0", "actor_rollout_ref.rollout.top_k": "-1",
    "actor_rollout_ref.rollout.val_kwargs.temperature": "1.0", "actor_rollout_ref.rollout.val_kwargs.top_p": "0.7",
    "actor_rollout_ref.rollout.val_kwargs.top_k": "-1", "actor_rollout_ref.rollout.val_kwargs.do_sample": "True",
    "actor_rollout_ref.rollout.val_kwargs.n": "1",
    "trainer.n_gpus_per_node": "8", "trainer.nnodes": "1", "trainer.critic_warmup": "0", "trainer.val_before_train": "True",
}
MODELS = {"1.5b": "Qwen/Qwen2.5-1.5B-Instruct", "7b": "Qwen/Qwen2.5-7B-Instruct"}


def test_the_table_has_all_30_scripts_and_6_entropy_runs():
    assert len(SCRIPTS) == 30 and len({r[:3] for r in SCRIPTS}) == 30 and len(ENTROPY_ROWS) == 6


@pytest.mark.parametrize("row", SCRIPTS + ENTROPY_ROWS, ids=lambda r: "-".join(map(str, r[:3])))
def test_paper_profile_matches_the_authors_script(row, tmp_path):
    task, size, method, mrl, ent, k, p, act, lp, ref_lp, crit, epochs, test_freq, save_freq = row
    items = overrides(RunSpec(task, size, method, seed=3, run_dir=str(tmp_path / "run")))
    got = override_map(items)
    assert {key: got.get(key) for key in COMMON} == COMMON
    a = "actor_rollout_ref.actor"
    assert got["data.max_response_length"] == str(mrl)
    assert float(got[f"{a}.entropy_coeff"]) == ent
    assert got.get(f"{a}.entropy_top_k") == (None if k is None else str(k))
    assert got.get(f"{a}.entropy_top_p") == (None if p is None else str(p))
    assert (got[f"{a}.ppo_micro_batch_size_per_gpu"], got["actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu"],
            got.get("actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu"),
            got["critic.ppo_micro_batch_size_per_gpu"]) == (str(act), str(lp), str(ref_lp), str(crit))
    assert (got["trainer.total_epochs"], got["trainer.test_freq"], got["trainer.save_freq"]) == (str(epochs), str(test_freq), str(save_freq))
    assert got["trainer.project_name"] == f"tre_{task}_{size}"
    assert got["trainer.experiment_name"] == f"{task}_{size}_{method}_seed3"  # never the authors' topk2/topp0.99 slips
    assert got["actor_rollout_ref.model.path"] == got["critic.model.path"] == MODELS[size]
    assert got["trainer.default_local_dir"] == str(tmp_path / "run" / "checkpoints")
    assert got["data.seed"] == "3"
    # The authors' extra keys, expressed through the registry's policy losses and our entropy keys.
    # tre_dual_clip: the authors' PPO loss without verl 0.4.1's log-ratio clamp (docs/fidelity.md, "Losses")
    loss_mode = {"forking_tokens": "tre_forking_tokens", "kl_cov": "tre_kl_cov_fork"}.get(method, "tre_dual_clip")
    assert got[f"{a}.policy_loss.loss_mode"] == loss_mode
    assert got[f"{a}.tre_entropy"] == {"tre_k": "tre_k", "tre_p": "tre_p", "entropy": "full"}.get(method, "none")
    if method == "forking_tokens":
        assert got[f"{a}.policy_loss.forking_top_ratio"] == "0.2"
    if method == "kl_cov":
        assert (got[f"{a}.policy_loss.kl_cov_k_percent"], got[f"{a}.policy_loss.ppo_kl_coef"]) == ("0.2", "1.0")
    if task == "hh":
        assert got["reward_model.reward_manager"] == "batch" and got["custom_reward_function.name"] == "compute_score_batch"
        assert got["custom_reward_function.path"].endswith("evaluation/tasks/hh.py")
    else:
        assert got["custom_reward_function.name"] == "compute_score"
        assert got["custom_reward_function.path"].endswith("evaluation/tasks/__init__.py")


def test_keys_verl_lacks_get_a_plus_and_the_list_composes():
    from tre.backend.launch import compose, resolve

    items = overrides(RunSpec("math", "7b", "tre_p"))
    assert "+actor_rollout_ref.actor.entropy_top_p=0.99" in items and "+data.seed=0" in items
    assert "actor_rollout_ref.actor.entropy_coeff=0.001" in items  # verl has this key: no '+'
    resolved = resolve(compose(items))
    assert resolved["actor_rollout_ref"]["actor"]["entropy_top_p"] == 0.99
    assert resolved["actor_rollout_ref"]["actor"]["policy_loss"]["loss_mode"] == "tre_dual_clip"
    assert resolved["actor_rollout_ref"]["ref"]["log_prob_micro_batch_size_per_gpu"] == 4
    assert resolved["actor_rollout_ref"]["model"]["external_lib"] == "tre.backend.plugin"
    assert resolved["actor_rollout_ref"]["actor"]["checkpoint"]["save_contents"] == ["model", "optimizer", "extra", "hf_model"]


def test_user_overrides_replace_profile_values_in_place_of_duplicates():
    items = overrides(RunSpec("countdown", "1.5b", "entropy", extra=("actor_rollout_ref.actor.entropy_coeff=0.005",
                                                                      "actor_rollout_ref.actor.entropy_top_k=4")))
    got = override_map(items)
    assert got["actor_rollout_ref.actor.entropy_coeff"] == "0.005"
    assert sum(i.split("=")[0].lstrip("+") == "actor_rollout_ref.actor.entropy_coeff" for i in items) == 1
    assert items[-1] == "actor_rollout_ref.actor.entropy_top_k=4"  # not ours: passed to Hydra as typed


def test_tiny_profile_is_cpu_ready(tmp_path):
    got = override_map(overrides(RunSpec("math", "tiny", "tre_k", profile="tiny", model_path=str(tmp_path))))
    assert got["actor_rollout_ref.rollout.name"] == "hf"
    assert got["actor_rollout_ref.actor.strategy"] == got["critic.strategy"] == "fsdp2"
    assert got["actor_rollout_ref.model.use_remove_padding"] == got["critic.model.use_remove_padding"] == "False"
    assert got["trainer.n_gpus_per_node"] == "1"
    assert got["actor_rollout_ref.model.path"] == str(tmp_path)


def test_tiny_profile_is_the_miniature(tmp_path):
    """`train --size tiny` is the CPU miniature's run: its batch, steps, arithmetic budget and entropy coefficients."""
    def run(task, method):
        return override_map(overrides(RunSpec(task, "tiny", method, profile="tiny", model_path=str(tmp_path))))

    got = run("math", "tre_k")
    assert {k: got[k] for k in ("data.train_batch_size", "actor_rollout_ref.rollout.n", "trainer.total_training_steps",
                                "trainer.test_freq", "trainer.save_freq", "data.max_prompt_length",
                                "data.max_response_length")} == {
        "data.train_batch_size": "8", "actor_rollout_ref.rollout.n": "4", "trainer.total_training_steps": "16",
        "trainer.test_freq": "4", "trainer.save_freq": "16", "data.max_prompt_length": "72", "data.max_response_length": "20"}
    coeff = "actor_rollout_ref.actor.entropy_coeff"
    assert [run("math", m)[coeff] for m in ("entropy", "tre_k", "tre_p", "ppo", "forking_tokens")] == ["0.3", "0.03", "0.03", "0", "0"]
    assert (run("countdown", "ppo")["data.max_prompt_length"], run("countdown", "ppo")["data.max_response_length"]) == ("144", "40")
    assert (run("hh", "ppo")["data.max_prompt_length"], run("hh", "ppo")["data.max_response_length"]) == ("64", "32")
    # one epoch per step: the 24 HH train prompts (3 batches an epoch) still give the 16 steps
    assert {run(task, "ppo")["trainer.total_epochs"] for task in ("math", "countdown", "hh")} == {"16"}
    # a user override still wins over the profile's coefficient
    user = overrides(RunSpec("math", "tiny", "entropy", profile="tiny", model_path=str(tmp_path), extra=(f"{coeff}=0.5",)))
    assert override_map(user)[coeff] == "0.5" and sum(i.split("=")[0] == coeff for i in user) == 1


@pytest.mark.parametrize("spec, field", [
    (RunSpec("gsm8k", "1.5b", "ppo"), "task"),
    (RunSpec("math", "3b", "ppo"), "size"),
    (RunSpec("math", "1.5b", "grpo"), "method"),
    (RunSpec("math", "1.5b", "ppo", profile="huge"), "profile"),
    (RunSpec("math", "tiny", "ppo", profile="paper", model_path="/x"), "size"),
    (RunSpec("math", "tiny", "ppo", profile="tiny"), "model_path"),
    (RunSpec("math", "1.5b", "ppo", seed=-1), "seed"),
    (RunSpec("math", "1.5b", "ppo", wandb="yes"), "wandb"),
    (RunSpec("math", "1.5b", "ppo", extra=("trainer.total_epochs",)), "override"),
])
def test_bad_specs_name_the_field(spec, field):
    with pytest.raises(SpecError, match=f"^{field}: "):
        overrides(spec)


@pytest.mark.parametrize("argv, needle", [
    (["overrides", "--task", "gsm8k", "--size", "1.5b", "--method", "ppo"], "task: must be one of math, countdown, hh"),
    (["overrides", "--task", "math", "--size", "1.5b", "--method", "nope"], "method: must be one of ppo, entropy"),
    (["overrides", "--task", "math", "--size", "1.5b", "--method", "ppo", "trainer.no_such_key=1"], "override: Could not override 'trainer.no_such_key'"),
    (["overrides", "--task", "math", "--size", "1.5b", "--method", "ppo", "data.train_batch_size=[1,"], "override: "),
    (["overrides", "--task", "math", "--size", "1.5b", "--method", "ppo", "actor_rollout_ref.actor.optim.lr=${oops}"],
     "error: override: actor_rollout_ref.actor.optim.lr: Interpolation key 'oops' not found"),
    (["overrides", "--task", "math", "--size", "1.5b", "--method", "ppo", "+lr=${oops}"],
     "error: override: lr: Interpolation key 'oops' not found"),
    (["train", "--task", "math", "--size", "tiny", "--method", "ppo"], "model_path: size tiny needs"),
    (["overrides", "--task", "math"], "error: the following arguments are required: --size, --method"),
])
def test_cli_bad_input_is_one_line_and_exit_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_train_with_missing_data_fails_before_ray(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    rc = main(["train", "--task", "countdown", "--size", "tiny", "--method", "tre_k", "--model-path", str(model),
               "--data-dir", str(tmp_path / "nodata"), "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: data.train_files: ") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_cli_overrides_prints_only_overrides():
    proc = subprocess.run([sys.executable, "-m", "tre.backend", "overrides", "--task", "hh", "--size", "7b", "--method", "tre_k"],
                          capture_output=True, text=True, check=True)
    lines = proc.stdout.splitlines()
    assert lines == overrides(RunSpec("hh", "7b", "tre_k")) and proc.stderr == ""
    bad = subprocess.run([sys.executable, "-m", "tre.backend", "overrides", "--task", "hh", "--size", "7b", "--method", "x"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stdout == "" and bad.stderr.count("\n") == 1


def test_cli_overrides_imports_neither_torch_nor_verl():
    """The overrides path reads verl's YAML and the method registry only (it used to import torch and verl's trainer)."""
    probe = ("import contextlib, io, sys\n"
             "from tre.backend.__main__ import main\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n"
             "    rc = main(['overrides', '--task', 'math', '--size', '7b', '--method', 'forking_tokens'])\n"
             "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'verl', 'ray', 'tensordict', 'transformers'))\n"
             "print(rc, heavy)\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "0 []"
