"""workflow.launcher without Slurm: resource mapping, executor choice, debug/local runs, records, reward server."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.processes import terminate_group
from tre.backend.rundir import supersede_if_changed
from workflow.launcher import jobs, multinode, progress
from workflow.launcher.cluster import ENV_CLUSTER, Resources, executor_parameters, resolve_cluster
from workflow.launcher.errors import LaunchError, StepFailed
from workflow.launcher.tokens import derived_secret

PY = sys.executable


def test_resources_are_checked_against_the_config_schema():
    r = Resources.from_mapping({"timeout_min": 5, "mem_gb": 2, "partition": "gpu", "setup": ["module load x"]})
    assert (r.timeout_min, r.mem_gb, r.partition, r.setup) == (5, 2.0, "gpu", ("module load x",))
    with pytest.raises(LaunchError, match=r"^resources\.gpus: unknown key \(allowed: account, additional, "):
        Resources.from_mapping({"gpus": 1})
    with pytest.raises(LaunchError, match=r"^resources\.nodes: 0 is less than the minimum of 1$"):
        Resources.from_mapping({"nodes": 0})
    with pytest.raises(LaunchError, match=r"^resources\.mem_gb: 'x' is not of type 'number'$"):
        Resources.from_mapping({"mem_gb": "x"})


def test_cluster_is_slurm_only_where_srun_exists(monkeypatch):
    monkeypatch.delenv(ENV_CLUSTER, raising=False)
    assert resolve_cluster("auto", which=lambda name: "/usr/bin/srun", answers=lambda: True) == "slurm"
    # srun installed but no controller answering (Slurm stopped): local processes
    assert resolve_cluster("auto", which=lambda name: "/usr/bin/srun", answers=lambda: False) == "local"
    assert resolve_cluster(None, which=lambda name: None) == "local"
    assert resolve_cluster("debug") == "debug"
    monkeypatch.setenv(ENV_CLUSTER, "debug")
    assert resolve_cluster(None, which=lambda name: "/usr/bin/srun", answers=lambda: True) == "debug"
    with pytest.raises(LaunchError, match="^cluster: must be one of auto, slurm, local, debug, got 'pbs'$"):
        resolve_cluster("pbs")


def test_executor_parameters_per_cluster():
    r = Resources(timeout_min=30, cpus_per_task=4, mem_gb=8, gpus_per_node=8, nodes=2, partition="gpu",
                    account="proj", signal_delay_s=300, additional={"exclusive": True})
    assert executor_parameters(r, "slurm", "train", checkpointable=True) == {
        "name": "train", "timeout_min": 30, "cpus_per_task": 4, "gpus_per_node": 8, "tasks_per_node": 1,
        "nodes": 2, "mem_gb": 8.0, "slurm_signal_delay_s": 300, "slurm_partition": "gpu", "slurm_account": "proj",
        "slurm_additional_parameters": {"exclusive": True}}
    # a step that cannot checkpoint gets no early USR2 (one at job start would kill it before its handler exists)
    assert executor_parameters(r, "slurm", "eval")["slurm_signal_delay_s"] == 0
    too_late = Resources(timeout_min=2, signal_delay_s=120)
    with pytest.raises(LaunchError, match=r"^resources\.signal_delay_s: must be shorter than the time limit \(120 s\), got 120$"):
        executor_parameters(too_late, "slurm", "train", checkpointable=True)
    single = Resources(timeout_min=30, cpus_per_task=4)
    assert executor_parameters(single, "local", "eval") == {
        "name": "eval", "timeout_min": 30, "cpus_per_task": 4, "gpus_per_node": 0, "tasks_per_node": 1}
    with pytest.raises(LaunchError, match=r"^resources\.nodes: 2 nodes need the slurm cluster, not 'local'$"):
        executor_parameters(r, "local", "train")


def _cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "workflow.launcher", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("cluster", ["debug", "local"])
def test_run_success_records_the_job(tmp_path, cluster):
    proc = _cli("run", "--name", "t", "--log-dir", "logs/t/a", "--cluster", cluster, "--record", "out/rec.json",
                "--", "bash", "-c", "echo $((6*7)) > answer.txt", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "answer.txt").read_text() == "42\n"
    rec = json.loads((tmp_path / "logs/t/a/job.json").read_text())
    assert rec["state"] == "completed" and rec["cluster"] == cluster
    assert rec["results"][0]["returncode"] == 0
    assert json.loads((tmp_path / "out/rec.json").read_text())["job_id"] == rec["job_id"]
    if cluster == "local":  # submitit's folder and logs are kept on success
        assert (tmp_path / f"logs/t/a/{rec['job_id']}/{rec['job_id']}_0_log.out").exists()


def test_cpu_step_threads_follow_its_cpus_unless_the_user_set_them(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    cmd = ["--", "bash", "-c", "echo ${OMP_NUM_THREADS:-unset} > threads.txt"]
    for resources, user, expected in (('{"cpus_per_task": 3}', None, "3"), ('{"cpus_per_task": 3}', "5", "5")):
        proc = subprocess.run([PY, "-m", "workflow.launcher", "run", "--name", "t", "--log-dir", f"logs/{expected}",
                               "--cluster", "local", "--resources", resources, *cmd], cwd=tmp_path, text=True,
                              capture_output=True, timeout=120, env={**env, **({"OMP_NUM_THREADS": user} if user else {})})
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "threads.txt").read_text() == f"{expected}\n"
    gpu = jobs.StepSpec(name="g", log_dir=tmp_path, argv=["true"], resources=Resources(gpus_per_node=1))
    assert gpu.command("slurm").cpu_threads is None  # GPU steps keep Ray's own per-worker defaults


@pytest.mark.parametrize("cluster", ["debug", "local"])
def test_run_failure_is_one_line_with_the_log_path(tmp_path, cluster):
    proc = _cli("run", "--name", "t", "--log-dir", "logs/t", "--cluster", cluster, "--",
                "bash", "-c", "echo boom >&2; exit 3", cwd=tmp_path)
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    rec = json.loads((tmp_path / "logs/t/job.json").read_text())
    assert line.startswith(f"launcher: t: job {rec['job_id']} failed (")
    assert "command exited with code 3: bash -c 'echo boom >&2; exit 3'" in line
    assert line.endswith(f"log: {rec['stderr']}")
    assert rec["state"] == "failed"
    if cluster == "local":
        assert "boom" in Path(tmp_path, rec["stderr"]).read_text()


def test_cli_user_errors_exit_2(tmp_path):
    bad = _cli("run", "--name", "t", "--log-dir", "l", "--resources", '{"gpu": 1}', "--", "true", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("launcher: resources.gpu: unknown key")
    nocmd = _cli("run", "--name", "t", "--log-dir", "l", cwd=tmp_path)
    assert (nocmd.returncode, nocmd.stderr) == (2, "launcher: command: missing; give it after `--`\n")
    cl = _cli("run", "--name", "t", "--log-dir", "l", "--cluster", "pbs", "--", "true", cwd=tmp_path)
    assert cl.returncode == 2 and "cluster: must be one of auto, slurm, local, debug" in cl.stderr
    assert "Traceback" not in bad.stderr + nocmd.stderr + cl.stderr


def test_reward_server_runs_next_to_the_command(standin_workdir):
    proc = _cli("run", "--name", "t", "--log-dir", "logs/t", "--cluster", "debug", "--reward-model", "models/rm/x",
                "--", PY, "-c", "import os, urllib.request; u = os.environ['REWARD_SERVER_URL']; "
                "open('url.txt', 'w').write(u); print(urllib.request.urlopen(u.replace('/predict', '/health')).read())",
                cwd=standin_workdir)
    assert proc.returncode == 0, proc.stderr
    url = (standin_workdir / "url.txt").read_text()
    assert url.startswith("http://127.0.0.1:") and url.endswith("/predict")
    serve = [json.loads(x) for x in (standin_workdir / "calls.jsonl").read_text().splitlines()]
    assert serve[0]["argv"][:5] == ["serve", "--model", "models/rm/x", "--host", "127.0.0.1"]
    # the server is gone once the step is over
    with pytest.raises(OSError):
        import urllib.request
        urllib.request.urlopen(url.replace("/predict", "/health"), timeout=2)


def test_local_steps_share_one_reward_server_until_it_is_stopped(standin_workdir):
    from evaluation.reward_model.lifecycle import shared_state_path, stop_shared_server

    env = {"TRE_LAUNCH_TOKEN": "b2" * 32}  # one workflow run's secret, as the Snakefile exports it
    script = "import os; open('url.txt', 'a').write(os.environ['REWARD_SERVER_URL'] + '\\n')"
    for step in ("a", "b"):
        proc = _cli("run", "--name", "t", "--log-dir", f"logs/{step}", "--cluster", "local", "--reward-model",
                    "models/rm/x", "--", PY, "-c", script, cwd=standin_workdir, env=env)
        assert proc.returncode == 0, proc.stderr
    first, second = (standin_workdir / "url.txt").read_text().split()
    assert first == second  # the second step found the first one's server
    calls = [json.loads(x) for x in (standin_workdir / "calls.jsonl").read_text().splitlines()]
    serve = [c for c in calls if c["name"] == "reward_model.serve"]
    assert len(serve) == 1 and serve[0]["argv"][-2:] == ["--idle-exit-s", "300.0"]
    model = str(standin_workdir / "models/rm/x")
    assert shared_state_path(model).exists()
    assert stop_shared_server(model, derived_secret("b2" * 32, "reward-server"))
    with pytest.raises(OSError):
        import urllib.request
        urllib.request.urlopen(first.replace("/predict", "/health"), timeout=2)


def test_reward_server_that_never_gets_ready_fails_the_step(standin_workdir):
    (standin_workdir / "evaluation" / "reward_model" / "__main__.py").write_text("raise SystemExit('no model here')\n")
    proc = _cli("run", "--name", "t", "--log-dir", "logs/t", "--cluster", "debug", "--reward-model", "nope",
                "--", "true", cwd=standin_workdir)
    assert proc.returncode == 1
    assert "reward server: server behind http://127.0.0.1:" in proc.stderr
    assert "exited before it was ready; log: " in proc.stderr


def test_local_multi_task_ranks_meet(tmp_path):
    """Two tasks of one allocation find each other (the multi-node path, here as 2 local tasks)."""
    spec = jobs.StepSpec(name="grp", log_dir=tmp_path / "logs", cluster="local", cwd=str(tmp_path),
                      resources=Resources(tasks_per_node=2, timeout_min=2),
                      argv=["bash", "-c", "echo $WORLD_SIZE $NODE_RANK $MASTER_ADDR > env.txt"])
    rec = jobs.launch(spec)
    peers = [r["peers"] for r in rec["results"]]
    assert [p["rank"] for p in peers[0]] == [0, 1] and peers[0] == peers[1]
    world, rank, addr = (tmp_path / "env.txt").read_text().split()
    assert (world, rank, addr) == ("2", "0", peers[0][0]["ip"])


def test_supersede_moves_a_run_made_with_another_spec(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = Path("runs/math/tiny/tre_k/seed0")
    stamp = Path("logs/train/x/spec.json")
    run.mkdir(parents=True)
    assert supersede_if_changed(run, stamp, '{"top_k": 2}') is None  # first time: just stamps
    (run / "metrics.jsonl").write_text("{}\n")
    assert supersede_if_changed(run, stamp, '{"top_k": 2}') is None  # same spec: resume as is
    moved = supersede_if_changed(run, stamp, '{"top_k": 4}')
    assert moved is not None and moved.parts[0] == "runs.superseded" and moved.name.startswith("seed0-")
    assert (moved / "metrics.jsonl").exists() and not run.exists()
    assert json.loads(stamp.read_text()) == {"top_k": 4}


def test_attach_only_to_a_live_job_of_the_same_step(tmp_path):
    spec = jobs.StepSpec(name="t", log_dir=tmp_path, argv=["sleep", "1"], cluster="slurm")
    base = {"fingerprint": spec.fingerprint(), "cluster": "slurm", "job_id": "77", "state": "submitted"}
    jobs.write_record(tmp_path, base)
    assert jobs.attach(spec, "slurm", state_of=lambda j: "RUNNING").job_id == "77"
    assert jobs.attach(spec, "slurm", state_of=lambda j: "FAILED") is None
    jobs.write_record(tmp_path, {**base, "fingerprint": "other"})
    assert jobs.attach(spec, "slurm", state_of=lambda j: "RUNNING") is None
    jobs.write_record(tmp_path, {**base, "state": "completed"})
    assert jobs.attach(spec, "slurm", state_of=lambda j: "RUNNING") is None


CLIENT = """
import json, os, urllib.error, urllib.request
url, token = os.environ["REWARD_SERVER_URL"], os.environ["REWARD_SERVER_TOKEN"]
body = json.dumps({"prompts": ["p"], "responses": ["abc"]}).encode()
def post(headers):
    return json.loads(urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers)).read())
