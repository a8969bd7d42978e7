"""Run verl 0.4.1 without a GPU: runtime shims installed in every Ray worker, and the Ray launcher.

Two compatibility shims run everywhere (apply_compat_shims): verl 0.4.1 predates TRL 1.x and transformers 4.56+.

The shims (docs/fidelity.md, "Deviations") only run when CUDA is absent; nothing in verl's files is changed:
  A. gloo instead of NCCL (verl builds "cpu:gloo,cpu:<nccl>" for init_process_group);
  B. sdpa instead of the hard-coded flash_attention_2;
  C. the torch.cuda-only memory/RNG functions verl calls on `torch.cpu`;
  D. `BaseShardingManager.timing`, which the HF rollout path reads but never sets;
  E. transformers' top-p filter without its vocabulary sort (common.sampling), for speed: its output is the same bits;
  F. transformers' SDPA causal mask by broadcasting instead of torch.vmap (common.masking), for speed: the same mask.
`worker_setup` is Ray's `worker_process_setup_hook`: it runs at the start of every worker process, before verl
builds its workers (too early for `external_lib`, which is imported in `init_model`).
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import os
import random
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

SEED_ENV = "TRE_SEED"


def _shim_distributed() -> None:
    """A: gloo everywhere on CPU."""
    import torch.distributed as dist

    import verl.utils.device as device

    device.get_nccl_backend = lambda: "gloo"
    try:
        import verl.workers.fsdp_workers as fsdp_workers

        fsdp_workers.get_nccl_backend = device.get_nccl_backend
    except ImportError:
        pass
    if getattr(dist.init_process_group, "_tre_shim", False):
        return
    orig = dist.init_process_group

    @functools.wraps(orig)
    def init_process_group(backend=None, *args, **kwargs):
        if isinstance(backend, str) and "gloo" in backend and "," in backend:
            backend = "gloo"  # "cpu:gloo,cpu:gloo" names the cpu device twice, which torch rejects
        return orig(backend, *args, **kwargs)

    init_process_group._tre_shim = True
    dist.init_process_group = init_process_group


def _no_flash(kwargs: dict) -> dict:
    if kwargs.get("attn_implementation") == "flash_attention_2":
        kwargs["attn_implementation"] = "sdpa"
    return kwargs


def _shim_attention() -> None:
    """B: verl hard-codes attn_implementation='flash_attention_2'; flash-attn needs CUDA."""
    import transformers.models.auto.modeling_auto  # noqa: F401  (defines every Auto* class)
    from transformers import AutoConfig
    from transformers.models.auto.auto_factory import _BaseAutoModelClass

    if getattr(AutoConfig.from_pretrained, "_tre_shim", False):
        return
    cfg_orig = AutoConfig.from_pretrained.__func__

    def config_from_pretrained(cls, *args, **kwargs):
        config = cfg_orig(cls, *args, **_no_flash(kwargs))
        if getattr(config, "_attn_implementation", None) == "flash_attention_2":
            config._attn_implementation = "sdpa"
        return config

    config_from_pretrained._tre_shim = True
    AutoConfig.from_pretrained = classmethod(config_from_pretrained)

    def patch(auto_cls) -> None:
        # transformers copies from_pretrained/from_config onto every Auto* class, so each one is patched.
        pre_orig = auto_cls.from_pretrained.__func__
        conf_orig = auto_cls.from_config.__func__

        def model_from_pretrained(cls, *args, **kwargs):
            return pre_orig(cls, *args, **_no_flash(kwargs))

        def model_from_config(cls, config, *args, **kwargs):
            if getattr(config, "_attn_implementation", None) == "flash_attention_2":
                config._attn_implementation = "sdpa"
            return conf_orig(cls, config, *args, **_no_flash(kwargs))

        auto_cls.from_pretrained = classmethod(model_from_pretrained)
        auto_cls.from_config = classmethod(model_from_config)

    todo = [_BaseAutoModelClass]
    while todo:
        auto_cls = todo.pop()
        todo.extend(auto_cls.__subclasses__())
        patch(auto_cls)


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _mem_get_info() -> tuple[int, int]:
    import psutil

    vm = psutil.virtual_memory()
    return vm.available, vm.total


def _shim_torch_cpu() -> None:
    """C: verl calls get_torch_device().<fn> with torch.cuda's API; torch.cpu lacks these names."""
    import torch

    shims = {
        "memory_allocated": lambda *a, **k: _rss_bytes(),
        "memory_reserved": lambda *a, **k: _rss_bytes(),
        "max_memory_allocated": lambda *a, **k: _peak_rss_bytes(),
        "max_memory_reserved": lambda *a, **k: _peak_rss_bytes(),
        "reset_peak_memory_stats": lambda *a, **k: None,
        "mem_get_info": lambda *a, **k: _mem_get_info(),
        "empty_cache": lambda: None,
        "manual_seed": torch.manual_seed,
        "manual_seed_all": torch.manual_seed,
        "get_rng_state": lambda *a, **k: torch.get_rng_state(),
        "set_rng_state": lambda state, *a, **k: torch.set_rng_state(state),
        "get_device_name": lambda *a, **k: "cpu",
    }
    for name, fn in shims.items():
        if not hasattr(torch.cpu, name):
            setattr(torch.cpu, name, fn)


