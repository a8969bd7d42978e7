"""Run spec -> verl 0.4.1 Hydra overrides: the paper profile (the authors' 30 scripts) and the tiny CPU profile.

Pure functions only; `overrides(spec)` is what `python -m tre.backend overrides` prints and what `train` runs.
Keys that verl's `ppo_trainer.yaml` lacks get Hydra's `+` prefix automatically (the authors' scripts do the same
for their extra actor keys), so a list printed here can be pasted after `python -m verl.trainer.main_ppo`.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

from tre.backend.mirror import DEFAULT_PROJECT
from tre.backend.mirror import MODES as WANDB_MODES
from tre.backend.rundir import run_name, run_path
from tre.grid import METHODS, PAPER_SIZES, SIZES, TASKS, VALIDATION_TEMPERATURE, VALIDATION_TOP_P, Method, get_method

PROFILES = ("paper", "tiny")

PLUGIN_MODULE = "tre.backend.plugin"


@dataclass(frozen=True)
class ScriptRow:
    """The values that differ between the authors' scripts of one (task, size) (docs/fidelity.md, "Configs")."""

    max_response_length: int
    actor_micro: int  # actor ppo_micro_batch_size_per_gpu
    log_prob_micro: int  # rollout log_prob_micro_batch_size_per_gpu
    ref_log_prob_micro: int  # ref log_prob_micro_batch_size_per_gpu (no effect while no KL is on; set as they do)
    critic_micro: int  # critic ppo_micro_batch_size_per_gpu
    total_epochs: int
    test_freq: int
    save_freq: int


# Transcribed from the authors' experiments/<task>/<size>_ppo*.sh (HEAD, after the micro-batch commit c7979c5).
PAPER_GRID: Mapping[tuple[str, str], ScriptRow] = {
    ("math", "1.5b"): ScriptRow(8192, 8, 8, 8, 16, 30, 5, 20),
    ("math", "7b"): ScriptRow(8192, 4, 4, 4, 4, 30, 5, 20),
    ("countdown", "1.5b"): ScriptRow(512, 16, 16, 16, 32, 29, 20, 100),
    ("countdown", "7b"): ScriptRow(512, 16, 16, 16, 32, 29, 5, 100),
    ("hh", "1.5b"): ScriptRow(1024, 16, 16, 16, 32, 200, 20, 100),
    ("hh", "7b"): ScriptRow(1024, 8, 8, 8, 16, 200, 5, 20),
}


@dataclass(frozen=True)
class RunSpec:
    """Everything that decides one run's overrides."""

    task: str
    size: str
    method: str
    seed: int = 0
    profile: str = "paper"
    run_dir: Optional[str] = None  # default: runs/<task>/<size>/<method>/seed<seed>
    data_dir: Optional[str] = None  # default: data/<task>
    model_path: Optional[str] = None  # default: the size's hub model; required for a size without one (tiny)
    wandb: str = "disabled"  # the wandb mirror (tre.backend.mirror): disabled, offline or online
    wandb_project: str = DEFAULT_PROJECT
    wandb_entity: Optional[str] = None
    wandb_group: Optional[str] = None  # above each cell's group
    extra: Sequence[str] = field(default_factory=tuple)  # user key=value overrides, applied last


class SpecError(ValueError):
    """A user-facing error in a run spec: one line naming the field and the allowed values."""


