"""tre.backend.cpu without Ray: a worker process does not outlive its parent (the raylet)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

# The parent starts the "worker" in a process group of its own (as the raylet does), prints its pid, then waits.
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "from tre.backend.cpu import exit_with_parent; import time; "
                          "exit_with_parent(poll_s=0.1); print('ready', flush=True); time.sleep(600)"],
                         start_new_session=True, stdout=subprocess.PIPE, text=True)
assert child.stdout.readline().strip() == "ready"
print(child.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_worker_exits_once_its_parent_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, env={**os.environ})
    child = int(parent.stdout.readline())
    try:
        time.sleep(0.5)
        assert _alive(child)  # the watchdog leaves a worker with a live parent alone
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 10
        while _alive(child) and time.time() < deadline:
            time.sleep(0.1)
        assert not _alive(child)
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)