def _shim_sharding_manager() -> None:
    """D: verl 0.4.1's generate_sequences reads rollout_sharding_manager.timing, unset for the HF rollout."""
    from verl.workers.sharding_manager.base import BaseShardingManager

    if not hasattr(BaseShardingManager, "timing"):
        BaseShardingManager.timing = {}


def _shim_trl() -> None:
    """TRL >= 1.0 dropped AutoModelForCausalLMWithValueHead, which verl 0.4.1 imports whenever trl is installed;
    tell verl trl is absent then (the critic loads as AutoModelForTokenClassification anyway)."""
    import importlib

    try:
        import trl
    except ImportError:
        return
    if hasattr(trl, "AutoModelForCausalLMWithValueHead"):
        return
    for name in ("verl.models.transformers.monkey_patch", "verl.utils.model"):
        importlib.import_module(name).is_trl_available = lambda: False


def _generate_without_position_ids(generate):
    """module.generate minus the prompt's position_ids (transformers derives them from the attention mask)."""

    @functools.wraps(generate)
    def wrapper(*args, position_ids=None, **kwargs):
        return generate(*args, **kwargs)

    return wrapper


def _shim_hf_rollout_positions() -> None:
    """verl 0.4.1's HF rollout passes the prompt's position_ids to generate(); transformers >= 4.56 keeps them as
    given and slices their last column for every decoding step, so every response token gets the position of
    the last prompt token (the rotary phase never advances and the policy cannot copy from its prompt). Without
    them transformers computes the same prompt positions from the left-padded attention mask and advances them.
    verl still uses the batch's position_ids to build the response positions for training, which stay right."""
    from verl.workers.rollout.hf_rollout import HFRollout

    original = HFRollout._generate_minibatch
    if getattr(original, "_tre_shim", False):
        return

    @functools.wraps(original)
    def generate_minibatch(self, prompts):
        module = self.module
        module.generate = _generate_without_position_ids(module.generate)  # an instance attribute shadows the method
        try:
            return original(self, prompts)
        finally:
            del module.generate

    generate_minibatch._tre_shim = True
    HFRollout._generate_minibatch = generate_minibatch


def apply_compat_shims() -> None:
    """On CPU and GPU: the version mismatches of verl 0.4.1 with the pinned TRL and transformers."""
    _shim_trl()
    _shim_hf_rollout_positions()


def apply_cpu_shims() -> bool:
    """Install shims A-F when CUDA is absent; returns whether they were installed."""
    import torch

    from common.masking import install as broadcast_sdpa_mask
    from common.sampling import install as exact_fast_top_p

    if torch.cuda.is_available():
        return False
    _shim_torch_cpu()
    _shim_distributed()
    _shim_attention()
    _shim_sharding_manager()
    exact_fast_top_p()
    broadcast_sdpa_mask()
    return True


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch RNGs of this process (HF rollout sampling, dataloader workers)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def exit_with_parent(poll_s: float = 1.0) -> threading.Thread:
    """Kill this process (and the process group it leads) once its parent is gone.

    Ray starts each worker in a process group of its own, so a signal to the driver's group never reaches it, and a
    worker blocked in a call to another actor does not notice that its raylet died with the driver: after a SIGKILL of
    the driver, the TaskRunner went on training. The raylet is the worker's parent (and dies with the driver through
    Ray's fate sharing), so a changed parent pid means the run is over."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        if os.getpgid(0) == os.getpid():  # this worker leads its group: take its own children (dataloader workers) along
            os.killpg(os.getpid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

    thread = threading.Thread(target=watch, name="tre-exit-with-parent", daemon=True)
    thread.start()
    return thread


class _AfterImport(importlib.abc.MetaPathFinder):
    """Run a callback right after a top-level package's __init__ has executed (the first import of it or a submodule)."""

    def __init__(self, package: str, callback: Callable[[], None]) -> None:
        self.package, self.callback = package, callback

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.package:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module, callback = spec.loader.exec_module, self.callback

        def exec_then_call(module) -> None:
            exec_module(module)
            callback()

        spec.loader.exec_module = exec_then_call
        return spec