try:
    bare = post({}) and 200
except urllib.error.HTTPError as e:
    bare = e.code
json.dump({"token": token, "launch": os.environ.get("TRE_LAUNCH_TOKEN"), "bare": bare,
           "authed": post({"Authorization": "Bearer " + token})}, open("seen.json", "w"))
"""


def test_reward_server_and_command_share_a_token_no_file_holds(standin_workdir):
    launch_token = "a1" * 32  # as a workflow run would export it
    (standin_workdir / "client.py").write_text(CLIENT)
    proc = _cli("run", "--name", "t", "--log-dir", "logs/t", "--cluster", "debug", "--reward-model", "models/rm/x",
                "--", PY, "client.py", cwd=standin_workdir, env={"TRE_LAUNCH_TOKEN": launch_token})
    assert proc.returncode == 0, proc.stderr
    seen = json.loads((standin_workdir / "seen.json").read_text())
    # the server wants the token the command got; the command never sees the launch token itself
    assert seen == {"token": derived_secret(launch_token, "reward-server"), "launch": None, "bare": 401,
                    "authed": {"rewards": [3.0]}}
    for path in (standin_workdir / "logs").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert seen["token"].encode() not in data and launch_token.encode() not in data, path


def _rendezvous_in_thread(folder, rank, world, results):
    import threading

    def run():
        try:
            results[rank] = multinode.rendezvous(folder, rank, world, "t", timeout_s=30)
        except Exception as e:  # noqa: BLE001 - the test inspects it
            results[rank] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_rendezvous_refuses_connections_without_the_launch_token(tmp_path, monkeypatch):
    import socket
    import stat
    import time

    monkeypatch.setenv("TRE_LAUNCH_TOKEN", "b2" * 32)
    results: dict = {}
    head = _rendezvous_in_thread(tmp_path, 0, 2, results)
    addr_file = tmp_path / "rendezvous-t-0.json"
    deadline = time.monotonic() + 20
    while not addr_file.exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert stat.S_IMODE(addr_file.stat().st_mode) == 0o600
    addr = json.loads(addr_file.read_text())
    # a stranger speaking the plain protocol, and one with a forged MAC, are dropped without joining
    for line in (json.dumps({"rank": 1, "host": "evil", "ip": "203.0.113.9"}),
                 json.dumps({"payload": json.dumps({"rank": 1, "host": "evil"}), "mac": "00" * 32})):
        with socket.create_connection((addr["ip"], addr["port"]), timeout=10) as conn:
            conn.sendall(line.encode() + b"\n")
            conn.settimeout(10)
            assert conn.recv(1024) == b""  # closed on it, no peer table
    # a rank of another launch (another token) is refused too, and learns nothing
    monkeypatch.setenv("TRE_LAUNCH_TOKEN", "c3" * 32)
    stranger: dict = {}
    _rendezvous_in_thread(tmp_path, 1, 2, stranger).join(30)
    assert isinstance(stranger[1], (StepFailed, OSError)), stranger
    monkeypatch.setenv("TRE_LAUNCH_TOKEN", "b2" * 32)
    _rendezvous_in_thread(tmp_path, 1, 2, results).join(30)
    head.join(30)
    assert [p["rank"] for p in results[0]] == [0, 1] and results[0] == results[1]
    assert all(p.get("host") != "evil" for p in results[0])


def test_ray_record_is_owner_only_and_holds_no_secret(tmp_path, monkeypatch):
    import stat

    # a stand-in `ray` that only listens on the --port it is given (the head's GCS port)
    fake = tmp_path / "fake_ray.py"
    fake.write_text("import socket, sys, time\n"
                    "port = int(next(a.split('=')[1] for a in sys.argv if a.startswith('--port=')))\n"
                    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                    "s.bind(('', port)); s.listen(); time.sleep(60)\n")
    monkeypatch.setenv("TRE_LAUNCH_TOKEN", "d4" * 32)
    monkeypatch.setattr(multinode, "wait_ray_nodes", lambda *a, **k: None)
    peers = [{"rank": 0, "ip": multinode.my_ip()}]
    procs: list = []
    try:
        env = multinode.start_ray(tmp_path, 0, 1, peers, {"cpus": 1, "gpus": 0}, procs, [PY, str(fake)],
                                  {"REWARD_SERVER_TOKEN": derived_secret("d4" * 32, "reward-server")})
    finally:
        for proc in procs:
            terminate_group(proc, grace_s=5)
    record = tmp_path / "ray-0.json"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert set(json.loads(record.read_text())) == {"port"}  # Ray's token is derived, not stored
    assert env["RAY_AUTH_TOKEN"] == derived_secret("d4" * 32, "ray-0") != "d4" * 32
    assert env["REWARD_SERVER_TOKEN"] == derived_secret("d4" * 32, "reward-server")
    assert stat.S_IMODE((tmp_path / "rendezvous-ray-head-0.json").stat().st_mode) == 0o600


def _metric_lines(path: Path, steps) -> None:
    with open(path, "a") as f:
        f.writelines(json.dumps({"step": s, "actor/pg_loss": 0.1}) + "\n" for s in steps)


def test_step_progress_prints_step_i_of_n_throttled(tmp_path):
    import io

    run = tmp_path / "runs" / "math" / "tiny" / "tre_k" / "seed0"
    run.mkdir(parents=True)
    now = [0.0]
    out = io.StringIO()
    p = progress.StepProgress("train math/tiny/tre_k/seed0", run, every_s=10.0, stream=out, clock=lambda: now[0])
    p.poll()  # nothing written yet
    (run / "config.json").write_text(json.dumps({"total_steps": 16}))
    _metric_lines(run / "metrics.jsonl", [0])
    p.poll()  # step 0 is the validation before training: no progress yet
    _metric_lines(run / "metrics.jsonl", range(1, 6))
    p.poll()
    now[0] = 3.0
    _metric_lines(run / "metrics.jsonl", [6, 7])
    p.poll()  # throttled: 3 s after the last line
    now[0] = 12.0
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 8, "actor/pg')  # a line being written
    p.poll()
    # a resumed run rewrites the file shorter (truncated to its checkpoint) and goes on
    (run / "metrics.jsonl").write_text("")
    _metric_lines(run / "metrics.jsonl", [0, 1, 2, 3, 4])
    now[0] = 30.0
    p.poll()
    now[0] = 31.0
    _metric_lines(run / "metrics.jsonl", range(5, 17))
    p.poll()  # the last step is always shown
    p.poll()
    assert out.getvalue().splitlines() == ["train math/tiny/tre_k/seed0: step 5/16", "train math/tiny/tre_k/seed0: step 7/16",
                                           "train math/tiny/tre_k/seed0: step 4/16", "train math/tiny/tre_k/seed0: step 16/16"]


def test_step_progress_only_for_steps_with_a_run_dir(tmp_path):
    spec = jobs.StepSpec(name="train", log_dir=tmp_path, cwd=str(tmp_path),
                      argv=[PY, "-m", "tre.backend", "train", "--run-dir", "runs/math/tiny/ppo/seed1", "--seed", "1"])
    p = progress.StepProgress.for_step(spec)
    assert (p.label, p.run_dir) == ("train math/tiny/ppo/seed1", tmp_path / "runs/math/tiny/ppo/seed1")
    assert progress.StepProgress.for_step(jobs.StepSpec(name="evaluate", log_dir=tmp_path, argv=["x", "evaluate", "runs/a"])) is None


def test_training_progress_reaches_the_driving_terminal_not_only_the_log(tmp_path):
    # The rule's shell gives the launcher the terminal on fd 3 (TRE_PROGRESS_FD) and its log on stdout/stderr.
    step = ("d=runs/math/tiny/tre_k/seed0; mkdir -p $d; echo '{\"total_steps\": 3}' > $d/config.json; "
            "for s in 0 1 2 3; do echo \"{\\\"step\\\": $s}\" >> $d/metrics.jsonl; sleep 0.3; done")
    r, w = os.pipe()
    proc = subprocess.run([PY, "-m", "workflow.launcher", "run", "--name", "train", "--log-dir", "logs/train/x",
                           "--cluster", "local", "--", "bash", "-c", step, "_", "--run-dir", "runs/math/tiny/tre_k/seed0"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, pass_fds=(w,),
                          env={**os.environ, progress.PROGRESS_FD_ENV: str(w)})
    os.close(w)
    with os.fdopen(r) as f:
        terminal = f.read().splitlines()
    assert proc.returncode == 0, proc.stderr
    assert terminal and terminal[-1] == "train math/tiny/tre_k/seed0: step 3/3"
    assert all(line.startswith("train math/tiny/tre_k/seed0: step ") for line in terminal)
    assert "step 3/3" not in proc.stderr + proc.stdout  # the log keeps the launcher's own lines
