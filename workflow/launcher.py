"""Submit one workflow step through submitit (slurm, local or debug), wait for it, and record the job.

Every heavy Snakemake rule calls `python -m workflow.launcher run ... -- CMD ...`. The launcher
- picks the executor (`auto`: slurm when `srun` is on PATH and a controller answers, else local; or
  `slurm`, `local`, `debug`),
- writes `<log-dir>/job.json` with the job id *before* waiting, so a rerun after the driver died re-attaches
  to the still-running job instead of submitting a duplicate,
- keeps submitit's folders and logs under `<log-dir>/<jobid>/` (also on success),
- for checkpointable steps (training) answers USR2 (time limit / preemption) by sending SIGTERM to the
  step's process group, waiting for it to save, and requeueing the same command (which resumes),
- for multi-node allocations starts a Ray head on rank 0 and Ray workers on the other ranks,
- optionally runs the HH reward-model server next to the command (readiness via GET /health),
- gives each launch a secret (env TRE_LAUNCH_TOKEN, generated unless the workflow exported one, never written to
  a file): the reward server requires it and the reward client sends it, the ranks' rendezvous messages carry its
  HMAC, and the Ray cluster's token is derived from it; the rendezvous and Ray records are owner-only,
- exits non-zero with one line naming the job state and its log path when the step fails.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import math
import os
import shlex
import shutil
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import submitit

from common.argtypes import int_at_least
from common.files import atomic_write_text

CLUSTERS = ("auto", "slurm", "local", "debug")
ENV_CLUSTER = "TRE_LAUNCHER_CLUSTER"
# The launch's shared secret. It reaches the job through the environment (Slurm exports the submitter's), never
# through submitit's pickles, job.json or a log; REWARD_SERVER_TOKEN, Ray's token and the rendezvous MACs come from it.
TOKEN_ENV = "TRE_LAUNCH_TOKEN"
# The HH reward client's variables (evaluation.tasks.hh.URL_ENV, TOKEN_ENV; a test keeps them equal): spelled here
# because a step's working directory may shadow the evaluation package (the workflow tests' stand-ins do).
REWARD_URL_ENV, REWARD_TOKEN_ENV = "REWARD_SERVER_URL", "REWARD_SERVER_TOKEN"
RENDEZVOUS_MAX_LINE = 1 << 20  # bytes of one rendezvous message; a longer one is refused
# Slurm states in which a recorded job is still worth waiting for (re-attach instead of resubmitting).
ACTIVE_SLURM_STATES = frozenset(
    {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
     "RESIZING", "SUSPENDED", "PREEMPTED", "SIGNALING", "STAGE_OUT"}
)


class LaunchError(Exception):
    """A step was given bad arguments, could not be submitted, or failed."""


class JobFailed(LaunchError):
    """The submitted job ended without a result: the command failed, was killed or timed out."""


class StepFailed(RuntimeError):
    """The step's command exited non-zero inside the job."""


@dataclasses.dataclass(frozen=True)
class Resources:
    """What one step asks the scheduler for (mapped onto submitit parameters)."""

    timeout_min: int = 60
    cpus_per_task: int = 1
    mem_gb: float = 4.0
    gpus_per_node: int = 0
    nodes: int = 1
    tasks_per_node: int = 1
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    signal_delay_s: int = 120
    max_requeue: int = 3
    setup: tuple[str, ...] = ()
    additional: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "resources") -> "Resources":
        """Build from a config mapping; a wrong key or type raises LaunchError naming it."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in fields:
                raise LaunchError(f"{where}.{key}: unknown key (allowed: {', '.join(fields)})")
            kwargs[key] = _check_resource(key, value, where)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (for job.json and the command line)."""
        out = dataclasses.asdict(self)
        out["setup"] = list(self.setup)
        out["additional"] = dict(self.additional)
        return out


def _check_resource(key: str, value: Any, where: str) -> Any:
    ints = {"timeout_min": 1, "cpus_per_task": 1, "gpus_per_node": 0, "nodes": 1, "tasks_per_node": 1,
            "signal_delay_s": 0, "max_requeue": 0}
    if key in ints:
        if isinstance(value, bool) or not isinstance(value, int) or value < ints[key]:
            raise LaunchError(f"{where}.{key}: must be an integer >= {ints[key]}, got {value!r}")
        return value
    if key == "mem_gb":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise LaunchError(f"{where}.mem_gb: must be a positive number, got {value!r}")
        return float(value)
    if key == "setup":
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise LaunchError(f"{where}.setup: must be a list of shell lines, got {value!r}")
        return tuple(value)
    if key == "additional":
        if not isinstance(value, Mapping):
            raise LaunchError(f"{where}.additional: must be a mapping of extra sbatch options, got {value!r}")
        return dict(value)
    if value is not None and not isinstance(value, str):
        raise LaunchError(f"{where}.{key}: must be a string or null, got {value!r}")
    return value


def resolve_cluster(name: Optional[str], which: Callable[[str], Optional[str]] = shutil.which,
                    answers: Optional[Callable[[], bool]] = None) -> str:
    """The executor to use: an explicit name, else $TRE_LAUNCHER_CLUSTER, else slurm when srun exists."""
    name = name or os.environ.get(ENV_CLUSTER) or "auto"
    if name not in CLUSTERS:
        raise LaunchError(f"cluster: must be one of {', '.join(CLUSTERS)}, got {name!r}")
    if name == "auto":
        return "slurm" if which("srun") and (answers or slurm_answers)() else "local"
    return name