def after_import(package: str, callback: Callable[[], None]) -> None:
    """Call `callback` once `package` is imported in this process: now if it already is, else right after its __init__."""
    if package in sys.modules:
        callback()
    else:
        sys.meta_path.insert(0, _AfterImport(package, callback))


def worker_setup() -> None:
    """Ray worker_process_setup_hook: exit with the raylet; in the processes that import verl (the TaskRunner and
    the WorkerDicts), the shims, seeding, exact resume and the metrics.jsonl sink.

    Deferred to verl's import so that Ray's helper actors (verl's register center) start without importing torch and
    verl: that import cost every run about 8 CPU seconds for an actor that holds one dict. A process that imports
    transformers does so without scikit-learn and SciPy (common.imports)."""
    from common.imports import skip_unused_optional_imports

    exit_with_parent()
    after_import("transformers", skip_unused_optional_imports)
    after_import("verl", _setup_verl_process)


def _setup_verl_process() -> None:
    """What every verl process of a run needs before verl builds anything (see worker_setup)."""
    from tre.backend.resume import install_resume_hook
    from tre.backend.rundir import RUN_DIR_ENV, install_tracking_hook

    apply_compat_shims()
    apply_cpu_shims()
    _light_register_center()
    if os.environ.get(SEED_ENV):
        seed_everything(int(os.environ[SEED_ENV]))
    install_resume_hook()
    if os.environ.get(RUN_DIR_ENV):
        install_tracking_hook(os.environ[RUN_DIR_ENV])


def _light_register_center() -> None:
    """verl's WorkerGroupRegisterCenter actor is sent to its process by value, so that process never imports verl.

    The actor only stores rank 0's address; by reference its unpickling imported verl, and with it torch, tensordict
    and torch._dynamo (8 CPU seconds per run on 2 cores). The class and its code are verl's own."""
    import ray.cloudpickle

    import verl.single_controller.base.register_center.ray as register_center

    ray.cloudpickle.register_pickle_by_value(register_center)


def kill_local_workers() -> list[int]:
    """SIGKILL the worker processes of the Ray node this driver started (the raylet's children, each with the group it
    leads); the pids killed.

    ray.shutdown() alone took 8 s under load, and the TaskRunner and its WorkerDict went on training meanwhile: a
    preempted run finished its step and wrote the next checkpoint after the signal. Killed first, the workers stop
    where they are; the last checkpoint verl completed (its tracker file is written last) is what a rerun resumes."""
    import psutil

    killed = []
    for raylet in psutil.Process().children():
        try:
            if raylet.name() != "raylet":
                continue
            workers = raylet.children()
        except psutil.Error:
            continue
        for worker in workers:
            try:
                if os.getpgid(worker.pid) == worker.pid:  # a worker leads its group: its dataloader workers go too
                    os.killpg(worker.pid, signal.SIGKILL)
                else:
                    os.kill(worker.pid, signal.SIGKILL)
                killed.append(worker.pid)
            except (ProcessLookupError, PermissionError):
                pass
    return killed


def has_nvidia_gpu() -> bool:
    """Whether this node has an NVIDIA GPU, asked through Ray's NVML binding: the driver never imports torch (2 CPU
    seconds a run on the miniature's 2 cores) or verl (5 more; see run_ppo)."""
    from ray._private.accelerators import NvidiaGPUAcceleratorManager

    return NvidiaGPUAcceleratorManager.get_current_node_num_accelerators() > 0


