"""Rebuild time of each table/figure from a results/ archive, each in a fresh interpreter (imports included).

    python benchmarks/figures.py                       # time the archive in results/
    python benchmarks/figures.py --synthetic-grid      # time a synthetic archive at the paper's grid size

--synthetic-grid writes run directories of made-up numbers (3 tasks x 2 sizes x 6 methods x 3 seeds, --steps
training steps with the metric names of the run-directory contract) into a temp dir, collects them and times the
figures on that archive: a measurement of scale only; its numbers are never archived.
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common.argtypes import Parser, int_at_least

# Run as a script, this file's folder is sys.path[0] and its name would shadow the figures package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
from figures import ARTEFACTS  # noqa: E402
from tre.grid import PAPER_METHODS, PAPER_SIZES, TASKS  # noqa: E402

TRAIN_METRICS = ("actor/entropy", "actor/top1_prob_sum", "actor/tre_k_entropy", "actor/tre_p_entropy", "actor/tre_p_size",
                 "actor/tail_mass_k", "actor/tail_mass_p", "actor/pg_loss", "actor/pg_clipfrac", "actor/ppo_kl",
                 "actor/grad_norm", "critic/score/mean", "critic/score/max", "critic/score/min", "critic/vf_loss",
                 "critic/vf_explained_var", "response_length/mean", "response_length/max", "response_length/min",
                 "response_length/clip_ratio", "prompt_length/mean", "timing_s/step", "timing_s/gen", "perf/throughput")


def synthetic_runs(root: Path, steps: int, test_freq: int, seed: int = 0) -> int:
    """Write the paper-sized grid of run directories with random metrics; returns the number of runs."""
    rng = random.Random(seed)
    n = 0
    for task in TASKS:
        for size in PAPER_SIZES:
            for method in PAPER_METHODS:
                for s in range(3):
                    d = root / task / size / method / f"seed{s}"
                    d.mkdir(parents=True)
                    (d / "config.json").write_text(json.dumps({"task": task, "size": size, "method": method, "seed": s,
                                                               "profile": "synthetic", "device": "none", "git_commit": "synthetic"}))
                    val = f"val-core/{task}/reward/mean@1"
                    with (d / "metrics.jsonl").open("w") as f:
                        for step in range(steps + 1):
                            row = {"step": step}
                            if step:
                                row.update({m: rng.random() for m in TRAIN_METRICS})
                            if step % test_freq == 0 or step == steps:
                                row[val] = rng.random()
                            f.write(json.dumps(row) + "\n")
                    (d / "summary.json").write_text(json.dumps({"val_metric": val, "status": "completed"}))
                    n += 1
    return n


def time_command(args: list[str], repeat: int) -> list[tuple[float, float]]:
    """(wall seconds, CPU seconds) of `python -m figures ARGS` in fresh interpreters.

    CPU time (user + system of the child) is what the rebuild costs on an idle machine; wall time also counts
    waiting for the cores, which on a shared 2-core box can double it.
    """
    import resource

    times = []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "figures", *args], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        times.append((wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime))
        if proc.returncode != 0:
            raise SystemExit(f"python -m figures {' '.join(args)} failed:\n{proc.stderr.strip()}")
    return times


def main(argv: list[str] | None = None) -> int:
    """Time every artefact; prints one line per artefact and exits 1 if any median CPU time is over the budget."""
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--synthetic-grid", action="store_true", help="time a synthetic paper-sized archive instead")
    p.add_argument("--steps", type=int_at_least(1), default=200, help="training steps per synthetic run (default 200)")
    p.add_argument("--test-freq", type=int_at_least(1), default=10)
    p.add_argument("--repeat", type=int_at_least(1), default=3)
    p.add_argument("--budget-s", type=float, default=5.0)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        results = args.results
        if args.synthetic_grid:
            results = Path(tmp) / "results"
            n = synthetic_runs(Path(tmp) / "runs", args.steps, args.test_freq)
            t = time_command(["collect", str(Path(tmp) / "runs"), "--results", str(results)], 1)[0][0]
            size = (results / "metrics.csv").stat().st_size / 2**20
            print(f"collect: {n} synthetic runs x {args.steps} steps -> metrics.csv {size:.1f} MiB in {t:.2f} s")
        over = 0
        for name in ARTEFACTS:
            if name == "figure1" and not (results / "next_token_dists.csv").is_file():
                print(f"{name:<18} skipped: no {results / 'next_token_dists.csv'} (python -m figures dists)")
                continue
            times = time_command([name, "--results", str(results), "--out", str(Path(tmp) / "out")], args.repeat)
            wall = statistics.median(t for t, _ in times)
            cpu = statistics.median(c for _, c in times)
            over += cpu > args.budget_s
            print(f"{name:<18} median wall {wall:.2f} s, CPU {cpu:.2f} s (wall min {min(t for t, _ in times):.2f}, "
                  f"n={args.repeat}){'  OVER BUDGET' if cpu > args.budget_s else ''}")
        print(f"load average at the end: {' '.join(f'{x:.2f}' for x in __import__('os').getloadavg())}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
