"""Child processes in their own process group: stop the whole group (by Popen or by pid), wait without Popen's lock; a free TCP port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from typing import Callable, Optional


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


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


def _stop_group(pid: int, grace_s: float, exited: Callable[[], bool]) -> None:
    """SIGTERM the process group `pid` leads, wait up to grace_s for exited(), then SIGKILL it."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30.0)):
        if exited():
            return
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + wait_s
        while not exited() and time.monotonic() < deadline:
            time.sleep(0.1)


def terminate_group(proc: subprocess.Popen, grace_s: float) -> Optional[int]:
    """SIGTERM the process group of proc, wait up to grace_s, then SIGKILL it; return its exit code.

    May run inside a signal handler (the launcher's USR2 -> checkpoint), possibly while the interrupted main thread
    is in a Popen call that holds Popen's internal wait lock; Popen.wait() here could deadlock, so the child is
    reaped with waitpid."""
    _stop_group(proc.pid, grace_s, lambda: _reap(proc))
    return proc.returncode


def _pid_gone(pid: int) -> bool:
    """Whether pid has exited (reaped here if it is this process's child), or is not this user's to signal."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:  # not our child: its parent or init reaps it
        pass
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return True
    return False


def terminate_pid_group(pid: int, grace_s: float) -> None:
    """terminate_group for a group leader known only by its pid (started detached, perhaps by a process since
    gone)."""
    _stop_group(pid, grace_s, lambda: _pid_gone(pid))


def wait_child(proc: subprocess.Popen, poll_s: float = 0.5) -> int:
    """Wait for proc by polling, so that signal handlers run promptly and lock-free (see terminate_group)."""
    while not _reap(proc):
        time.sleep(poll_s)
    return proc.returncode

