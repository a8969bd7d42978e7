"""`train`: one PPO experiment through verl's main_ppo, writing the run directory (config, metrics, summary)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Optional

from baselines.methods import FORKING_TOKENS_LOSS
from tre.backend import mirror, rundir
from tre.backend.profiles import RunSpec, SpecError, default_run_dir, overrides, split_override, validate, verl_config_dir

EXIT_INTERRUPTED = {2: 130, 15: 143}  # SIGINT, SIGTERM -> the shell's 128 + signum
HEARTBEAT_S = 10.0


def compose(items: list[str]):
    """verl's ppo_trainer config with `items` applied (Hydra compose, no run); SpecError on a bad override."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    config_dir = str(verl_config_dir())
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir, version_base=None):
            return hydra_compose(config_name="ppo_trainer", overrides=list(items))
    except Exception as exc:  # Hydra raises several types; all mean "this override list is wrong"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecError(f"override: {first}") from None
    finally:
        GlobalHydra.instance().clear()


def resolve(config) -> dict[str, Any]:
    """The composed config as plain, fully interpolated data; SpecError when an interpolation is broken."""
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(config, resolve=True)
    except Exception as exc:  # OmegaConf's errors carry the offending key in full_key
        key = getattr(exc, "full_key", None)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecError(f"override: {key}: {first}" if key else f"override: {first}") from None


def preflight(resolved: dict[str, Any], spec: RunSpec) -> None:
    """Catch, before Ray starts, the mistakes that would otherwise surface as a worker traceback."""
    from common.files import BadFile, parquet_metadata

    for key in ("train_files", "val_files"):
        files = resolved["data"][key]
        for path in [files] if isinstance(files, str) else files:
            if not os.path.exists(os.path.expanduser(path)):
                raise SpecError(f"data.{key}: {path} does not exist (make it with `python -m evaluation.tasks prepare {spec.task} --out DIR`, "
                                "then pass --data-dir DIR)")
            try:  # the footer only: a corrupt file fails here, not inside a Ray worker
                meta = parquet_metadata(os.path.expanduser(path), f"data.{key}")
            except BadFile as exc:
                raise SpecError(f"{exc}; remake it with `python -m evaluation.tasks prepare {spec.task} --out DIR`") from None
            needed = (resolved["data"].get("prompt_key", "prompt"), "data_source", "reward_model")
            missing = [c for c in needed if c not in meta.schema.to_arrow_schema().names]
            if missing or meta.num_rows == 0:
                raise SpecError(f"data.{key}: {path} " + (f"lacks the column(s) {', '.join(missing)}" if missing else "has no rows")
                                + f"; make it with `python -m evaluation.tasks prepare {spec.task} --out DIR`")
    model = os.path.expanduser(resolved["actor_rollout_ref"]["model"]["path"])
    if spec.size == "tiny" and not os.path.isdir(model):
        raise SpecError(f"model_path: {model} is not a directory (size tiny needs a local model; build one with "
                        "`python -m miniature.tiny_model --out DIR`)")
    if os.path.isdir(model) and not os.path.isfile(os.path.join(model, "config.json")):
        raise SpecError(f"model_path: {model} is not a model directory (no config.json)")
    reward = resolved["custom_reward_function"]["path"]
    if reward and not os.path.exists(reward):
        raise SpecError(f"custom_reward_function.path: {reward} does not exist (evaluation.tasks is missing the task's scorer)")
    actor = resolved["actor_rollout_ref"]["actor"]
    needs_logits = actor.get("tre_entropy") in ("tre_k", "tre_p") or actor["policy_loss"]["loss_mode"] == FORKING_TOKENS_LOSS
    if needs_logits and resolved["actor_rollout_ref"]["model"].get("use_fused_kernels"):
        raise SpecError("actor_rollout_ref.model.use_fused_kernels: must be False for TRE and Forking-Tokens methods, got True")


