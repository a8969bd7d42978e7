"""The reward server as a child process: start `python -m evaluation.reward_model serve`, wait for GET /health, hand
out its /predict URL and token (as the HH reward client's environment), stop it.

`shared_server` is the same server shared by the steps of one machine (the local launcher's HH training and
evaluation steps): the first step starts it, the next ones find it, and it exits on its own once idle."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from common.files import atomic_write_text
from common.processes import free_port, terminate_group, terminate_pid_group
from evaluation.tasks.hh import TOKEN_ENV, URL_ENV

READY_TIMEOUT_S = 900.0  # loading a 7B reward model onto its GPUs
STOP_GRACE_S = 10.0
SHARED_IDLE_EXIT_S = 300.0  # a shared server exits after this long without a request ...
KEEPALIVE_S = 30.0  # ... and each step using it asks GET /health this often


class ServerNotReady(RuntimeError):
    """The server exited, or did not answer GET /health in time; the message names its log."""


def client_env(url: Optional[str] = None, token: Optional[str] = None) -> dict[str, str]:
    """The environment of an HH reward client that scores through this server (URL and/or token)."""
    env = {URL_ENV: url} if url else {}
    return {**env, TOKEN_ENV: token} if token else env


def _get_json(url: str) -> Optional[Any]:
    """GET url's JSON body, or None if it does not answer 2xx with JSON within 2 s."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return json.loads(r.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError):
        return None


def wait_http_ok(url: str, timeout_s: float, alive: Callable[[], bool] = lambda: True) -> None:
    """Poll url until it answers with JSON; raise ServerNotReady on timeout or when alive() turns False."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            raise ServerNotReady(f"server behind {url} exited before it was ready")
        if _get_json(url) is not None:
            return
        time.sleep(0.5)
    raise ServerNotReady(f"{url} not ready after {timeout_s:.0f} s")


class RunningServer:
    """A started reward server: its /predict URL, its token, and how to stop it (its whole process group)."""

    def __init__(self, proc: Optional[subprocess.Popen], url: str, token: Optional[str], log_path: Path) -> None:
        self.proc: Optional[subprocess.Popen] = proc
        self.url, self.token, self.log_path = url, token, log_path

    def client_env(self) -> dict[str, str]:
        """REWARD_SERVER_URL and REWARD_SERVER_TOKEN for the HH reward client."""
        return client_env(self.url, self.token)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after grace_s); a second call does nothing."""
        if self.proc is not None:
            terminate_group(self.proc, grace_s)
            self.proc = None


@contextlib.contextmanager
def running_server(model: str, log_path: Path, *, host: str = "127.0.0.1", port: Optional[int] = None,
                   token: Optional[str] = None, args: Sequence[str] = (), cwd: Optional[str] = None,
                   env: Optional[Mapping[str, str]] = None, ready_timeout_s: float = READY_TIMEOUT_S,
                   preexec_fn: Optional[Callable[[], None]] = None) -> Iterator[RunningServer]:
    """Serve `model` in a child process (its own session; output appended to log_path) until the block ends.

    The token reaches the server through its environment, never argv (ps shows argv); `env` defaults to this
    process's. `args` are more `serve` flags. A server that exits or is not ready in time raises ServerNotReady."""
    proc, url = _start(model, log_path, host=host, port=free_port() if port is None else port, token=token,
                       args=args, cwd=cwd, env=env, ready_timeout_s=ready_timeout_s, preexec_fn=preexec_fn)
    server = RunningServer(proc, url, token, log_path)
    try:
        yield server
    finally:
        server.stop()


def _start(model: str, log_path: Path, *, host: str, port: int, token: Optional[str], args: Sequence[str],
           cwd: Optional[str], env: Optional[Mapping[str, str]], ready_timeout_s: float,
           preexec_fn: Optional[Callable[[], None]]) -> tuple[subprocess.Popen, str]:
    """Start `serve` in its own session (output appended to log_path) and wait for GET /health: (process, /predict
    URL). A server that exits or is not ready in time is stopped and raises ServerNotReady naming the log."""
    argv = [sys.executable, "-m", "evaluation.reward_model", "serve", "--model", model, "--host", host,
            "--port", str(port), *args]
    child_env = {**(env if env is not None else os.environ), **client_env(token=token)}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=child_env,
                                start_new_session=True, preexec_fn=preexec_fn)
    try:
        wait_http_ok(f"http://{host}:{port}/health", ready_timeout_s, alive=lambda: proc.poll() is None)
    except ServerNotReady as e:
        terminate_group(proc, STOP_GRACE_S)
        raise ServerNotReady(f"{e}; log: {log_path}") from None
    return proc, f"http://{host}:{port}/predict"


def _user_file(suffix: str) -> Path:
    """This user's file `suffix` of the shared servers, in the temp dir."""
    return Path(tempfile.gettempdir()) / f"tre-reward-server-{os.getuid()}{suffix}"


