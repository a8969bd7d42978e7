"""The reward server as a child process: start `python -m evaluation.reward_model serve`, wait for GET /health, hand
out its /predict URL and token (as the HH reward client's environment), stop it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, Sequence

from common.processes import free_port, terminate_group
from evaluation.tasks.hh import TOKEN_ENV, URL_ENV

READY_TIMEOUT_S = 900.0  # loading a 7B reward model onto its GPUs
STOP_GRACE_S = 10.0


class ServerNotReady(RuntimeError):
    """The server exited, or did not answer GET /health in time; the message names its log."""


def client_env(url: Optional[str] = None, token: Optional[str] = None) -> dict[str, str]:
    """The environment of an HH reward client that scores through this server (URL and/or token)."""
    env = {URL_ENV: url} if url else {}
    return {**env, TOKEN_ENV: token} if token else env


def wait_http_ok(url: str, timeout_s: float, alive: Callable[[], bool] = lambda: True) -> None:
    """Poll url until it answers 200; raise ServerNotReady on timeout or when alive() turns False."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            raise ServerNotReady(f"server behind {url} exited before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.5)
    raise ServerNotReady(f"{url} not ready after {timeout_s:.0f} s")


class RunningServer:
    """A started reward server: its /predict URL, its token, and how to stop it (its whole process group)."""

    def __init__(self, proc: subprocess.Popen, url: str, token: Optional[str], log_path: Path) -> None:
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
    port = free_port() if port is None else port
    argv = [sys.executable, "-m", "evaluation.reward_model", "serve", "--model", model, "--host", host,
            "--port", str(port), *args]
    child_env = {**(env if env is not None else os.environ), **client_env(token=token)}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=child_env,
                                start_new_session=True, preexec_fn=preexec_fn)
    server = RunningServer(proc, f"http://{host}:{port}/predict", token, log_path)
    try:
        wait_http_ok(f"http://{host}:{port}/health", ready_timeout_s, alive=lambda: proc.poll() is None)
    except ServerNotReady as e:
        server.stop()
        raise ServerNotReady(f"{e}; log: {log_path}") from None
    try:
        yield server
    finally:
        server.stop()