class TaskRunner:
    """The trainer's Ray actor (started by run_ppo): its `run` is verl's TaskRunner.run, imported in its own process."""

    def run(self, config) -> None:
        from verl.trainer.main_ppo import TaskRunner as VerlTaskRunner

        return VerlTaskRunner.__ray_actor_class__.run(self, config)


@functools.lru_cache(maxsize=1)
def _task_runner():
    """TaskRunner as a Ray actor class, with verl's options (one CPU)."""
    import ray

    return ray.remote(num_cpus=1)(TaskRunner)


def run_ppo(config) -> None:
    """verl's main_ppo.run_ppo in an initialised Ray session, without importing verl in the driver.

    verl's run_ppo starts its TaskRunner actor and waits for its `run`; here the actor class is ours and its `run` is
    verl's TaskRunner.run, so the trainer runs the same code in the same kind of process, while the driver skips
    importing verl.trainer.main_ppo (7 CPU seconds, a tenth of a miniature run). With profiling asked for
    (trainer.profile_steps, ray_init.timeline_json_file) verl's run_ppo itself runs."""
    import ray
    from omegaconf import OmegaConf

    if OmegaConf.select(config, "trainer.profile_steps") or OmegaConf.select(config, "ray_init.timeline_json_file"):
        from verl.trainer.main_ppo import run_ppo as verl_run_ppo

        verl_run_ppo(config)
        return
    ray.get(_task_runner().remote().run.remote(config))


class RaySession:
    """What `ray_session` yields: Ray's temp dir, and the signal that interrupted the run (None if none)."""

    def __init__(self, temp_dir: str) -> None:
        self.temp_dir = temp_dir
        self.signum: Optional[int] = None


@contextmanager
def ray_session(*, env: dict[str, str], num_cpus: Optional[int] = None, num_gpus: Optional[int] = None) -> Iterator[RaySession]:
    """Start a private Ray cluster with our setup hook; always shut it down (also on SIGINT/SIGTERM).

    On a machine without CUDA, Ray is told there is one (logical) GPU: verl's resource pools hard-code use_gpu.
    A signal raises KeyboardInterrupt in the driver; Ray may wrap it into another exception type on its way out of
    ray.get, so callers check `session.signum` rather than the exception type.
    """
    import ray

    if num_gpus is None and not has_nvidia_gpu():
        num_gpus = 1  # else Ray counts them, as torch would (CUDA_VISIBLE_DEVICES included)
    if num_cpus is None:
        num_cpus = max(4, os.cpu_count() or 1)
    # Ray's socket paths must stay short (< 108 bytes), so the temp dir lives directly under /tmp.
    session = RaySession(tempfile.mkdtemp(prefix="tre_ray_", dir="/tmp"))
    temp_dir = session.temp_dir

    def on_signal(signum, frame):
        if session.signum is None:
            session.signum = signum
        raise KeyboardInterrupt

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    address = os.environ.get("RAY_ADDRESS")
    try:
        init_kwargs: dict[str, Any] = dict(
            include_dashboard=False,
            log_to_driver=True,
            runtime_env={"env_vars": env, "worker_process_setup_hook": "tre.backend.cpu.worker_setup"},
        )
        if address:  # an existing multi-node cluster (GPU clusters): join it
            ray.init(address=address, **init_kwargs)
        else:
            # No idle pre-started workers: each would import torch+verl through the setup hook for nothing.
            ray.init(num_cpus=num_cpus, num_gpus=num_gpus, _temp_dir=temp_dir,
                     _system_config={"enable_worker_prestart": False, "prestart_worker_first_driver": False}, **init_kwargs)
        # ray.init installs its own SIGTERM handlers (sys.exit in the driver, then its node's process teardown), which
        # left the driver aborting (exit 134) with no record written and its temp dir behind: ours goes back on top.
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, on_signal)
        yield session
    finally:
        try:
            # A second Ctrl-C during shutdown must not leave raylet/gcs behind.
            for s in (signal.SIGINT, signal.SIGTERM):
                signal.signal(s, signal.SIG_IGN)
            if session.signum is not None and not address:
                kill_local_workers()
            if ray.is_initialized():
                ray.shutdown()
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
            if not address:
                shutil.rmtree(temp_dir, ignore_errors=True)
