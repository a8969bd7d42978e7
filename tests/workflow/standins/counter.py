"""A checkpointable stand-in for training: a deterministic hash chain over --steps steps.

Saves its state after every step and on SIGTERM (like a trainer's save-on-preemption), resumes from it, and writes
result.json at the end; the final value is the same however often it was interrupted."""
import argparse
import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, required=True)
p.add_argument("--state", type=Path, required=True)
p.add_argument("--sleep", type=float, default=0.0)
a = p.parse_args()
a.state.mkdir(parents=True, exist_ok=True)
ckpt = a.state / "checkpoint.json"
state = json.loads(ckpt.read_text()) if ckpt.exists() else {"step": 0, "value": "seed", "attempts": 0}
state["attempts"] += 1


def save() -> None:
    tmp = ckpt.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, ckpt)


def on_term(signum, frame):
    save()
    print(f"saved at step {state['step']} on SIGTERM", flush=True)
    sys.exit(0)


signal.signal(signal.SIGTERM, on_term)
save()
while state["step"] < a.steps:
    time.sleep(a.sleep)
    state["value"] = hashlib.sha256(f"{state['value']}:{state['step']}".encode()).hexdigest()
    state["step"] += 1
    save()
(a.state / "result.json").write_text(json.dumps({"steps": state["step"], "value": state["value"],
                                                 "attempts": state["attempts"]}))
