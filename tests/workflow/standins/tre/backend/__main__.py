"""Stand-in: `python -m tre.backend train ...` is the real CLI (parser, RunSpec, the profile's overrides composed and
resolved by Hydra, the preflight checks, the run-directory writers, the summary) with only Ray and verl's trainer
replaced: `run_ppo` logs every step through the real metrics writer, scores one validation prompt with the task's real
reward function (HH: through the reward server the launcher runs) and saves checkpoints in verl's layout."""
import contextlib
import importlib.util
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

from _standin import real_module, record, repo
from evaluation.evaluate import load_examples
from tre.backend import cpu, profiles, rundir

RESPONSE = "abcd"  # the stand-in reward server scores a response by its length: 4.0


@contextlib.contextmanager
def ray_session(env: dict):
    """No Ray: the trainer runs in this process, with the environment the Ray workers would get."""
    os.environ.update(env)
    yield SimpleNamespace(signum=None)


def reward(resolved: dict) -> float:
    """The reward of RESPONSE to the first validation prompt, by the reward function verl would load."""
    fn = resolved["custom_reward_function"]
    spec = importlib.util.spec_from_file_location("custom_module", fn["path"])  # as verl loads it
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    example = load_examples(Path(resolved["data"]["val_files"]), limit=1)[0]
    args = (example.data_source, RESPONSE, example.ground_truth, example.extra_info)
    if resolved["reward_model"]["reward_manager"] == "batch":
        return float(getattr(module, fn["name"])(*([a] for a in args))[0])
    return float(getattr(module, fn["name"])(*args))


def run_ppo(config) -> None:
    """verl's trainer: total_training_steps steps, validation every test_freq, a checkpoint every save_freq."""
    from omegaconf import OmegaConf

    resolved = OmegaConf.to_container(config, resolve=True)
    trainer, data = resolved["trainer"], resolved["data"]
    source = load_examples(Path(data["val_files"]), limit=1)[0].data_source
    score = reward(resolved)
    metrics = rundir.MetricsLog(Path(os.environ[rundir.RUN_DIR_ENV]) / rundir.METRICS)  # the Tracking hook's sink
    total = trainer["total_training_steps"]
    for step in range(1, total + 1):
        row = {"training/global_step": step, "critic/score/mean": score, "actor/entropy": 1.0 / step,
               "response_length/mean": 4.0}
        if step % trainer["test_freq"] == 0 or step == total:
            row[f"{rundir.VAL_PREFIX}{source}{rundir.VAL_SUFFIX}"] = score
        metrics.log(row, step)
        if step % trainer["save_freq"] == 0 or step == total:
            ckpt = Path(trainer["default_local_dir"])
            hf = ckpt / f"global_step_{step}" / "actor" / "huggingface"
            hf.mkdir(parents=True, exist_ok=True)
            shutil.copy(Path(resolved["actor_rollout_ref"]["model"]["path"]) / "config.json", hf / "config.json")
            (ckpt / "latest_checkpointed_iteration.txt").write_text(str(step))


record("train")
cpu.ray_session = ray_session
cpu.run_ppo = run_ppo
# verl loads the task's reward function from the real package's file, not from this stand-in package
profiles.evaluation_tasks_dir = lambda: repo() / "evaluation" / "tasks"
rundir.device_string = lambda: "cpu"  # the real one asks NVML through Ray
sys.exit(real_module("tre.backend.__main__").main(sys.argv[1:]))