def shared_state_path(model: str) -> Path:
    """Where this machine's shared server of `model` is recorded: per user and model directory, in the temp dir."""
    return _user_file("-" + hashlib.sha256(os.path.abspath(model).encode()).hexdigest()[:16] + ".json")


def _stamp(model: str) -> list[list[Any]]:
    """The model directory's files with their sizes and times: a retrained model is another model."""
    root = Path(model)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    return [[str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _token_id(token: Optional[str]) -> str:
    """Names a token without revealing it (a state file never holds the token)."""
    return hashlib.sha256(b"tre-shared-reward-server:" + (token or "").encode()).hexdigest()


def _health(url: str) -> Optional[Any]:
    """GET /health of the server behind a /predict URL."""
    return _get_json(url.removesuffix("/predict") + "/health")


def _read_state(path: Path) -> Optional[dict[str, Any]]:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # none, or a torn/foreign file: start afresh
    return state if isinstance(state, dict) and {"pid", "url", "model", "stamp", "token_id"} <= state.keys() else None


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """This user's lock over the shared servers' state files (one file, however many models: none is left per model)."""
    with open(_user_file(".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _ours(state: Optional[dict[str, Any]], model: str, token: Optional[str]) -> bool:
    """Whether a recorded server answers for the model directory `model` (absolute; its files may have changed
    since) and `token`'s holders."""
    if state is None or state["token_id"] != _token_id(token) or state["model"] != model:
        return False
    health = _health(state["url"])
    return isinstance(health, dict) and health.get("model") == model


class SharedServer(RunningServer):
    """A shared server as one step sees it: stop() ends this step's keep-alive, never the server."""

    def __init__(self, url: str, token: Optional[str], log_path: Path, pid: int, started: bool) -> None:
        super().__init__(None, url, token, log_path)
        self.pid, self.started = pid, started
        self._done = threading.Event()
        threading.Thread(target=self._keepalive, name="reward-server-keepalive", daemon=True).start()

    def _keepalive(self) -> None:
        while not self._done.wait(KEEPALIVE_S):
            _health(self.url)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        self._done.set()


@contextlib.contextmanager
def shared_server(model: str, log_path: Path, *, token: Optional[str] = None, args: Sequence[str] = (),
                  cwd: Optional[str] = None, env: Optional[Mapping[str, str]] = None,
                  idle_exit_s: float = SHARED_IDLE_EXIT_S, ready_timeout_s: float = READY_TIMEOUT_S,
                  preexec_fn: Optional[Callable[[], None]] = None) -> Iterator[SharedServer]:
    """A loopback server of `model` shared by this machine's steps that hold the same token.

    Under a lock on its state file (shared_state_path), a recorded server that answers for the same model files and
    token is reused; otherwise a new one starts, detached, with --idle-exit-s, and is recorded (an older server of
    this token, for a model since retrained, is stopped first). The block keeps the server alive (GET /health every
    KEEPALIVE_S); leaving it does not stop the server: it exits once idle_exit_s pass without a request, or with
    stop_shared_server. Its output goes to the log of the step that started it. A server that fails to start raises
    ServerNotReady, as running_server does."""
    model = os.path.abspath(os.path.join(cwd or os.getcwd(), model))
    state_path = shared_state_path(model)
    with _locked():
        state, stamp = _read_state(state_path), _stamp(model)
        live = _ours(state, model, token)
        if live and state["stamp"] == stamp:
            server = SharedServer(state["url"], token, Path(state["log"]), state["pid"], started=False)
        else:
            if live:
                terminate_pid_group(state["pid"], STOP_GRACE_S)
            proc, url = _start(model, log_path, host="127.0.0.1", port=free_port(), token=token,
                               args=[*args, "--idle-exit-s", str(idle_exit_s)], cwd=cwd, env=env,
                               ready_timeout_s=ready_timeout_s, preexec_fn=preexec_fn)
            record = {"pid": proc.pid, "url": url, "model": model, "stamp": stamp,
                      "token_id": _token_id(token), "log": str(log_path)}
            atomic_write_text(state_path, json.dumps(record) + "\n", private=True)
            proc.returncode = 0  # detached on purpose: no "still running" warning when this Popen is collected
            server = SharedServer(url, token, log_path, proc.pid, started=True)
    try:
        yield server
    finally:
        server.stop()


def stop_shared_server(model: str, token: Optional[str]) -> bool:
    """Stop this machine's shared server of `model` if it serves `token`'s holders; whether one was stopped."""
    model = os.path.abspath(model)
    state_path = shared_state_path(model)
    with _locked():
        state = _read_state(state_path)
        if not _ours(state, model, token):
            return False
        terminate_pid_group(state["pid"], STOP_GRACE_S)
        state_path.unlink(missing_ok=True)
        return True