def slurm_answers() -> bool:
    """Whether a Slurm controller answers here (srun may be installed on a machine whose Slurm is down)."""
    try:
        proc = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and " is UP" in proc.stdout


def executor_parameters(res: Resources, cluster: str, name: str, *, checkpointable: bool = False) -> dict[str, Any]:
    """submitit update_parameters() keywords for these resources on this executor.

    Only checkpointable steps ask for USR2 `signal_delay_s` before the limit; Slurm sends it from a periodic
    check, so it can come up to a check period early, and a step that cannot checkpoint gains nothing from an
    early signal but could be killed by one arriving before its handler is installed (USR2@0: at the end only).
    """
    if checkpointable and cluster == "slurm" and res.signal_delay_s >= res.timeout_min * 60:
        raise LaunchError(f"resources.signal_delay_s: must be shorter than the time limit "
                          f"({res.timeout_min * 60} s), got {res.signal_delay_s}")
    params: dict[str, Any] = {
        "name": name,
        "timeout_min": res.timeout_min,
        "cpus_per_task": res.cpus_per_task,
        "gpus_per_node": res.gpus_per_node,
        "tasks_per_node": res.tasks_per_node,
    }
    if cluster == "slurm":
        params.update(nodes=res.nodes, mem_gb=res.mem_gb, slurm_signal_delay_s=res.signal_delay_s if checkpointable else 0)
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(res, key) is not None:
                params[f"slurm_{key}"] = getattr(res, key)
        if res.setup:
            params["slurm_setup"] = list(res.setup)
        if res.additional:
            params["slurm_additional_parameters"] = dict(res.additional)
    elif res.nodes > 1:
        raise LaunchError(f"resources.nodes: {res.nodes} nodes need the slurm cluster, not {cluster!r}")
    return params


# ----------------------------------------------------------------------------------------------- in the job


def _ignore_usr2() -> None:
    # Slurm's --signal reaches every process of the step; USR2 is the launcher's cue, and its default action
    # would kill the command outright. The command is told to save with SIGTERM instead (see checkpoint()).
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def wait_http_ok(url: str, timeout_s: float, alive: Callable[[], bool] = lambda: True) -> None:
    """Poll url until it answers 200; raise StepFailed on timeout or when alive() turns False."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            raise StepFailed(f"server behind {url} exited before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.5)
    raise StepFailed(f"{url} not ready after {timeout_s:.0f} s")


class RewardServer:
    """The HH reward-model server as a child process, for the lifetime of one step."""

    def __init__(self, model_dir: str, host: str, log_path: Path, ready_timeout_s: float = 900.0,
                 cwd: Optional[str] = None, env: Optional[Mapping[str, str]] = None) -> None:
        self.model_dir, self.host, self.log_path, self.cwd = model_dir, host, log_path, cwd
        self.env = dict(env) if env is not None else None  # carries REWARD_SERVER_TOKEN, never argv (ps shows it)
        self.ready_timeout_s = ready_timeout_s
        self.port = free_port()
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        """The /predict URL the HH reward client reads from REWARD_SERVER_URL (with REWARD_SERVER_TOKEN)."""
        return f"http://{self.host}:{self.port}/predict"

    def start(self) -> str:
        """Start the server, wait for GET /health, return the /predict URL."""
        argv = [sys.executable, "-m", "evaluation.reward_model", "serve", "--model", self.model_dir,
                "--host", self.host, "--port", str(self.port)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True, preexec_fn=_ignore_usr2)
        try:
            wait_http_ok(f"http://{self.host}:{self.port}/health", self.ready_timeout_s,
                         alive=lambda: self.proc is not None and self.proc.poll() is None)
        except StepFailed as e:
            self.stop()
            raise StepFailed(f"reward server: {e}; log: {self.log_path}") from None
        return self.url

    def stop(self) -> None:
        """Terminate the server (its whole process group)."""
        if self.proc is not None:
            terminate_group(self.proc, grace_s=10)
            self.proc = None


def _reap(proc: subprocess.Popen) -> bool:
    """Collect proc's exit status if it has exited (without Popen's lock, see terminate_group)."""
    if proc.returncode is not None:
        return True
    try:
        pid, status = os.waitpid(proc.pid, os.WNOHANG)
    except ChildProcessError:  # already reaped elsewhere
        proc.returncode = -1
        return True
    if pid == 0:
        return False
    proc.returncode = os.waitstatus_to_exitcode(status)
    return True


def terminate_group(proc: subprocess.Popen, grace_s: float) -> Optional[int]:
    """SIGTERM the process group of proc, wait up to grace_s, then SIGKILL it; return its exit code.

    Runs inside submitit's USR2 handler, possibly while the interrupted main thread is in a Popen call that
    holds Popen's internal wait lock; Popen.wait() here could deadlock, so the child is reaped with waitpid."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30.0)):
        if _reap(proc):
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + wait_s
        while not _reap(proc) and time.monotonic() < deadline:
            time.sleep(0.1)
    return proc.returncode


def wait_child(proc: subprocess.Popen, poll_s: float = 0.5) -> int:
    """Wait for proc by polling, so that signal handlers (USR2 -> checkpoint) run promptly and lock-free."""
    while not _reap(proc):
        time.sleep(poll_s)
    return proc.returncode


def _restart_count() -> int:
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)


def launch_token() -> str:
    """This job's launch secret from env TRE_LAUNCH_TOKEN (set by `launch` on the submitting side)."""
    token = os.environ.get(TOKEN_ENV)
    if not token:
        raise StepFailed(f"{TOKEN_ENV} is not set in the job; submit it with `python -m workflow.launcher run`")
    return token