def empty_data_error(config) -> Optional[SpecError]:
    """The one-line error when no batch survives verl's prompt filter, else None; asked after a launch failed
    before its first step (verl then fails in a Ray worker: an empty sampler or dataloader).

    verl drops every prompt longer than data.max_prompt_length (after the chat template) and the training set's
    last incomplete batch. The counts come from verl's own dataset with its own filter.
    """
    import contextlib
    import io

    import datasets
    from common.files import parquet_metadata
    from verl.trainer.main_ppo import create_rl_dataset
    from verl.utils import hf_tokenizer

    data = config.data
    datasets.disable_progress_bars()
    tokenizer = hf_tokenizer(os.path.expanduser(config.actor_rollout_ref.model.path))
    for key, needed in (("train_files", data.train_batch_size), ("val_files", 1)):
        files = [data[key]] if isinstance(data[key], str) else list(data[key])
        with contextlib.redirect_stdout(io.StringIO()):  # verl prints the dataset lengths
            kept = len(create_rl_dataset(files, data, tokenizer, None))
        if kept >= needed:
            continue
        where = f"{sum(parquet_metadata(os.path.expanduser(f), f'data.{key}').num_rows for f in files)} prompts of {', '.join(files)}"
        if kept:
            return SpecError(f"data.train_batch_size: {kept} of the {where} fit in data.max_prompt_length={data.max_prompt_length} "
                             f"tokens, fewer than one batch of {needed}; lower data.train_batch_size or give more prompts")
        return SpecError(f"data.max_prompt_length: none of the {where} fits in {data.max_prompt_length} tokens with the chat "
                         "template (verl drops longer prompts); raise it (data.max_prompt_length=N) or give shorter prompts")
    return None


def resume_step(resolved: dict[str, Any]) -> int:
    """The step this launch will resume from (0 = fresh), mirroring verl's resume_mode rules."""
    trainer = resolved["trainer"]
    mode = trainer.get("resume_mode", "auto")
    if mode == "disable":
        return 0
    if mode == "resume_path" and trainer.get("resume_from_path"):
        return int(str(trainer["resume_from_path"]).rstrip("/").split("global_step_")[-1])
    return rundir.latest_checkpoint_step(trainer["default_local_dir"])


