"""Against the real local Slurm (workflow/slurm/cluster.sh): the pipeline, failures, time limits with
checkpoint + requeue, re-attaching after the driver died, and a 2-node fake-GPU allocation."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from workflow.launcher.cluster import Resources
from workflow.launcher.jobs import StepSpec, launch, read_record

pytestmark = pytest.mark.slurm
PY = sys.executable
COUNTER = Path(__file__).resolve().parent / "standins" / "counter.py"
SLURM_PROFILE = Path(__file__).resolve().parents[2] / "profiles" / "slurm"  # what `--profile slurm` finds at the root


def sacct(job_id: str) -> list[str]:
    """States of the job (and its requeues) as sacct lists them, duplicates included."""
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-D", "-o", "State", "-j", job_id], capture_output=True,
                         text=True, timeout=30).stdout
    return [s.split()[0] for s in out.split()]


def test_tiny_pipeline_end_to_end_through_slurm(slurm_cluster, standin_workdir, snakemake):
    """The slurm profile as a cluster user runs it, tried with the tiny grid (`--config grid=tiny`): the profile
    still sends every heavy step to Slurm, and the --config values arrive as Snakemake passes them (strings)."""
    work = standin_workdir
    proc = snakemake(work, "all", "--profile", str(SLURM_PROFILE), "--config", "grid=tiny", "tasks=[countdown,hh]",
                     "methods=[ppo,tre_k]", "seeds=[0]", "figures=[curves]", "resources={train: {tiny: {mem_gb: 1}}}",
                     timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TRE workflow: grid tiny (profile tiny), 4 runs, heavy steps through the launcher on slurm" in proc.stderr
    records = [json.loads(p.read_text()) for p in sorted((work / "logs").rglob("job.json"))]
    assert sorted(r["name"] for r in records) == ["evaluate"] * 4 + ["rm_train"] + ["train"] * 4
    for rec in records:
        assert rec["cluster"] == "slurm" and rec["state"] == "completed"
        assert sacct(str(rec["job_id"])) == ["COMPLETED"]
        assert Path(work, rec["stderr"]).exists()  # submitit's logs stay, also on success
    hh = json.loads((work / "runs/hh/tiny/tre_k/seed0/summary.json").read_text())
    assert hh["final_val_score"] == 4.0  # scored by the reward server the launcher ran inside the Slurm job
    assert (work / "results/figures/curves.pdf").exists()


def test_failing_job_is_reported_failed_with_its_log(slurm_cluster, tmp_path):
    proc = subprocess.run([PY, "-m", "workflow.launcher", "run", "--name", "fail", "--log-dir", "logs/fail",
                           "--cluster", "slurm", "--resources", '{"timeout_min": 2, "mem_gb": 0.5}', "--",
                           "bash", "-c", "echo 'something broke' >&2; exit 3"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    rec = json.loads((tmp_path / "logs/fail/job.json").read_text())
    line = proc.stderr.strip().splitlines()[-1]
    assert line == (f"launcher: fail: job {rec['job_id']} failed (FAILED: command exited with code 3: "
                    f"bash -c 'echo '\"'\"'something broke'\"'\"' >&2; exit 3'); log: {rec['stderr']}")
    assert rec["state"] == "failed" and rec["job_state"] == "FAILED"
    assert "something broke" in (tmp_path / rec["stderr"]).read_text()
    assert sacct(str(rec["job_id"])) == ["FAILED"]


def test_time_limit_signal_checkpoints_requeues_and_finishes_like_an_uninterrupted_run(slurm_cluster, tmp_path):
    """USR2 (what `--signal=USR2@<delay>` delivers before the time limit, and preemption with a grace signal):
    the command saves on SIGTERM, the job is requeued and resumes, and the result equals an uninterrupted run.

    The test sends the signal itself once the step has made progress: slurmctld sends --signal from a 30 s
    periodic check, so the real arrival time varies by a whole check period (too coarse to time a test on);
    the sbatch request for it is checked on the submission script."""
    steps = 24
    ref = subprocess.run([PY, str(COUNTER), "--steps", str(steps), "--state", str(tmp_path / "ref")],
                         capture_output=True, text=True, timeout=60)
    assert ref.returncode == 0, ref.stderr
    expected = json.loads((tmp_path / "ref" / "result.json").read_text())
    res = {"timeout_min": 5, "signal_delay_s": 45, "mem_gb": 0.5, "max_requeue": 2}
    spec = StepSpec(name="ckpt", log_dir=tmp_path / "logs", cluster="slurm", cwd=str(tmp_path),
                      resources=Resources.from_mapping(res), checkpointable=True, term_grace_s=20,
                      argv=[PY, str(COUNTER), "--steps", str(steps), "--state", str(tmp_path / "run"),
                            "--sleep", "0.5"])
    outcome: dict = {}
    driver = threading.Thread(target=lambda: outcome.update(rec=launch(spec)), daemon=True)
    driver.start()
    ckpt = tmp_path / "run" / "checkpoint.json"
    deadline = time.monotonic() + 120
    while not (ckpt.exists() and json.loads(ckpt.read_text())["step"] >= 4):
        assert time.monotonic() < deadline and driver.is_alive(), "the step made no progress"
        time.sleep(0.2)
    job_id = str(read_record(spec.log_dir)["job_id"])
    subprocess.run(["scancel", "--signal=USR2", "--full", job_id], check=True, timeout=30)
    driver.join(timeout=240)
    assert "rec" in outcome, "the launcher did not finish"
    got = json.loads((tmp_path / "run" / "result.json").read_text())
    assert got["value"] == expected["value"] and got["steps"] == steps
    assert got["attempts"] == 2 and outcome["rec"]["results"][0]["restarts"] == 1
    states = sacct(job_id)
    assert "REQUEUED" in states and states[-1] == "COMPLETED"
    assert "#SBATCH --signal=USR2@45" in (spec.log_dir / job_id / f"{job_id}_submission.sh").read_text()


def test_rerun_after_the_driver_died_reattaches_instead_of_resubmitting(slurm_cluster, tmp_path):
    name = f"reattach-{uuid.uuid4().hex[:8]}"
    args = [PY, "-m", "workflow.launcher", "run", "--name", name, "--log-dir", "logs/r", "--cluster", "slurm",
            "--resources", '{"timeout_min": 2, "mem_gb": 0.5}', "--", "bash", "-c", "sleep 8; echo done > out.txt"]
    driver = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (tmp_path / "logs/r/job.json").exists():
        assert time.monotonic() < deadline, "no job.json"
        time.sleep(0.2)
    first = json.loads((tmp_path / "logs/r/job.json").read_text())["job_id"]
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert f"re-attaching to job {first} (slurm)" in again.stderr
    assert (tmp_path / "out.txt").read_text() == "done\n"
    listed = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID", "--name", name], capture_output=True,
                            text=True, timeout=30).stdout.split()
    assert listed == [first]  # one job only


def test_two_node_fake_gpu_allocation_ranks_see_each_other(slurm_cluster, tmp_path):
    res = Resources(nodes=2, tasks_per_node=1, gpus_per_node=1, timeout_min=2, mem_gb=0.5)
    spec = StepSpec(name="2node", log_dir=tmp_path / "logs", cluster="slurm", cwd=str(tmp_path), resources=res,
                      argv=["bash", "-c", "echo $WORLD_SIZE $NODE_RANK $MASTER_ADDR $SLURM_JOB_NUM_NODES "
                                          "$SLURM_GPUS_ON_NODE > env.txt"])
    rec = launch(spec)
    assert len(rec["results"]) == 2
    peers = rec["results"][0]["peers"]
    assert rec["results"][1]["peers"] == peers  # both ranks got the same table over TCP
    assert [p["rank"] for p in peers] == [0, 1] and sorted(p["node"] for p in peers) == ["n1", "n2"]
    assert (tmp_path / "env.txt").read_text().split() == ["2", "0", peers[0]["ip"], "2", "1"]


RAY_CHECK = """
import json, os, ray
ray.init(address=os.environ["RAY_ADDRESS"], logging_level="ERROR")
alive = [n for n in ray.nodes() if n["Alive"]]
json.dump({"nodes": len(alive), "gpus": ray.cluster_resources().get("GPU", 0)}, open("ray.json", "w"))
"""


@pytest.mark.slow
def test_two_node_ray_cluster_head_and_worker(slurm_cluster, tmp_path):
    """--ray: a Ray head on rank 0, a worker on rank 1 of one allocation; the command on the head sees both."""
    (tmp_path / "check_ray.py").write_text(RAY_CHECK)
    res = Resources(nodes=2, tasks_per_node=1, gpus_per_node=1, timeout_min=6, mem_gb=3)
    spec = StepSpec(name="ray2", log_dir=tmp_path / "logs", cluster="slurm", cwd=str(tmp_path), resources=res,
                      ray=True, argv=[PY, "check_ray.py"])
    rec = launch(spec)
    assert json.loads((tmp_path / "ray.json").read_text()) == {"nodes": 2, "gpus": 2.0}
    # the Ray processes of the job are gone with it (each `ray start --block` group was stopped)
    port = json.loads((tmp_path / "logs" / str(rec["job_id"]) / "ray-0.json").read_text())["port"]
    time.sleep(2)
    for pattern in (f"gcs_server_port={port}", f"gcs-address=127.0.0.1:{port}"):
        leftover = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
        assert leftover.stdout == "", pattern


def test_cluster_script_up_is_idempotent(slurm_cluster):
    """A second `up` with the same layout starts nothing and restarts nothing."""
    from pathlib import Path as P

    state = P(os.environ.get("SLURM_CI_STATE", "/tmp/slurm-ci"))
    pids = {f.name: f.read_text() for f in sorted(state.glob("*.pid"))}
    script = P(__file__).resolve().parents[2] / "workflow" / "slurm" / "cluster.sh"
    proc = subprocess.run(["bash", str(script), "up"], env={**os.environ, "SLURM_CI_NODES": "2", "SLURM_CI_GPUS": "2"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "restarting" not in proc.stderr and "installing" not in proc.stderr
    assert {f.name: f.read_text() for f in sorted(state.glob("*.pid"))} == pids
    assert set(pids) >= {"slurmctld.pid", "slurmd-n1.pid", "slurmd-n2.pid", "slurmdbd.pid"}