def derived_secret(token: str, purpose: str) -> str:
    """A secret for one purpose (Ray's cluster token, ...) derived from the launch token."""
    return hmac.new(token.encode(), purpose.encode(), hashlib.sha256).hexdigest()


def _sealed(token: str, context: str, payload: Any) -> bytes:
    """One rendezvous line: the payload and its HMAC-SHA256 under the token, bound to this rendezvous."""
    body = json.dumps(payload, sort_keys=True)
    mac = hmac.new(token.encode(), f"{context}\n{body}".encode(), hashlib.sha256).hexdigest()
    return (json.dumps({"payload": body, "mac": mac}) + "\n").encode()


def _opened(token: str, context: str, line: str) -> Any:
    """The payload of a sealed line; ValueError when it is malformed or its MAC is not the token's."""
    msg = json.loads(line)
    if not isinstance(msg, dict) or not isinstance(msg.get("payload"), str) or not isinstance(msg.get("mac"), str):
        raise ValueError("not a sealed rendezvous message")
    want = hmac.new(token.encode(), f"{context}\n{msg['payload']}".encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want, msg["mac"]):
        raise ValueError("wrong MAC")
    return json.loads(msg["payload"])


def rendezvous(folder: Path, rank: int, world: int, tag: str, timeout_s: float = 600.0,
               info: Optional[Mapping[str, Any]] = None) -> list[dict[str, Any]]:
    """All ranks of one allocation meet over TCP: rank 0 listens on its node's address (written to an owner-only
    file in the job folder), the others connect; every rank gets back the list of {rank, host, ip} of all ranks.

    Every message carries an HMAC under the launch token (TRE_LAUNCH_TOKEN): rank 0 drops connections that cannot
    show one, and the others accept only a reply that does."""
    token = launch_token()
    restart = _restart_count()
    context = f"{tag}:{restart}:{world}"
    addr_file = folder / f"rendezvous-{tag}-{restart}.json"
    me = {"rank": rank, "host": socket.gethostname(), "ip": _my_ip(),
          "node": os.environ.get("SLURMD_NODENAME", socket.gethostname()), **(info or {})}
    deadline = time.monotonic() + timeout_s
    if rank == 0:
        peers = {0: me}
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            srv.bind((me["ip"], 0))
            srv.listen(world)
            atomic_write_text(addr_file, json.dumps({"ip": me["ip"], "port": srv.getsockname()[1]}), private=True)
            conns = []
            try:
                while len(peers) < world:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise StepFailed(f"rank 0: only {len(peers)} of {world} ranks met at {tag} "
                                         f"after {timeout_s:.0f} s")
                    srv.settimeout(left)
                    try:
                        conn, _ = srv.accept()
                    except socket.timeout:
                        continue
                    conn.settimeout(min(30.0, max(left, 1.0)))
                    try:
                        peer = _opened(token, context, _recv_line(conn))
                        if not isinstance(peer, dict) or not isinstance(peer.get("rank"), int) \
                                or not 0 < peer["rank"] < world:
                            raise ValueError("not a rank of this allocation")
                    except (ValueError, OSError) as e:  # a stranger, or a rank from another launch: not counted
                        print(f"[launcher] rendezvous {tag}: refused a connection ({e})", file=sys.stderr, flush=True)
                        conn.close()
                        continue
                    peers[peer["rank"]] = peer
                    conns.append(conn)
                table = [peers[r] for r in sorted(peers)]
                for conn in conns:
                    conn.sendall(_sealed(token, context, table))
            finally:
                for conn in conns:
                    conn.close()
        return table
    while not addr_file.exists():
        if time.monotonic() > deadline:
            raise StepFailed(f"rank {rank}: no rendezvous file {addr_file} after {timeout_s:.0f} s")
        time.sleep(0.2)
    head = json.loads(addr_file.read_text())
    with socket.create_connection((head["ip"], head["port"]), timeout=timeout_s) as conn:
        conn.sendall(_sealed(token, context, me))
        try:
            return _opened(token, context, _recv_line(conn))
        except ValueError as e:
            raise StepFailed(f"rank {rank}: rendezvous {tag} at {head['ip']}:{head['port']} did not answer with "
                             f"this launch's token ({e})") from None


def _recv_line(conn: socket.socket) -> str:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) > RENDEZVOUS_MAX_LINE:
            raise ValueError(f"message longer than {RENDEZVOUS_MAX_LINE} bytes")
    return buf.decode(errors="replace")


def _my_ip() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"



def _ray_cli() -> list[str]:
    """The `ray` CLI of this Python environment (the venv may not be on PATH inside a job)."""
    sibling = Path(sys.executable).with_name("ray")
    return [str(sibling)] if sibling.exists() else ["ray"]


