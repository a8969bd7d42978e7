"""What a job runs: the step's command as one local process group, with the reward server next to it when the step
scores HH, and on several nodes after the ranks' rendezvous (and Ray); checkpointable steps requeue on USR2."""

from __future__ import annotations

import contextlib
import dataclasses
import shlex
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

import submitit

from common.files import atomic_write_text
from common.processes import terminate_group, wait_child
from evaluation.reward_model.lifecycle import (RunningServer, ServerNotReady, SharedServer, client_env, running_server,
                                               shared_server)
from workflow.launcher.errors import StepFailed
from workflow.launcher.multinode import my_ip, ray_cli, rendezvous, start_ray
from workflow.launcher.task import ignore_usr2, job_env, restart_count
from workflow.launcher.tokens import child_environ, reward_token


@dataclasses.dataclass
class Command:
    """The callable submitted to the cluster: run argv (one step), optionally with Ray and the reward server."""

    argv: list[str]
    cwd: str
    reward_model: Optional[str] = None
    ray: bool = False
    ray_cmd: list[str] = dataclasses.field(default_factory=ray_cli)
    term_grace_s: float = 60.0
    cpu_threads: Optional[int] = None  # OMP_NUM_THREADS for the command unless the environment sets it
    share_reward_server: bool = False  # local steps share one reward server per model (lifecycle.shared_server)

    def __post_init__(self) -> None:
        self._proc: Optional[subprocess.Popen] = None
        self._server: Optional[RunningServer] = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_proc"], state["_server"] = None, None  # live handles never travel with a (re)submission
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __call__(self) -> dict[str, Any]:
        env = job_env()
        folder = Path(env["folder"])
        if env["num_tasks"] > 1:
            return self._run_group(env, folder)
        return self._run_command({}, folder, env)

    def _reward_server(self, folder: Path, env: dict[str, Any]) -> contextlib.AbstractContextManager:
        """The reward server for this step (loopback unless other nodes score through it), or nothing."""
        if not self.reward_model:
            return contextlib.nullcontext()
        if self.share_reward_server and env["num_tasks"] == 1:
            # starting one costs a step ~3 CPU seconds (torch, transformers, the model): 36 of them in the miniature
            return shared_server(self.reward_model, folder / "reward_server.log", token=reward_token(), cwd=self.cwd,
                                 env=child_environ(), preexec_fn=ignore_usr2)
        host = "127.0.0.1" if env["num_tasks"] == 1 else my_ip()
        return running_server(self.reward_model, folder / "reward_server.log", host=host, token=reward_token(),
                              cwd=self.cwd, env=child_environ(), preexec_fn=ignore_usr2)

    def _run_command(self, extra_env: dict[str, str], folder: Path, env: dict[str, Any]) -> dict[str, Any]:
        start = time.time()
        run_env = {**child_environ(), **extra_env}
        if run_env.get("CUDA_VISIBLE_DEVICES") == "":
            # submitit's local executor sets it empty for 0 GPUs; Ray then refuses the placeholder GPU that verl's
            # CPU path asks for. Without GPUs there is nothing to hide, so leave it unset.
            del run_env["CUDA_VISIBLE_DEVICES"]
        if self.cpu_threads and "OMP_NUM_THREADS" not in run_env:
            run_env["OMP_NUM_THREADS"] = str(self.cpu_threads)
        try:
            with self._reward_server(folder, env) as server:
                if server is not None:
                    self._server = server  # for checkpoint(), which stops it from the USR2 handler
                    run_env.update(server.client_env())
                    if isinstance(server, SharedServer):
                        print(f"[launcher] reward server: {'started' if server.started else 'sharing'} pid {server.pid} "
                              f"({server.log_path})", flush=True)
                print(f"[launcher] {shlex.join(self.argv)}", flush=True)
                self._proc = subprocess.Popen(self.argv, cwd=self.cwd, env=run_env, start_new_session=True,
                                              preexec_fn=ignore_usr2)
                rc = wait_child(self._proc)
        except ServerNotReady as e:
            raise StepFailed(f"reward server: {e}") from None
        finally:
            self._server = None
        self._proc = None
        if rc != 0:
            raise StepFailed(f"command exited with code {rc}: {shlex.join(self.argv)}")
        return {"returncode": rc, "wall_s": round(time.time() - start, 3), "host": socket.gethostname(),
                "job_id": env["job_id"], "restarts": restart_count(), "rank": env["rank"]}

    def _run_group(self, env: dict[str, Any], folder: Path) -> dict[str, Any]:
        """One task per node: meet, (start Ray: head on rank 0, workers elsewhere), run argv on rank 0."""
        rank, world = env["rank"], env["num_tasks"]
        peers = rendezvous(folder, rank, world, "peers")
        head = peers[0]
        done = folder / f"done-{restart_count()}"
        extra = {"MASTER_ADDR": head["ip"], "WORLD_SIZE": str(world), "NODE_RANK": str(rank)}
        ray_procs: list[subprocess.Popen] = []
        try:
            if self.ray:
                # the HH reward client may run in a Ray worker on any node
                worker_env = client_env(token=reward_token()) if self.reward_model else {}
                extra.update(start_ray(folder, rank, world, peers, env, ray_procs, self.ray_cmd, worker_env))
            if rank == 0:
                result = self._run_command(extra, folder, env)
            else:
                while not done.exists():  # rank 0 writes it when the command has finished (or failed)
                    time.sleep(1)
                result = {"returncode": 0, "host": socket.gethostname(), "job_id": env["job_id"],
                          "restarts": restart_count(), "rank": rank}
        finally:
            if rank == 0:
                atomic_write_text(done, "done\n")
            for proc in reversed(ray_procs):  # only the Ray processes this task started, never `ray stop`
                terminate_group(proc, grace_s=20)
        result["peers"] = peers
        return result


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
