"""CPU and wall time of the paper grid's dry run (`snakemake --profile slurm -n all`, target: under 5 s), side by side
with the tiny grid's dry run and Snakemake's own start-up (`snakemake --version`), from the repo root.

    python benchmarks/dry_run.py [--repeats 3]

CPU seconds (user + system of the child) are the figure to read on a shared machine; wall time is printed too.
The first run of each command warms the file-system cache and is not counted.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
COMMANDS = {
    "snakemake --version (start-up only)": ["--version"],
    "snakemake -n all (tiny grid, 18 runs)": ["-n", "all"],
    "snakemake --profile slurm -n all (paper grid, 108 runs)": ["--profile", "slurm", "-n", "all"],
}
TARGET_S = 5.0


def timed(args: list[str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one snakemake command run from the repo root."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([*SNAKEMAKE, *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"dry_run: {' '.join(args)} failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="timed runs per command (median reported; default 3)")
    args = p.parse_args()
    if args.repeats < 1:
        p.error(f"--repeats: must be >= 1, got {args.repeats}")
    rows = {}
    for name, cmd in COMMANDS.items():
        timed(cmd)  # warm-up: file-system cache
        runs = [timed(cmd) for _ in range(args.repeats)]
        rows[name] = (statistics.median(c for c, _ in runs), statistics.median(w for _, w in runs))
    base_cpu = rows[next(iter(COMMANDS))][0]
    print(f"{'command':<58} {'CPU s':>6} {'wall s':>7} {'CPU vs start-up':>16} {'CPU vs 5 s':>11}")
    for name, (cpu, wall) in rows.items():
        print(f"{name:<58} {cpu:>6.2f} {wall:>7.2f} {cpu / base_cpu:>15.2f}x {cpu / TARGET_S:>10.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