@dataclasses.dataclass
class Command:
    """The callable submitted to the cluster: run argv (one step), optionally with Ray and the reward server."""

    argv: list[str]
    cwd: str
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    reward_model: Optional[str] = None
    ray: bool = False
    ray_cmd: list[str] = dataclasses.field(default_factory=lambda: _ray_cli())
    term_grace_s: float = 60.0
    reward_ready_timeout_s: float = 900.0
    cpu_threads: Optional[int] = None  # OMP_NUM_THREADS for the command unless the environment sets it

    def __post_init__(self) -> None:
        self._proc: Optional[subprocess.Popen] = None
        self._server: Optional[RewardServer] = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_proc"], state["_server"] = None, None  # live handles never travel with a (re)submission
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __call__(self) -> dict[str, Any]:
        env = _job_env()
        folder = Path(env["folder"])
        if env["num_tasks"] > 1:
            return self._run_group(env, folder)
        return self._run_command({}, folder, env)

    def _run_command(self, extra_env: dict[str, str], folder: Path, env: dict[str, Any]) -> dict[str, Any]:
        start = time.time()
        run_env = {**child_environ(), **self.env, **extra_env}
        if run_env.get("CUDA_VISIBLE_DEVICES") == "":
            # submitit's local executor sets it empty for 0 GPUs; Ray then refuses the placeholder GPU that verl's
            # CPU path asks for. Without GPUs there is nothing to hide, so leave it unset.
            del run_env["CUDA_VISIBLE_DEVICES"]
        if self.cpu_threads and "OMP_NUM_THREADS" not in run_env:
            run_env["OMP_NUM_THREADS"] = str(self.cpu_threads)
        try:
            if self.reward_model:
                host = "127.0.0.1" if env["num_tasks"] == 1 else _my_ip()
                run_env[REWARD_TOKEN_ENV] = reward_token()
                self._server = RewardServer(self.reward_model, host, folder / "reward_server.log",
                                            self.reward_ready_timeout_s, cwd=self.cwd,
                                            env={**child_environ(), REWARD_TOKEN_ENV: run_env[REWARD_TOKEN_ENV]})
                run_env[REWARD_URL_ENV] = self._server.start()
            print(f"[launcher] {shlex.join(self.argv)}", flush=True)
            self._proc = subprocess.Popen(self.argv, cwd=self.cwd, env=run_env, start_new_session=True,
                                          preexec_fn=_ignore_usr2)
            rc = wait_child(self._proc)
        finally:
            if self._server is not None:
                self._server.stop()
                self._server = None
        self._proc = None
        if rc != 0:
            raise StepFailed(f"command exited with code {rc}: {shlex.join(self.argv)}")
        return {"returncode": rc, "wall_s": round(time.time() - start, 3), "host": socket.gethostname(),
                "job_id": env["job_id"], "restarts": _restart_count(), "rank": env["rank"]}

    def _run_group(self, env: dict[str, Any], folder: Path) -> dict[str, Any]:
        """One task per node: meet, (start Ray: head on rank 0, workers elsewhere), run argv on rank 0."""
        rank, world = env["rank"], env["num_tasks"]
        peers = rendezvous(folder, rank, world, "peers")
        head = peers[0]
        done = folder / f"done-{_restart_count()}"
        extra = {"MASTER_ADDR": head["ip"], "WORLD_SIZE": str(world), "NODE_RANK": str(rank)}
        ray_procs: list[subprocess.Popen] = []
        try:
            if self.ray:
                extra.update(self._start_ray(folder, rank, world, peers, env, ray_procs))
            if rank == 0:
                result = self._run_command(extra, folder, env)
            else:
                while not done.exists():  # rank 0 writes it when the command has finished (or failed)
                    time.sleep(1)
                result = {"returncode": 0, "host": socket.gethostname(), "job_id": env["job_id"],
                          "restarts": _restart_count(), "rank": rank}
        finally:
            if rank == 0:
                atomic_write_text(done, "done\n")
            for proc in reversed(ray_procs):  # only the Ray processes this task started, never `ray stop`
                terminate_group(proc, grace_s=20)
        result["peers"] = peers
        return result

    def _start_ray(self, folder: Path, rank: int, world: int, peers: list[dict[str, Any]], env: dict[str, Any],
                   procs: list[subprocess.Popen]) -> dict[str, str]:
        """Ray head on rank 0, then a worker on every other rank; returns the env that reaches the cluster.

        A per-launch token (Ray's token auth, derived from TRE_LAUNCH_TOKEN; ray-N.json holds only the port) keeps
        other Ray clusters on the same hosts out; each `ray start --block` runs in its own process group, which is
        what gets stopped at the end."""
        restart = _restart_count()
        info_path = folder / f"ray-{restart}.json"
        if rank == 0:
            atomic_write_text(info_path, json.dumps({"port": free_port()}), private=True)
        while not info_path.exists():
            time.sleep(0.2)
        info = json.loads(info_path.read_text())
        address = f"{peers[0]['ip']}:{info['port']}"
        ray_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": derived_secret(launch_token(), f"ray-{restart}")}
        if self.reward_model:  # the HH reward client may run in a Ray worker on any node
            ray_env[REWARD_TOKEN_ENV] = reward_token()
        common = [f"--num-cpus={env['cpus'] or os.cpu_count() or 1}", f"--num-gpus={env['gpus']}",
                  f"--node-ip-address={peers[rank]['ip']}", "--disable-usage-stats", "--block"]
        log = folder / f"ray-{restart}-rank{rank}.log"

        def start(args: list[str]) -> None:
            with open(log, "ab") as out:
                procs.append(subprocess.Popen(self.ray_cmd + ["start", *args, *common], stdout=out,
                                              stderr=subprocess.STDOUT, env={**child_environ(), **ray_env},
                                              start_new_session=True, preexec_fn=_ignore_usr2))

        def head_up() -> None:
            if rank == 0:
                start(["--head", f"--port={info['port']}", "--include-dashboard=false"])
                _wait_tcp(peers[0]["ip"], info["port"], 300, alive=lambda: procs[-1].poll() is None, log=log)

        def workers_joined() -> None:
            if rank != 0:
                start([f"--address={address}"])
            else:
                _wait_ray_nodes(address, world, ray_env, timeout_s=300)

        _phase(folder, rank, world, "ray-head", head_up)  # workers join only once the head is up
        _phase(folder, rank, world, "ray-joined", workers_joined)
        return {"RAY_ADDRESS": address, **ray_env}


