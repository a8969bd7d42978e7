"""Fixtures of the workflow tests: the repo paths, a Snakemake workdir with stand-in step CLIs, the local Slurm."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SNAKEFILE = REPO / "Snakefile"
CLUSTER_SH = REPO / "workflow" / "slurm" / "cluster.sh"
STANDINS = Path(__file__).resolve().parent / "standins"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
# One cluster layout for every slurm test: 2 nodes (multi-node test) with 2 fake GPUs each.
CLUSTER_ENV = {"SLURM_CI_NODES": "2", "SLURM_CI_GPUS": "2"}


@pytest.fixture
def standin_workdir(tmp_path: Path, monkeypatch) -> Path:
    """A Snakemake working directory whose step CLIs are the stand-ins (the rest of each package is the real one,
    found through $TRE_STANDIN_REPO)."""
    monkeypatch.setenv("TRE_STANDIN_REPO", str(REPO))
    work = tmp_path / "work"
    shutil.copytree(STANDINS, work)
    # the configs name the offline fixtures relative to the working directory (as from the repo root)
    (work / "evaluation" / "tasks").mkdir()
    (work / "evaluation" / "tasks" / "fixtures").symlink_to(REPO / "evaluation" / "tasks" / "fixtures")
    return work


def _run_snakemake(workdir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*SNAKEMAKE, *args, "--snakefile", str(SNAKEFILE)], cwd=workdir, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def snakemake():
    """run(workdir, *args): the repo's Snakefile run in workdir (its workflow profile applies: no --cores)."""
    return _run_snakemake


def _cluster_answers() -> bool:
    if not shutil.which("scontrol"):
        return False
    ok = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    return ok.returncode == 0 and "UP" in ok.stdout


def _nodes_idle(n: int) -> bool:
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, timeout=30).stdout
    return sum(1 for line in out.splitlines() if line.split()[1].startswith(("idle", "mix", "alloc"))) >= n


@pytest.fixture(scope="session")
def slurm_cluster():
    """The local Slurm cluster (workflow/slurm/cluster.sh up), stopped at the end if this session started it.

    Where it cannot be started (not root, no apt) the slurm tests are skipped with the reason; under CI=true
    that is a failure instead, so CI never passes without having run them."""
    in_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    was_up = _cluster_answers()
    reason = None
    if os.geteuid() != 0 and not was_up:
        reason = "the local Slurm cluster needs root to start (workflow/slurm/cluster.sh up)"
    else:
        proc = subprocess.run(["bash", str(CLUSTER_SH), "up"], env={**os.environ, **CLUSTER_ENV},
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            reason = f"workflow/slurm/cluster.sh up failed (exit {proc.returncode}): {tail}"
        elif not _nodes_idle(2):
            reason = "the Slurm cluster is up but has fewer than 2 idle nodes"
    if reason:
        if in_ci:
            pytest.fail(f"CI=true and no Slurm cluster: {reason}")
        pytest.skip(reason)
    yield {"started": not was_up}
    if not was_up:
        subprocess.run(["bash", str(CLUSTER_SH), "down"], env={**os.environ, **CLUSTER_ENV}, capture_output=True,
                       timeout=300)
