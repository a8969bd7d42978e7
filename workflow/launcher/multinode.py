"""One allocation over several nodes: the ranks' authenticated rendezvous over TCP, and the Ray cluster on them."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from common.files import atomic_write_text
from common.processes import free_port
from workflow.launcher.errors import StepFailed
from workflow.launcher.task import ignore_usr2, restart_count
from workflow.launcher.tokens import child_environ, derived_secret, launch_token

RENDEZVOUS_MAX_LINE = 1 << 20  # bytes of one rendezvous message; a longer one is refused


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
    restart = restart_count()
    context = f"{tag}:{restart}:{world}"
    addr_file = folder / f"rendezvous-{tag}-{restart}.json"
    me = {"rank": rank, "host": socket.gethostname(), "ip": my_ip(),
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


def my_ip() -> str:
    """This node's address as the other ranks reach it (loopback when the hostname does not resolve)."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def ray_cli() -> list[str]:
    """The `ray` CLI of this Python environment (the venv may not be on PATH inside a job)."""
    sibling = Path(sys.executable).with_name("ray")
    return [str(sibling)] if sibling.exists() else ["ray"]


def start_ray(folder: Path, rank: int, world: int, peers: list[dict[str, Any]], job: Mapping[str, Any],
              procs: list[subprocess.Popen], ray_cmd: list[str], worker_env: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """Ray head on rank 0, then a worker on every other rank; returns the env that reaches the cluster.

    A per-launch token (Ray's token auth, derived from TRE_LAUNCH_TOKEN; ray-N.json holds only the port) keeps
    other Ray clusters on the same hosts out; each `ray start --block` runs in its own process group, appended to
    procs: the caller stops those at the end. `worker_env` (the reward client's token) reaches every node's workers."""
    restart = restart_count()
    info_path = folder / f"ray-{restart}.json"
    if rank == 0:
        atomic_write_text(info_path, json.dumps({"port": free_port()}), private=True)
    while not info_path.exists():
        time.sleep(0.2)
    info = json.loads(info_path.read_text())
    address = f"{peers[0]['ip']}:{info['port']}"
    ray_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": derived_secret(launch_token(), f"ray-{restart}"),
               **(worker_env or {})}
    common = [f"--num-cpus={job['cpus'] or os.cpu_count() or 1}", f"--num-gpus={job['gpus']}",
              f"--node-ip-address={peers[rank]['ip']}", "--disable-usage-stats", "--block"]
    log = folder / f"ray-{restart}-rank{rank}.log"

    def start(args: list[str]) -> None:
        with open(log, "ab") as out:
            procs.append(subprocess.Popen(ray_cmd + ["start", *args, *common], stdout=out,
                                          stderr=subprocess.STDOUT, env={**child_environ(), **ray_env},
                                          start_new_session=True, preexec_fn=ignore_usr2))

    def head_up() -> None:
        if rank == 0:
            start(["--head", f"--port={info['port']}", "--include-dashboard=false"])
            _wait_tcp(peers[0]["ip"], info["port"], 300, alive=lambda: procs[-1].poll() is None, log=log)

    def workers_joined() -> None:
        if rank != 0:
            start([f"--address={address}"])
        else:
            wait_ray_nodes(address, world, ray_env, timeout_s=300)

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


def wait_ray_nodes(address: str, world: int, ray_env: Mapping[str, str], timeout_s: float) -> None:
    """Wait until the Ray cluster at address has world alive nodes (asked in a subprocess: no ray import here)."""
    code = ("import ray, sys, time\n"
            f"ray.init(address={address!r}, logging_level='ERROR')\n"
            f"deadline = time.time() + {timeout_s}\n"
            f"while sum(n['Alive'] for n in ray.nodes()) < {world}:\n"
            "    if time.time() > deadline: sys.exit('only %d nodes joined' % sum(n['Alive'] for n in ray.nodes()))\n"
            "    time.sleep(1)\n")
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, **ray_env}, capture_output=True,
                          text=True, timeout=timeout_s + 120, preexec_fn=ignore_usr2)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise StepFailed(f"Ray cluster at {address} incomplete: {tail}")