def _choice(field_name: str, value, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise SpecError(f"{field_name}: must be one of {', '.join(allowed)}, got {value!r}")


def validate(spec: RunSpec) -> Method:
    """Check every field of `spec`; returns its Method. Raises SpecError with one clear line."""
    _choice("task", spec.task, tuple(TASKS))
    _choice("size", spec.size, tuple(SIZES))
    _choice("profile", spec.profile, PROFILES)
    _choice("wandb", spec.wandb, WANDB_MODES)
    if spec.method not in METHODS:
        raise SpecError(f"method: must be one of {', '.join(METHODS)}, got {spec.method!r}")
    if isinstance(spec.seed, bool) or not isinstance(spec.seed, int) or spec.seed < 0:
        raise SpecError(f"seed: must be an integer >= 0, got {spec.seed!r}")
    if spec.profile == "paper" and spec.size not in PAPER_SIZES:
        raise SpecError(f"size: the paper profile has sizes {', '.join(PAPER_SIZES)}; use --profile tiny for size {spec.size}")
    if not SIZES[spec.size].hub_model and not spec.model_path:
        raise SpecError(f"model_path: size {spec.size} needs a local model directory (--model-path DIR or model_path=DIR)")
    for item in spec.extra:
        split_override(item)
    return get_method(spec.method)


def split_override(item: str) -> tuple[str, str]:
    """'key=value' (optionally '+key' / '++key') -> (bare key, value); SpecError when malformed."""
    key, sep, value = item.partition("=")
    bare = key.lstrip("+~")
    if not sep or not bare or any(c.isspace() for c in bare) or bare.startswith(".") or bare.endswith(".") or ".." in bare:
        raise SpecError(f"override: must look like key=value with a dotted key (e.g. trainer.total_training_steps=3), got {item!r}")
    return bare, value


def default_run_dir(spec: RunSpec) -> str:
    """runs/<task>/<size>/<method>/seed<seed>, or the explicit run_dir."""
    return spec.run_dir or os.path.join("runs", run_path(spec.task, spec.size, spec.method, spec.seed))


def experiment_name(spec: RunSpec) -> str:
    """The experiment name: derived from (task, size, method, seed), never the authors' hand-typed names."""
    return run_name(spec.task, spec.size, spec.method, spec.seed)


def _hydra_list(items: Sequence[str]) -> str:
    return "[" + ",".join(f"'{x}'" for x in items) + "]"


def _model_path(spec: RunSpec) -> str:
    if spec.model_path:
        return os.path.abspath(os.path.expanduser(spec.model_path)) if os.path.exists(os.path.expanduser(spec.model_path)) else spec.model_path
    return SIZES[spec.size].hub_model


def evaluation_tasks_dir() -> Path:
    """Directory of the evaluation.tasks package (it may not be importable yet: only its path is needed)."""
    import importlib.util

    found = importlib.util.find_spec("evaluation")
    locations = list(found.submodule_search_locations or []) if found else []
    root = Path(locations[0]) if locations else Path(__file__).resolve().parents[2] / "evaluation"
    return root.resolve() / "tasks"


def _reward_overrides(task: str) -> list[tuple[str, str]]:
    """Rule-based tasks: custom_reward_function = evaluation.tasks.compute_score; HH: the batch reward manager."""
    tasks_dir = evaluation_tasks_dir()
    if task == "hh":
        return [("reward_model.reward_manager", "batch"),
                ("custom_reward_function.path", str(tasks_dir / "hh.py")),
                ("custom_reward_function.name", "compute_score_batch")]
    return [("custom_reward_function.path", str(tasks_dir / "__init__.py")),
            ("custom_reward_function.name", "compute_score")]


# Method field -> the key under actor_rollout_ref.actor that carries it into verl (loss_params: policy_loss.<key>).
METHOD_KEYS = {"entropy_coeff": "entropy_coeff", "policy_loss": "policy_loss.loss_mode", "entropy": "tre_entropy",
               "top_k": "entropy_top_k", "top_p": "entropy_top_p", "max_candidates": "entropy_max_candidates"}


def method_overrides(method: Method) -> list[tuple[str, str]]:
    """What makes `method` take effect in verl: policy loss, entropy kind/coefficient, TRE set, loss params."""
    a, k = "actor_rollout_ref.actor", METHOD_KEYS
    out = [(f"{a}.{k['entropy_coeff']}", repr(float(method.entropy_coeff)) if method.entropy_coeff else "0"),
           (f"{a}.{k['policy_loss']}", method.policy_loss),
           (f"{a}.{k['entropy']}", method.entropy)]
    if method.top_k is not None:
        out.append((f"{a}.{k['top_k']}", str(method.top_k)))
    if method.top_p is not None:
        out.append((f"{a}.{k['top_p']}", repr(float(method.top_p))))
    if method.entropy == "tre_p":
        out.append((f"{a}.{k['max_candidates']}", str(method.max_candidates)))
    for key, value in method.loss_params.items():
        out.append((f"{a}.policy_loss.{key}", value if isinstance(value, str) else repr(value)))
    return out


def applied_method_fields(method: Method, resolved: Mapping) -> dict:
    """The method's verl-borne fields as the resolved config applies them (a grid's or user's override wins)."""
    actor = resolved.get("actor_rollout_ref", {}).get("actor", {})

    def get(key: str):
        node = actor
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        return node

    out = {f: get(key) for f, key in METHOD_KEYS.items() if get(key) is not None and getattr(method, f) is not None}
    if "entropy_coeff" in out:
        out["entropy_coeff"] = float(out["entropy_coeff"])
    if method.loss_params:
        out["loss_params"] = {k: get(f"policy_loss.{k}") if get(f"policy_loss.{k}") is not None else v
                              for k, v in method.loss_params.items()}
    return out


def _common_overrides(spec: RunSpec, method: Method) -> list[tuple[str, str]]:
    """Keys every profile sets: data, model, reward, plugin, naming, run directory, seed, logging."""
    data_dir = os.path.abspath(spec.data_dir or os.path.join("data", spec.task))
    run_dir = os.path.abspath(default_run_dir(spec))
    model = _model_path(spec)
    return [
        ("algorithm.adv_estimator", "gae"),
        ("algorithm.use_kl_in_reward", "False"),
        ("data.train_files", os.path.join(data_dir, "train.parquet")),
        ("data.val_files", os.path.join(data_dir, "test.parquet")),
        ("data.seed", str(spec.seed)),
        ("actor_rollout_ref.model.path", model),
        ("actor_rollout_ref.model.external_lib", PLUGIN_MODULE),
        ("actor_rollout_ref.model.use_fused_kernels", "False"),
        ("critic.model.path", model),
        *method_overrides(method),
        ("actor_rollout_ref.actor.tre_diagnostics", "True"),
        ("actor_rollout_ref.actor.checkpoint.save_contents", _hydra_list(["model", "optimizer", "extra", "hf_model"])),
        *_reward_overrides(spec.task),
        ("trainer.project_name", f"tre_{spec.task}_{spec.size}"),
        ("trainer.experiment_name", experiment_name(spec)),
        ("trainer.logger", _hydra_list(["console"])),  # never verl's wandb logger: tre.backend.mirror is the one
        ("trainer.default_local_dir", os.path.join(run_dir, "checkpoints")),
        ("trainer.resume_mode", "auto"),
        ("trainer.val_before_train", "True"),
        ("trainer.critic_warmup", "0"),
    ]


def paper_overrides(spec: RunSpec, method: Method) -> list[tuple[str, str]]:
    """The authors' script for (task, size) with `method` plugged in (their experiments/<task>/<size>_ppo*.sh, field by field)."""
    row = PAPER_GRID[(spec.task, spec.size)]
    a, r, c = "actor_rollout_ref.actor", "actor_rollout_ref.rollout", "critic"
    return [
        ("data.train_batch_size", "512"),
        ("data.max_prompt_length", "1024"),
        ("data.max_response_length", str(row.max_response_length)),
        ("data.filter_overlong_prompts", "True"),
        ("data.truncation", "error"),
        ("actor_rollout_ref.model.use_remove_padding", "True"),
        ("actor_rollout_ref.model.enable_gradient_checkpointing", "True"),
        (f"{a}.optim.lr", "1e-06"),
        (f"{a}.ppo_mini_batch_size", "64"),
        (f"{a}.ppo_micro_batch_size_per_gpu", str(row.actor_micro)),
        (f"{a}.use_kl_loss", "False"),
        (f"{a}.kl_loss_coef", "0.001"),
        (f"{a}.kl_loss_type", "low_var_kl"),
        (f"{a}.fsdp_config.param_offload", "True"),
        (f"{a}.fsdp_config.optimizer_offload", "True"),
        (f"{r}.log_prob_micro_batch_size_per_gpu", str(row.log_prob_micro)),
        (f"{r}.tensor_model_parallel_size", "2"),
        (f"{r}.name", "vllm"),
        (f"{r}.gpu_memory_utilization", "0.6"),
        (f"{r}.enable_chunked_prefill", "False"),
        (f"{r}.n", "8"),
        *_sampling(r),
        ("actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu", str(row.ref_log_prob_micro)),
        ("actor_rollout_ref.ref.fsdp_config.param_offload", "True"),
        (f"{c}.optim.lr", "1e-05"),
        (f"{c}.optim.lr_warmup_steps_ratio", "0.05"),
        (f"{c}.model.use_remove_padding", "True"),
        (f"{c}.model.enable_gradient_checkpointing", "True"),
        (f"{c}.ppo_micro_batch_size_per_gpu", str(row.critic_micro)),
        (f"{c}.model.fsdp_config.param_offload", "True"),
        (f"{c}.model.fsdp_config.optimizer_offload", "True"),
        ("trainer.n_gpus_per_node", "8"),
        ("trainer.nnodes", "1"),
        ("trainer.save_freq", str(row.save_freq)),
        ("trainer.test_freq", str(row.test_freq)),
        ("trainer.total_epochs", str(row.total_epochs)),
    ]


def _sampling(r: str) -> list[tuple[str, str]]:
    """The authors' sampling: rollout at T = 1.0 over the full vocabulary; validation as tre.grid's (one sample)."""
    return [
        (f"{r}.temperature", "1.0"),
        (f"{r}.top_p", "1.0"),
        (f"{r}.top_k", "-1"),
        (f"{r}.val_kwargs.temperature", repr(VALIDATION_TEMPERATURE)),
        (f"{r}.val_kwargs.top_p", repr(VALIDATION_TOP_P)),
        (f"{r}.val_kwargs.top_k", "-1"),  # verl's "no top-k"
        (f"{r}.val_kwargs.do_sample", "True"),
        (f"{r}.val_kwargs.n", "1"),
    ]


# The miniature's (prompt, response) token budget per task; math is its generated arithmetic, whose prompt is 65-67
# tokens; countdown's generated three numbers 1..9 with a target 10..50 make a 142-token prompt (the authors' text
# in the chat template) and a 37-token demonstration (with the end-of-turn token); hh is the UltraFeedback fixture,
# whose 40 prompts are 47-61 tokens: the tiny reward model scores its preferred replies cut to 32 tokens almost as
# high as whole (mean 0.87 vs 0.92; cut to 16, -0.89).
TINY_LENGTHS: Mapping[str, tuple[int, int]] = {"math": (72, 20), "countdown": (144, 40), "hh": (64, 32)}
TINY_DEFAULT_LENGTHS = (256, 32)
TINY_STEPS = 16  # PPO steps of a miniature run
# The miniature's entropy coefficient per entropy kind (it replaces the registry's): a large global coefficient makes
# the mass it leaks into the tail visible; TRE's is smaller because its ln|V|/ln|set| factor (13x for TRE-K at the
# tiny vocabulary) already scales it up.
TINY_ENTROPY_COEFFS: Mapping[str, float] = {"full": 0.3, "tre_k": 0.03, "tre_p": 0.03}


def tiny_overrides(spec: RunSpec, method: Method) -> list[tuple[str, str]]:
    """The CPU miniature (README, "The CPU miniature"): 16 PPO steps of 8 prompts x 4 samples on 2 CPU cores.

    Two mini-batches per step, so two policy updates as in the paper's several (with one, PPO's ratio is exactly 1
    and KL-Cov and the clip would do nothing); validation every 4 steps on up to 256 prompts with the authors'
    sampling; HF rollout, FSDP2, no remove-padding."""
    a, r, c = "actor_rollout_ref.actor", "actor_rollout_ref.rollout", "critic"
    prompt_len, response_len = TINY_LENGTHS.get(spec.task, TINY_DEFAULT_LENGTHS)
    coeff = [(f"{a}.{METHOD_KEYS['entropy_coeff']}", repr(TINY_ENTROPY_COEFFS[method.entropy]))] \
        if method.entropy in TINY_ENTROPY_COEFFS else []
    return [
        ("data.train_batch_size", "8"),
        ("data.val_batch_size", "256"),
        ("data.max_prompt_length", str(prompt_len)),
        ("data.max_response_length", str(response_len)),
        ("data.filter_overlong_prompts", "True"),
        ("data.truncation", "error"),
        ("data.dataloader_num_workers", "0"),
        ("actor_rollout_ref.model.use_remove_padding", "False"),
        ("actor_rollout_ref.model.enable_gradient_checkpointing", "False"),
        (f"{a}.strategy", "fsdp2"),
        (f"{a}.optim.lr", "2e-4"),
        (f"{a}.ppo_mini_batch_size", "4"),
        (f"{a}.ppo_micro_batch_size_per_gpu", "16"),
        (f"{a}.use_kl_loss", "False"),
        (f"{a}.use_torch_compile", "False"),
        (f"{a}.fsdp_config.param_offload", "False"),
        (f"{a}.fsdp_config.optimizer_offload", "False"),
        *coeff,
        (f"{r}.name", "hf"),
        (f"{r}.tensor_model_parallel_size", "1"),
        (f"{r}.log_prob_micro_batch_size_per_gpu", "32"),
        (f"{r}.n", "4"),
        *_sampling(r),
        ("actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu", "32"),
        (f"{c}.strategy", "fsdp2"),
        (f"{c}.optim.lr", "1e-05"),
        (f"{c}.model.use_remove_padding", "False"),
        (f"{c}.model.enable_gradient_checkpointing", "False"),
        (f"{c}.ppo_micro_batch_size_per_gpu", "16"),
        ("trainer.n_gpus_per_node", "1"),
        ("trainer.nnodes", "1"),
        ("trainer.save_freq", "16"),
        ("trainer.test_freq", "4"),
        # verl stops at total_training_steps; an epoch per step lets a train set of one batch (HH's fixture split)
        # still give every step
        ("trainer.total_epochs", str(TINY_STEPS)),
        ("trainer.total_training_steps", str(TINY_STEPS)),
    ]


def verl_config_dir() -> Path:
    """verl's trainer/config directory, found without importing verl (whose package imports torch and Ray)."""
    import importlib.util

    found = importlib.util.find_spec("verl")
    if found is None or not found.submodule_search_locations:
        raise SpecError("verl: not installed in this environment (the backend pins verl==0.4.1)")
    return Path(list(found.submodule_search_locations)[0]) / "trainer" / "config"


@functools.lru_cache(maxsize=1)
def _verl_base_config():
    """verl's own ppo_trainer.yaml (unresolved), to tell which keys need Hydra's '+' prefix."""
    from omegaconf import OmegaConf

    return OmegaConf.load(verl_config_dir() / "ppo_trainer.yaml")


def _has_key(key: str) -> bool:
    from omegaconf import OmegaConf

    return OmegaConf.select(_verl_base_config(), key, default="__missing__", throw_on_missing=False) != "__missing__"


def _format(key: str, value: str) -> str:
    return f"{key}={value}" if _has_key(key) else f"+{key}={value}"


def overrides(spec: RunSpec) -> list[str]:
    """The complete, ordered verl Hydra override list for `spec` (user overrides win, keyed by bare key)."""
    method = validate(spec)
    base = _common_overrides(spec, method)
    profile = paper_overrides(spec, method) if spec.profile == "paper" else tiny_overrides(spec, method)
    merged: dict[str, str] = {}
    for key, value in [*profile, *base]:
        merged.setdefault(key, value)  # a profile's value wins (the miniature's entropy coefficients)
    items = [_format(k, v) for k, v in merged.items()]
    user = [split_override(item) for item in spec.extra]
    user_keys = {k for k, _ in user}
    items = [item for item in items if split_override(item)[0] not in user_keys]
    for (key, value), raw in zip(user, spec.extra):
        # A key we set takes our form (with '+' where verl lacks it); anything else goes to Hydra as typed, so a
        # misspelt key fails at compose time instead of being silently added.
        items.append(_format(key, value) if key in merged and raw[0] not in "+~" else raw)
    return items


def override_map(items: Sequence[str]) -> dict[str, str]:
    """{bare key: value} of an override list (the last one wins), for inspection and tests."""
    out: dict[str, str] = {}
    for item in items:
        key, value = split_override(item)
        out[key] = value
    return out
