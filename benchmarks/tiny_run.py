"""Where one tiny PPO run's time goes: phase by phase, its fixed-cost fraction, and CPU seconds per process.

    python benchmarks/tiny_run.py [--task math] [--method ppo] [--data-dir data/math] [--model-path models/tiny/warm/math]
                                  [--threads 1] [--code DIR] [--repeat 1] [--json OUT] [-- key=value ...]

Runs `python -m tre.backend train` (the miniature's run as `snakemake all` makes it, with one thread per process as the
launcher gives a one-CPU step) in a subprocess, stamps every line it prints, and samples every process it starts
(Ray's included) for CPU time. Phases come from verl 0.4.1's and the driver's own log lines and the run's
metrics.jsonl:

  driver + Ray start    process start -> Ray's "Started a local Ray instance"
  TaskRunner start      -> verl's "TaskRunner hostname" (its process spawned, verl imported)
  data                  -> verl's "colocated worker base class" (datasets built, config checked)
  workers + models      -> the first validation batch (WorkerDict spawned, models built and wrapped)
  initial validation    -> "Initial validation metrics"
  steps                 sum of timing_s/step minus validation and checkpoint (rollout, scoring, updates)
  validation            sum of timing_s/testing
  checkpoint            sum of timing_s/save_checkpoint
  between steps         what the trainer loop spends outside its timed steps (progress bar, logging)
  shutdown              the last step -> process exit (Ray shutdown, summary)

The fixed cost is everything but steps, validation and the initial validation: what a run pays however few steps it
makes. `--code DIR` runs another checkout's code (e.g. an older commit in a git worktree) the same way, for a
before/after comparison on the same model and data.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common.argtypes import Parser, int_at_least

MARKERS = {
    "ray_up": re.compile(r"Started a local Ray instance"),
    "task_runner": re.compile(r"TaskRunner hostname"),
    "workers_spawn": re.compile(r"colocated worker base class"),
    "first_validation": re.compile(r"test_gen_batch meta info"),
    "initial_validation": re.compile(r"Initial validation metrics"),
}
ROLES = (("ray::TaskRunner", "TaskRunner"), ("ray::WorkerDict", "WorkerDict"), ("ray::", "other Ray workers"),
         ("raylet", "Ray services"), ("gcs_server", "Ray services"), ("ray/", "Ray services"),
         ("tre.backend", "driver"))


def _role(cmdline: str, name: str) -> str:
    for needle, role in ROLES:
        if needle in cmdline or needle in name:
            return role
    return "other"


def _sample_cpu(root: int, stop: threading.Event, seen: dict[int, tuple[float, str]]) -> None:
    """Keep each descendant's latest CPU seconds and role until `stop` (Ray renames its workers once they host an actor)."""
    import psutil

    while not stop.is_set():
        try:
            procs = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
        except psutil.Error:
            procs = []
        for proc in procs:
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    cpu = times.user + times.system  # not children_*: the driver reaps Ray's services
                    role = _role(" ".join(proc.cmdline()), proc.name())
            except psutil.Error:
                continue
            old = seen.get(proc.pid)
            if old is None or cpu >= old[0]:
                seen[proc.pid] = (cpu, role if role != "other" or old is None else old[1])
        stop.wait(0.2)


