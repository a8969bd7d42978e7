"""tre.backend.cpu without Ray: a worker process does not outlive its parent (the raylet); what each process of a run
imports (the driver and Ray's helper actors never load torch or verl)."""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import time

# The parent starts the "worker" in a process group of its own (as the raylet does), prints its pid, then waits.
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "from tre.backend.cpu import exit_with_parent; import time; "
                          "exit_with_parent(poll_s=0.1); print('ready', flush=True); time.sleep(600)"],
                         start_new_session=True, stdout=subprocess.PIPE, text=True)
assert child.stdout.readline().strip() == "ready"
print(child.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_worker_exits_once_its_parent_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, env={**os.environ})
    child = int(parent.stdout.readline())
    try:
        time.sleep(0.5)
        assert _alive(child)  # the watchdog leaves a worker with a live parent alone
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 10
        while _alive(child) and time.time() < deadline:
            time.sleep(0.1)
        assert not _alive(child)
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


HEAVY = ("torch", "verl", "transformers", "tensordict")


def _imported_heavy(code: str) -> list[str]:
    """The heavy top-level packages a fresh interpreter has loaded after running `code`."""
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(sorted({m.split('.')[0] for m in sys.modules} "
                          f"& set({HEAVY!r})))"], capture_output=True, text=True, check=True)
    return eval(out.stdout.strip().splitlines()[-1])


def test_the_driver_side_imports_neither_torch_nor_verl():
    # the old driver imported torch to count GPUs and verl.trainer.main_ppo to start the TaskRunner (9 CPU seconds)
    code = ("from tre.backend import cpu, rundir\n"
            "assert not cpu.has_nvidia_gpu() and rundir.device_string() == 'cpu'\n"
            "runner = cpu._task_runner()\n"
            "assert runner.__ray_metadata__.class_name == 'TaskRunner'  # the log prefix, as verl's\n")
    assert _imported_heavy(code) == []


def test_the_task_runner_runs_verls_own_run():
    from verl.trainer.main_ppo import TaskRunner

    from tre.backend import cpu

    ours = cpu._task_runner()
    assert "VerlTaskRunner.__ray_actor_class__.run(self, config)" in inspect.getsource(ours.__ray_metadata__.modified_class.run)
    assert TaskRunner.__ray_actor_class__.run.__qualname__ == "TaskRunner.run"
    assert ours.__ray_metadata__.num_cpus == TaskRunner.__ray_metadata__.num_cpus == 1


def test_after_import_runs_once_the_package_is_initialised(tmp_path):
    pkg = tmp_path / "pkg_after"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("VALUE = 41\n")
    (pkg / "sub" / "__init__.py").write_text("import pkg_after\nSEEN = pkg_after.VALUE\n")
    code = (f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
            "from tre.backend.cpu import after_import\n"
            "calls = []\n"
            "after_import('pkg_after', lambda: (calls.append(sys.modules['pkg_after'].VALUE), "
            "setattr(sys.modules['pkg_after'], 'VALUE', 42)))\n"
            "assert calls == []\n"
            "import pkg_after.sub\n"
            "after_import('pkg_after', lambda: calls.append('now'))\n"
            "import pkg_after\n"
            "print(calls, pkg_after.sub.SEEN)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # the callback ran once, after __init__ (41), before the submodule (which sees 42); then at once if imported
    assert out.stdout.strip() == "[41, 'now'] 42"


def test_the_register_center_reaches_its_process_without_verl(tmp_path):
    # verl's WorkerGroupRegisterCenter as Ray ships it to its actor process, pickled once the worker setup ran
    blob = tmp_path / "center.pkl"
    subprocess.run([sys.executable, "-c",
                    "import ray.cloudpickle as cp\n"
                    "from tre.backend.cpu import _light_register_center\n"
                    "_light_register_center()\n"
                    "from verl.single_controller.base.register_center.ray import WorkerGroupRegisterCenter as C\n"
                    f"open({str(blob)!r}, 'wb').write(cp.dumps(C.__ray_metadata__.modified_class))\n"],
                   check=True, capture_output=True)
    code = (f"import ray.cloudpickle as cp; cls = cp.loads(open({str(blob)!r}, 'rb').read())\n"
            "center = cls({'MASTER_ADDR': 'x'})\n"
            "center.set_worker_info(0, 'node')\n"
            "assert center.get_rank_zero_info() == {'MASTER_ADDR': 'x'} and center.get_worker_info() == {0: 'node'}\n")
    assert _imported_heavy(code) == []


def test_a_verl_worker_loads_its_models_without_scikit_learn_and_scipy():
    # Ray runs worker_setup first in every worker; the WorkerDict then imports verl's FSDP workers (and transformers)
    code = ("from tre.backend.cpu import worker_setup\nworker_setup()\nimport verl.workers.fsdp_workers\n"
            "from transformers import Qwen2ForCausalLM\nimport transformers.generation.utils\nimport sys\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'scipy'}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