def worker_env(run_dir: str, spec: RunSpec) -> dict[str, str]:
    """Environment for the Ray workers: where metrics go, the seed, and the variables verl/HH rewards read."""
    from tre.backend.cpu import SEED_ENV

    env = {rundir.RUN_DIR_ENV: run_dir, SEED_ENV: str(spec.seed), "TOKENIZERS_PARALLELISM": "true",
           "NCCL_DEBUG": "WARN", "VLLM_LOGGING_LEVEL": "WARN"}
    for name in ("REWARD_SERVER_URL", "HF_HOME", "HF_HUB_OFFLINE", "PYTHONPATH"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


def prepare(spec: RunSpec) -> tuple[list[str], Any, dict[str, Any], str]:
    """Overrides, composed config, resolved dict and absolute run dir of `spec`; all user errors raised here."""
    validate(spec)
    missing = mirror.credentials_error(spec.wandb)
    if missing:  # here, before Ray: never a wandb.init failing inside a worker
        raise SpecError(f"wandb: {missing}")
    items = overrides(spec)
    config = compose(items)
    resolved = resolve(config)
    preflight(resolved, spec)
    run_dir = os.path.abspath(default_run_dir(spec))
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise SpecError(f"run_dir: {run_dir} is a file; give a directory")
    return items, config, resolved, run_dir


def train(spec: RunSpec, *, log=print) -> int:
    """Run one experiment; returns the process exit code (0 done, 130/143 interrupted). SpecError on bad input."""
    from baselines import get_method

    items, config, resolved, run_dir = prepare(spec)
    summary_path = Path(run_dir) / rundir.SUMMARY
    if summary_path.exists():
        log(f"{run_dir}: already completed ({rundir.SUMMARY} exists); delete it to train again")
        return 0
    rundir.read_metrics(Path(run_dir) / rundir.METRICS)  # a corrupt one stops here (RunDirError), before any write
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    start = resume_step(resolved)
    launch = rundir.start_launch(run_dir, start_step=start)  # before anything rewrites metrics.jsonl (a killed leg's clock)
    dropped = rundir.truncate_metrics(Path(run_dir) / rundir.METRICS, start if start else -1)  # fresh: nothing kept
    if start:
        log(f"resuming from checkpoint step {start} (dropped {dropped} metric lines past it)")
    record = rundir.config_record(spec, get_method(spec.method), items, resolved)
    rundir.atomic_write_json(Path(run_dir) / rundir.CONFIG, record)

    from tre.backend.cpu import ray_session, run_ppo

    session = None
    status = "failed"
    beating = threading.Event()
    pulse = threading.Thread(target=_heartbeat, args=(run_dir, beating), daemon=True)
    pulse.start()
    wandb_run = None
    try:
        wandb_run = start_mirror(run_dir, spec, start, record)  # before Ray: a wandb failure is one line, not a worker's
        with ray_session(env=worker_env(run_dir, spec)) as session:
            run_ppo(config)
        status = "completed"
    except BaseException as exc:
        if session is None or session.signum is None:
            trained = any(r["step"] > start for r in rundir.read_metrics(Path(run_dir) / rundir.METRICS))
            explained = None if trained or not isinstance(exc, Exception) else empty_data_error(config)
            if explained is not None:
                raise explained from None
            raise
    finally:
        beating.set()
        interrupted = session is not None and session.signum is not None
        rundir.end_launch(run_dir, launch, status="interrupted" if interrupted else status)
        if wandb_run is not None and (interrupted or status != "completed"):
            wandb_run.close("interrupted" if interrupted else status)
    if interrupted:
        name = "SIGINT" if session.signum == 2 else "SIGTERM"
        log(f"interrupted ({name}); Ray shut down; rerun the same command to resume")
        return EXIT_INTERRUPTED.get(session.signum, 130)
    summary = rundir.summary_record(run_dir, spec.task, spec.size, spec.method, spec.seed, task_val_metric(spec.task))
    rundir.atomic_write_json(summary_path, summary)
    if wandb_run is not None:
        wandb_run.close("completed", {k: summary[k] for k in (*rundir.SCORE_FIELDS, "steps") if k != "val_metric"})
    log(f"done: {summary_path}")
    return 0


def wandb_names(spec: RunSpec, commit: Optional[str]) -> dict[str, Any]:
    """The wandb project, entity, group, name and tags of a run (tre.backend.mirror.identity of its grid cell)."""
    return mirror.identity(spec.task, spec.size, spec.method, spec.seed, commit, project=spec.wandb_project,
                           entity=spec.wandb_entity, group=spec.wandb_group)


def start_mirror(run_dir: str, spec: RunSpec, start: int, record: dict[str, Any]) -> Optional[mirror.Mirror]:
    """This launch's wandb mirror of metrics.jsonl (None when disabled); SpecError when wandb cannot start."""
    if spec.wandb == "disabled":
        return None
    try:
        return mirror.Mirror.start(run_dir, spec.wandb, wandb_names(spec, record.get("git_commit")), start, record)
    except Exception as exc:  # wandb raises its own types (auth, network, usage); all mean "the mirror cannot start"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecError(f"wandb: {first}") from None


def _heartbeat(run_dir: str, stop: threading.Event) -> None:
    """Touch launches.jsonl every HEARTBEAT_S until `stop`: a SIGKILLed launch's wall time is then known to that grain."""
    while not stop.wait(HEARTBEAT_S):
        rundir.heartbeat(run_dir)


def task_val_metric(task: str) -> Optional[str]:
    """The task's own validation metric name from evaluation.tasks (None if that package is unavailable)."""
    try:
        from evaluation.tasks import get_task

        return getattr(get_task(task), "VAL_METRIC", None)
    except (ImportError, ValueError):
        return None


def parse_extra(extra: list[str]) -> tuple[dict[str, Optional[str]], list[str]]:
    """Split the pseudo-keys model_path=, data_dir=, run_dir= off a key=value list."""
    pseudo: dict[str, Optional[str]] = {}
    rest = []
    for item in extra:
        key, value = split_override(item)
        if key in ("model_path", "data_dir", "run_dir") and not item.startswith("+"):
            pseudo[key] = value
        else:
            rest.append(item)
    return pseudo, rest