def measure(args: argparse.Namespace, index: int) -> dict:
    """One run: its phase times (s), CPU seconds per role, and the fixed-cost fraction."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"tre_bench_run{index}_"))
    argv = [sys.executable, "-u", "-m", "tre.backend", "train", "--task", args.task, "--size", "tiny",
            "--method", args.method, "--seed", str(args.seed), "--run-dir", str(run_dir / "run"),
            "--data-dir", args.data_dir, "--model-path", args.model_path, *args.overrides]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    if args.code:
        env["PYTHONPATH"] = os.pathsep.join([str(Path(args.code).resolve()), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    stamps: dict[str, float] = {}
    lines: list[str] = []
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=args.code or None, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace")
    seen: dict[int, tuple[float, str]] = {}
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_cpu, args=(proc.pid, stop, seen), daemon=True)
    sampler.start()
    assert proc.stdout is not None
    for line in proc.stdout:
        now = time.monotonic() - t0
        lines.append(line)
        for name, pattern in MARKERS.items():
            if name not in stamps and pattern.search(line):
                stamps[name] = now
    rc = proc.wait()
    wall = time.monotonic() - t0
    stop.set()
    sampler.join()
    if rc != 0:
        sys.stderr.write("".join(lines[-40:]))
        raise SystemExit(f"error: the run exited {rc} (its last lines above)")
    missing = [name for name in MARKERS if name not in stamps]
    if missing:
        raise SystemExit(f"error: the run's log lacks the markers {missing} (is this verl 0.4.1?)")
    from tre.backend.rundir import RunDir

    rows = RunDir(run_dir / "run").metrics()
    total = lambda key: sum(float(r.get(key, 0.0)) for r in rows)  # noqa: E731
    step, testing, save = total("timing_s/step"), total("timing_s/testing"), total("timing_s/save_checkpoint")
    loop_end = stamps["initial_validation"] + step
    phases = {
        "driver + Ray start": stamps["ray_up"],
        "TaskRunner start": stamps["task_runner"] - stamps["ray_up"],
        "data": stamps["workers_spawn"] - stamps["task_runner"],
        "workers + models": stamps["first_validation"] - stamps["workers_spawn"],
        "initial validation": stamps["initial_validation"] - stamps["first_validation"],
        "steps": step - testing - save,
        "validation": testing,
        "checkpoint": save,
        "shutdown + between steps": wall - loop_end,
    }
    work = phases["steps"] + phases["validation"] + phases["initial validation"]
    cpu: dict[str, float] = {}
    for seconds, role in seen.values():
        cpu[role] = cpu.get(role, 0.0) + seconds
    return {"wall_s": wall, "phases_s": phases, "fixed_s": wall - work, "fixed_fraction": (wall - work) / wall,
            "cpu_s": cpu, "cpu_total_s": sum(cpu.values()), "steps": len([r for r in rows if "timing_s/step" in r])}


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = Parser(prog="python benchmarks/tiny_run.py", description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="math")
    parser.add_argument("--method", default="ppo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None, help="default data/<task>")
    parser.add_argument("--model-path", default=None, help="default models/tiny/warm/<task>")
    parser.add_argument("--threads", type=int_at_least(1), default=1,
                        help="OMP_NUM_THREADS of the run, as the workflow's launcher gives a step of that many CPUs (1)")
    parser.add_argument("--code", default=None, metavar="DIR", help="run this checkout's code instead (before/after)")
    parser.add_argument("--repeat", type=int_at_least(1), default=1, help="runs; the median of each phase is printed")
    parser.add_argument("--json", default=None, metavar="OUT", help="also write every run's measurements here")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="verl overrides passed to the run")
    args = parser.parse_args(argv)
    args.data_dir = str(Path(args.data_dir or f"data/{args.task}").resolve())
    args.model_path = str(Path(args.model_path or f"models/tiny/warm/{args.task}").resolve())
    runs = [measure(args, i) for i in range(args.repeat)]
    med = lambda values: statistics.median(values)  # noqa: E731
    print(f"tiny {args.task}/{args.method} run, {runs[0]['steps']} steps, median of {len(runs)} "
          f"({os.cpu_count()} cores, {args.threads} thread(s)){'; code: ' + args.code if args.code else ''}")
    print(f"{'phase':<26}{'wall s':>8}")
    for name in runs[0]["phases_s"]:
        print(f"{name:<26}{med([r['phases_s'][name] for r in runs]):>8.1f}")
    print(f"{'total':<26}{med([r['wall_s'] for r in runs]):>8.1f}")
    print(f"fixed cost {med([r['fixed_s'] for r in runs]):.1f} s = {med([r['fixed_fraction'] for r in runs]):.2f} "
          "of the wall time")
    roles = sorted({role for r in runs for role in r["cpu_s"]})
    print(f"{'CPU seconds by process':<26}")
    for role in roles:
        print(f"  {role:<24}{med([r['cpu_s'].get(role, 0.0) for r in runs]):>8.1f}")
    print(f"  {'all':<24}{med([r['cpu_total_s'] for r in runs]):>8.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