def _phase(folder: Path, rank: int, world: int, tag: str, fn: Callable[[], None]) -> None:
    """Run fn on this rank, then meet the others; if any rank failed, every rank raises its error."""
    error = None
    try:
        fn()
    except (StepFailed, OSError, subprocess.SubprocessError) as e:
        error = f"rank {rank}: {e}"
    status = rendezvous(folder, rank, world, tag, info={"error": error})
    errors = [p["error"] for p in status if p.get("error")]
    if errors:
        raise StepFailed(f"{tag}: " + "; ".join(errors))


def _wait_tcp(host: str, port: int, timeout_s: float, alive: Callable[[], bool], log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            raise StepFailed(f"process exited before {host}:{port} answered; log: {log}")
        try:
            with socket.create_connection((host, port), timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise StepFailed(f"{host}:{port} not answering after {timeout_s:.0f} s; log: {log}")


def _wait_ray_nodes(address: str, world: int, ray_env: dict[str, str], timeout_s: float) -> None:
    """Wait until the Ray cluster at address has world alive nodes (asked in a subprocess: no ray import here)."""
    code = ("import ray, sys, time\n"
            f"ray.init(address={address!r}, logging_level='ERROR')\n"
            f"deadline = time.time() + {timeout_s}\n"
            f"while sum(n['Alive'] for n in ray.nodes()) < {world}:\n"
            "    if time.time() > deadline: sys.exit('only %d nodes joined' % sum(n['Alive'] for n in ray.nodes()))\n"
            "    time.sleep(1)\n")
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, **ray_env}, capture_output=True,
                          text=True, timeout=timeout_s + 120, preexec_fn=_ignore_usr2)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise StepFailed(f"Ray cluster at {address} incomplete: {tail}")


class CheckpointableCommand(Command, submitit.helpers.Checkpointable):
    """A Command that survives time limits and preemption: it is requeued and the command resumes itself."""

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Let the running command save (SIGTERM + grace period), then resubmit the same command."""
        if self._proc is not None:
            print(f"[launcher] checkpoint: SIGTERM to pid {self._proc.pid}, up to {self.term_grace_s:.0f} s to save",
                  flush=True)
            terminate_group(self._proc, self.term_grace_s)
            self._proc = None
        if self._server is not None:
            self._server.stop()
            self._server = None
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def child_environ() -> dict[str, str]:
    """This process's environment less the launch token: commands and servers get only what derives from it."""
    return {k: v for k, v in os.environ.items() if k != TOKEN_ENV}


def reward_token() -> str:
    """The reward server's token for this launch (REWARD_SERVER_TOKEN of server and client), derived from it."""
    return derived_secret(launch_token(), "reward-server")


def _job_env() -> dict[str, Any]:
    """Rank, world size, job id and job folder of the current submitit task."""
    try:
        env = submitit.JobEnvironment()
        folder = env.paths.folder
        rank, num_tasks, job_id = env.global_rank, env.num_tasks, env.job_id
    except (RuntimeError, KeyError):  # the debug executor runs in-process, without a job environment
        folder, rank, num_tasks, job_id = Path.cwd(), 0, 1, "debug"
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    gpus = os.environ.get("SLURM_GPUS_ON_NODE") or os.environ.get("SLURM_GPUS_PER_NODE") or "0"
    return {"folder": str(folder), "rank": rank, "num_tasks": num_tasks, "job_id": str(job_id),
            "cpus": int(cpus) if cpus else None, "gpus": int(gpus.split(":")[-1]) if gpus else 0}


# ----------------------------------------------------------------------------------------- on the driver


@dataclasses.dataclass
class StepSpec:
    """One step to launch: its command, where its logs go, and what it needs."""

    name: str
    log_dir: Path
    argv: list[str]
    resources: Resources = dataclasses.field(default_factory=Resources)
    cluster: str = "auto"
    checkpointable: bool = False
    reward_model: Optional[str] = None
    ray: bool = False
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    cwd: Optional[str] = None
    term_grace_s: float = 60.0

    def fingerprint(self) -> str:
        """Identifies the step's command so that a rerun re-attaches only to the same work."""
        blob = json.dumps({"argv": self.argv, "reward_model": self.reward_model, "ray": self.ray}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def command(self) -> Command:
        """The callable the job runs."""
        cls = CheckpointableCommand if self.checkpointable else Command
        # A CPU-only step's torch threads are capped at its CPUs: otherwise each of its processes (Ray driver,
        # TaskRunner, workers) sizes its pool to the whole machine, and two steps side by side on 2 cores took
        # twice as long (measured: a pair of 20-step tiny PPO runs 173 s vs 88 s). GPU steps keep Ray's defaults.
        threads = self.resources.cpus_per_task if not self.resources.gpus_per_node else None
        return cls(argv=list(self.argv), cwd=self.cwd or os.getcwd(), env=dict(self.env),
                   reward_model=self.reward_model, ray=self.ray, term_grace_s=self.term_grace_s, cpu_threads=threads)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def read_record(log_dir: Path) -> Optional[dict[str, Any]]:
    """The job.json of a log dir, or None when there is none (or it is unreadable)."""
    try:
        return json.loads((log_dir / "job.json").read_text())
    except (OSError, ValueError):
        return None


def write_record(log_dir: Path, record: Mapping[str, Any]) -> None:
    """Write job.json atomically."""
    atomic_write_text(log_dir / "job.json", json.dumps(record, indent=2, sort_keys=True) + "\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        return "submitit" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def slurm_state(job_id: str) -> str:
    """The job's Slurm state from sacct (falls back to squeue), upper-case first word, or UNKNOWN."""
    for argv in (["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id],
                 ["squeue", "-h", "-o", "%T", "-j", job_id]):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.split()
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out:
            return out[0].upper()
    return "UNKNOWN"


def attach(spec: StepSpec, cluster: str, state_of: Callable[[str], str] = slurm_state) -> Optional[submitit.Job]:
    """The still-running job recorded for this same step, or None when a new one must be submitted."""
    rec = read_record(spec.log_dir)
    if not rec or rec.get("fingerprint") != spec.fingerprint() or rec.get("cluster") != cluster:
        return None
    if rec.get("state") not in ("submitted", "running"):
        return None
    job_id, folder = str(rec["job_id"]), spec.log_dir / "%j"
    tasks = tuple(range(int(rec.get("num_tasks", 1))))
    if cluster == "slurm" and state_of(job_id) in ACTIVE_SLURM_STATES:
        return submitit.SlurmJob(folder=folder, job_id=job_id, tasks=tasks)
    if cluster == "local" and job_id.isdigit() and _pid_alive(int(job_id)):
        return submitit.LocalJob(folder=folder, job_id=job_id, tasks=tasks)
    return None


PROGRESS_FD_ENV = "TRE_PROGRESS_FD"  # a rule's shell keeps the terminal on this fd while the launcher's output goes to its log


class StepProgress:
    """Prints `<name> <run>: step i/N` to the driving terminal as a training job's metrics.jsonl grows (throttled).

    Reads only the new bytes of metrics.jsonl (one line per step) and config.json's total_steps, so it costs the
    wait loop nothing and works for any executor whose run directory the driver can see (local, shared-FS Slurm).
    """

    def __init__(self, label: str, run_dir: Path, every_s: float = 10.0, stream=None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label, self.run_dir, self.every_s, self.clock = label, Path(run_dir), every_s, clock
        self.stream = stream if stream is not None else _progress_stream()
        self.offset, self.step, self.shown, self.last_print = 0, 0, 0, -math.inf
        self.total: Optional[int] = None

    @classmethod
    def for_step(cls, spec: "StepSpec") -> Optional["StepProgress"]:
        """A watcher for a step whose command trains into `--run-dir DIR`, else None."""
        argv = list(spec.argv)
        run_dir = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--run-dir"), None)
        run_dir = run_dir or next((a.split("=", 1)[1] for a in argv if a.startswith("--run-dir=")), None)
        if run_dir is None:
            return None
        path = Path(run_dir) if Path(run_dir).is_absolute() else Path(spec.cwd or os.getcwd()) / run_dir
        return cls(f"{spec.name} {Path(run_dir).as_posix().removeprefix('runs/')}", path)

    def _read(self) -> None:
        path = self.run_dir / "metrics.jsonl"
        try:
            size = path.stat().st_size
            if size < self.offset:  # rewritten shorter: a resumed run truncated past its checkpoint
                self.offset, self.step, self.shown = 0, 0, 0
            with open(path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read(size - self.offset)
        except OSError:
            return
        done = chunk.rfind(b"\n") + 1  # a torn last line is read again next time, whole
        self.offset += done
        for line in chunk[:done].splitlines():
            try:
                self.step = max(self.step, int(json.loads(line).get("step", 0)))
            except (ValueError, TypeError, AttributeError):
                continue
        if self.total is None:
            try:
                total = json.loads((self.run_dir / "config.json").read_text()).get("total_steps")
                self.total = int(total) if total else None
            except (OSError, ValueError, TypeError, AttributeError):
                pass

    def poll(self) -> None:
        """Print the latest step if it moved and `every_s` has passed (the last step always)."""
        self._read()
        now = self.clock()
        if self.step > self.shown and (now - self.last_print >= self.every_s or self.step == self.total):
            of = f"/{self.total}" if self.total else ""
            try:
                print(f"{self.label}: step {self.step}{of}", file=self.stream, flush=True)
            except (OSError, ValueError):  # the terminal went away; the job goes on
                return
            self.shown, self.last_print = self.step, now


def _progress_stream():
    """The driving terminal: the fd named by $TRE_PROGRESS_FD when the rule kept one open, else stderr."""
    fd = os.environ.get(PROGRESS_FD_ENV, "")
    if fd.isdigit():
        try:
            return os.fdopen(int(fd), "w", closefd=False)
        except OSError:
            pass
    return sys.stderr


def _wait(job: submitit.Job, cluster: str, poll_s: float = 1.0, force_every_s: float = 15.0,
          on_poll: Callable[[], None] = lambda: None) -> None:
    if cluster == "debug":
        return  # the debug executor runs the step inside result()
    if cluster == "local" and getattr(job, "_process", None) is None:
        # a re-attached local job: its process is not ours, so follow its pid
        while _pid_alive(int(job.job_id)):
            on_poll()
            time.sleep(poll_s)
        return
    last_force = time.monotonic()
    while True:
        force = time.monotonic() - last_force >= force_every_s
        if force:
            last_force = time.monotonic()
        if job.done(force_check=force):
            on_poll()
            return
        on_poll()
        time.sleep(poll_s)


def launch(spec: StepSpec) -> dict[str, Any]:
    """Submit (or re-attach to) the step, wait for it, record the outcome; raise LaunchError if it failed."""
    cluster = resolve_cluster(spec.cluster)
    spec.log_dir.mkdir(parents=True, exist_ok=True)
    params = executor_parameters(spec.resources, cluster, spec.name, checkpointable=spec.checkpointable)
    # the job inherits the environment (sbatch exports it; local and debug jobs are our children or ourselves)
    os.environ.setdefault(TOKEN_ENV, secrets.token_hex(32))
    num_tasks = spec.resources.nodes * spec.resources.tasks_per_node
    job = attach(spec, cluster) if cluster != "debug" else None
    record = {"name": spec.name, "cluster": cluster, "fingerprint": spec.fingerprint(), "argv": spec.argv,
              "resources": spec.resources.to_dict(), "num_tasks": num_tasks, "log_dir": str(spec.log_dir)}
    if job is not None:
        prev = read_record(spec.log_dir) or {}
        record.update(job_id=job.job_id, state="running", submitted=prev.get("submitted"), attached=_now())
        print(f"[launcher] {spec.name}: re-attaching to job {job.job_id} ({cluster})", file=sys.stderr, flush=True)
    else:
        kwargs = {"slurm_max_num_timeout": spec.resources.max_requeue} if cluster == "slurm" else {}
        executor = submitit.AutoExecutor(folder=spec.log_dir / "%j", cluster=cluster, **kwargs)
        executor.update_parameters(**params)
        try:
            job = executor.submit(spec.command())
        except Exception as e:  # sbatch refusing the request, no Slurm controller, ...
            raise JobFailed(f"{spec.name}: submission to {cluster} failed: {str(e).strip().splitlines()[-1]}") from e
        record.update(job_id=job.job_id, state="submitted", submitted=_now())
        print(f"[launcher] {spec.name}: submitted job {job.job_id} ({cluster}); logs in {spec.log_dir}",
              file=sys.stderr, flush=True)
    write_record(spec.log_dir, record)  # before waiting: a rerun finds the job id and re-attaches
    started = time.time()
    try:
        return _wait_and_record(spec, job, cluster, record, started)
    finally:
        _remove_if_empty(spec.log_dir / "%j")  # submitit also makes the unexpanded folder


def _wait_and_record(spec: StepSpec, job: submitit.Job, cluster: str, record: dict[str, Any],
                     started: float) -> dict[str, Any]:
    progress = StepProgress.for_step(spec)
    try:
        _wait(job, cluster, on_poll=progress.poll if progress else (lambda: None))
        if cluster == "debug":
            # DebugJob.results() opens pdb on an error; exception() runs the step without that detour
            error = job.exception()
            if error is not None:
                raise error
        results = job.results()
        if progress:
            progress.poll()  # the debug executor ran the step inside results(): its last step shows now
    except KeyboardInterrupt:
        raise
    except Exception as e:
        # only Slurm knows why (FAILED, TIMEOUT, CANCELLED, OUT_OF_MEMORY, ...); local processes just failed
        state = _job_state(job, cluster) if cluster == "slurm" else "FAILED"
        log = _log_path(job)
        record.update(state="failed", job_state=state, finished=_now(), stderr=log)
        write_record(spec.log_dir, record)
        reason = _failure_reason(e)
        raise JobFailed(f"{spec.name}: job {job.job_id} failed ({state}{': ' + reason if reason else ''}); "
                          f"log: {log}") from None
    record.update(state="completed", job_state=_job_state(job, cluster), finished=_now(),
                  wait_s=round(time.time() - started, 3), results=results, stderr=_log_path(job))
    write_record(spec.log_dir, record)
    return record


def _remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _job_state(job: submitit.Job, cluster: str) -> str:
    if cluster == "debug":
        return "DEBUG"
    if cluster == "slurm":
        return slurm_state(str(job.job_id))
    try:
        return str(job.state)
    except Exception:  # submitit raises various errors for vanished local processes
        return "UNKNOWN"


def _log_path(job: submitit.Job) -> str:
    try:
        return str(job.paths.stderr)
    except Exception:
        return "?"


def _failure_reason(e: BaseException) -> str:
    if isinstance(e, StepFailed):
        return str(e)
    text = str(e)
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith(("StepFailed:", "workflow.launcher.StepFailed:")):
            return line.split(":", 1)[1].strip()
    for line in text.strip().splitlines():
        if "has not produced any output" in line or "not requeued" in line:
            return line.strip()
    return ""


def launch_array(name: str, log_dir: Path, commands: Sequence[Sequence[str]], *, resources: Resources,
                 cluster: str = "auto", parallelism: int = 64, cwd: Optional[str] = None) -> list[dict[str, Any]]:
    """Submit many commands as one job array (one sbatch --array on Slurm); wait; raise if any failed."""
    cluster = resolve_cluster(cluster)
    log_dir.mkdir(parents=True, exist_ok=True)
    executor = submitit.AutoExecutor(folder=log_dir / "%j", cluster=cluster)
    params = executor_parameters(resources, cluster, name)
    if cluster == "slurm":
        params["slurm_array_parallelism"] = parallelism
    executor.update_parameters(**params)
    fns = [Command(argv=list(c), cwd=cwd or os.getcwd()) for c in commands]
    with executor.batch():
        jobs = [executor.submit(fn) for fn in fns]
    _remove_if_empty(log_dir / "%j")
    write_record(log_dir, {"name": name, "cluster": cluster, "state": "submitted", "submitted": _now(),
                           "job_ids": [j.job_id for j in jobs], "log_dir": str(log_dir)})
    out, failed = [], []
    for j in jobs:
        try:
            _wait(j, cluster)
            out.append({"job_id": j.job_id, "state": "completed", **j.result()})
        except Exception as e:
            failed.append(f"{j.job_id} ({_failure_reason(e) or _job_state(j, cluster)}); log: {_log_path(j)}")
            out.append({"job_id": j.job_id, "state": "failed", "stderr": _log_path(j)})
    write_record(log_dir, {"name": name, "cluster": cluster, "state": "failed" if failed else "completed",
                           "finished": _now(), "tasks": out, "log_dir": str(log_dir)})
    _remove_if_empty(log_dir / "%j")
    if failed:
        raise JobFailed(f"{name}: {len(failed)}/{len(jobs)} array tasks failed: " + "; ".join(failed))
    return out


def supersede_if_changed(run_dir: Path, stamp: Path, spec_json: str) -> Optional[Path]:
    """If run_dir was made with a different spec than spec_json, move it aside (never delete) and return where.

    Snakemake reruns a training step when its parameters change; the old run dir would otherwise be resumed
    from its checkpoints by the new run."""
    new = json.loads(spec_json)
    moved = None
    old = json.loads(stamp.read_text()) if stamp.exists() else None
    if old is not None and old != new and run_dir.exists():
        # outside runs/: whatever collects runs/ must not pick the old run up
        parts = run_dir.parts
        base = Path(f"{parts[0]}.superseded", *parts[1:]) if len(parts) > 1 else Path(f"{run_dir}.superseded")
        moved = base.with_name(f"{base.name}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}")
        moved.parent.mkdir(parents=True, exist_ok=True)
        os.replace(run_dir, moved)
    atomic_write_text(stamp, json.dumps(new, indent=2, sort_keys=True) + "\n")
    return moved


# ------------------------------------------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        sys.stderr.write(f"launcher: {message}\n")
        raise SystemExit(2)


def _parse_resources(text: str) -> Resources:
    try:
        data = json.loads(text)
    except ValueError as e:
        raise LaunchError(f"--resources: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise LaunchError("--resources: must be a JSON object")
    return Resources.from_mapping(data)


def build_parser() -> argparse.ArgumentParser:
    """The launcher's command line."""
    p = _Parser(prog="python -m workflow.launcher", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    common = _Parser(add_help=False)
    common.add_argument("--name", required=True, help="job name (the rule)")
    common.add_argument("--log-dir", required=True, type=Path, help="logs/<rule>/<wildcards>/")
    common.add_argument("--cluster", default=None, help=f"one of {', '.join(CLUSTERS)} (default: ${ENV_CLUSTER} or auto)")
    common.add_argument("--resources", default="{}", help="JSON object of resources (timeout_min, nodes, ...)")
    run = sub.add_parser("run", parents=[common], help="run one command as one job and wait for it")
    run.add_argument("--checkpointable", action="store_true", help="requeue on time limit/preemption")
    run.add_argument("--reward-model", default=None, help="serve this reward model next to the command")
    run.add_argument("--ray", action="store_true", help="multi-node: Ray head on rank 0, workers elsewhere")
    run.add_argument("--term-grace-s", type=float, default=60.0, help="seconds the command gets to save")
    run.add_argument("--record", type=Path, default=None, help="also write the outcome JSON here (rule output)")
    run.add_argument("--supersede", nargs=2, metavar=("RUN_DIR", "SPEC_JSON"), default=None,
                     help="move RUN_DIR aside when it was made with a different spec")
    run.add_argument("argv", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    arr = sub.add_parser("array", parents=[common], help="run one command per line of a file as a job array")
    arr.add_argument("--commands", required=True, type=Path, help="file with one shell-quoted command per line")
    arr.add_argument("--parallelism", type=int_at_least(1), default=64)
    st = sub.add_parser("status", help="print the recorded job of a log dir")
    st.add_argument("--log-dir", required=True, type=Path)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point."""
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "status":
            rec = read_record(args.log_dir)
            if rec is None:
                raise LaunchError(f"--log-dir: no job.json in {args.log_dir}")
            print(json.dumps(rec, indent=2, sort_keys=True))
            return 0
        resources = _parse_resources(args.resources)
        if args.cmd == "array":
            if not args.commands.is_file():
                raise LaunchError(f"--commands: no such file {str(args.commands)!r}")
            lines = [ln for ln in args.commands.read_text().splitlines() if ln.strip()]
            out = launch_array(args.name, args.log_dir, [shlex.split(ln) for ln in lines], resources=resources,
                               cluster=args.cluster, parallelism=args.parallelism)
            print(json.dumps(out, indent=2))
            return 0
        cmd = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not cmd:
            raise LaunchError("command: missing; give it after `--`")
        if args.supersede:
            moved = supersede_if_changed(Path(args.supersede[0]), args.log_dir / "spec.json", args.supersede[1])
            if moved:
                print(f"[launcher] {args.name}: spec changed; previous run moved to {moved}", file=sys.stderr)
        spec = StepSpec(name=args.name, log_dir=args.log_dir, argv=cmd, resources=resources, cluster=args.cluster,
                        checkpointable=args.checkpointable, reward_model=args.reward_model, ray=args.ray,
                        term_grace_s=args.term_grace_s)
        record = launch(spec)
        if args.record:
            atomic_write_text(args.record, json.dumps(record, indent=2, sort_keys=True) + "\n")
        return 0
    except LaunchError as e:
        print(f"launcher: {e}", file=sys.stderr)
        return 1 if isinstance(e, JobFailed) else 2


if __name__ == "__main__":
    # Run through the importable module, not __main__: the submitted Command is then pickled by reference to
    # workflow.launcher (importable in the job) rather than by value.
    from workflow.launcher import main as _main

    sys.exit(_main())
