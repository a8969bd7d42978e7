"""tre.backend.mirror: one offline wandb run per run directory, rewound on resume, equal to metrics.jsonl step for
step (read back with wandb's own reader); names from the grid; the API key checked up front and never written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tre.backend import mirror, rundir

from .conftest import wandb_records, wandb_view

REPO = Path(__file__).resolve().parents[2]
NAMES = mirror.identity("countdown", "tiny", "ppo", 1, "0123456789abcdef0123-dirty", project="tre-test")
SECRET = "sekrit-key-0123456789abcdef0123456789abcdef"


def _log(run_dir: Path, steps) -> None:
    sink = rundir.MetricsLog(run_dir / rundir.METRICS)
    for s in steps:
        sink.log({"actor/pg_loss": s / 10, "val-core/countdown/reward/mean@1": s * 0.25, "bad": float("nan")}, s)


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", SECRET)  # offline never needs it; it must still not be written anywhere
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_identity_from_the_grid():
    assert NAMES == {"project": "tre-test", "entity": None, "group": "countdown_tiny_ppo", "name": "countdown_tiny_ppo_seed1",
                     "tags": ["countdown", "tiny", "ppo", "seed1", "git:0123456789ab-dirty"]}
    assert mirror.identity("hh", "7b", "tre_p", 0, None, group="sweep")["group"] == "sweep/hh_7b_tre_p"


def test_online_without_a_key_is_one_clear_error():
    assert mirror.credentials_error("online", {}).startswith("wandb mode online needs WANDB_API_KEY")
    assert mirror.credentials_error("online", {"WANDB_API_KEY": "x"}) is None
    assert mirror.credentials_error("offline", {}) is None and mirror.credentials_error("disabled", {}) is None


def test_killed_leg_is_rewound_to_the_checkpoint(tmp_path, offline):
    """Leg 1 mirrors steps 0-5 and is preempted; the backend truncates metrics.jsonl to checkpoint 2 and leg 2 logs 3-6
    anew (other values): wandb shows one run whose history is metrics.jsonl, step for step, in order."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _log(run_dir, range(0, 2))
    leg = mirror.Mirror.start(run_dir, "offline", NAMES, 0, {"task": "countdown"})
    _log(run_dir, range(2, 6))
    leg.close("interrupted")
    first_id = rundir.read_wandb_run(run_dir)["id"]
    rundir.truncate_metrics(run_dir / rundir.METRICS, 2)
    leg = mirror.Mirror.start(run_dir, "offline", NAMES, 2)
    sink = rundir.MetricsLog(run_dir / rundir.METRICS)
    for s in range(3, 7):
        sink.log({"actor/pg_loss": -s / 10, "val-core/countdown/reward/mean@1": 1.0}, s)
    leg.close("completed", {"final_val_score": 1.0, "best_step": 3})
    ids, history, summary = wandb_view(run_dir)
    assert ids == {first_id} and rundir.read_wandb_run(run_dir) == {"id": first_id, **NAMES, "mirrored_step": 6}
    want = [{k: v for k, v in row.items() if v is not None} for row in rundir.read_metrics(run_dir / rundir.METRICS)]
    assert [r["step"] for r in want] == [0, 1, 2, 3, 4, 5, 6] and want[4]["actor/pg_loss"] == -0.4
    assert history == want
    assert summary["final_val_score"] == 1.0 and summary["best_step"] == 3
    assert not [p for p in run_dir.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]


def test_a_fresh_restart_gets_a_new_run(tmp_path, offline):
    """A leg killed before its first checkpoint cannot be rewound past its step 0: the restart starts a new wandb run."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    mirror.Mirror.start(run_dir, "offline", NAMES, 0).close("interrupted")
    first = rundir.read_wandb_run(run_dir)["id"]
    mirror.Mirror.start(run_dir, "offline", NAMES, 0).close("completed")
    assert rundir.read_wandb_run(run_dir)["id"] != first


def test_disabled_imports_nothing_of_wandb():
    code = ("import sys, tre.backend.launch, tre.backend.__main__, evaluation.__main__, workflow.config as w; "
            "w.resolve({}); print(sorted(m for m in sys.modules if m.split('.')[0] == 'wandb'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_backend_online_without_a_key_stops_before_ray(tmp_path, monkeypatch, capsys):
    from tre.backend.__main__ import main

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    rc = main(["train", "--task", "countdown", "--size", "tiny", "--method", "ppo", "--model-path", str(tmp_path),
               "--run-dir", str(tmp_path / "run"), "--wandb", "online"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: wandb: wandb mode online needs WANDB_API_KEY") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_evaluate_online_without_a_key_stops_before_sampling(tmp_path, monkeypatch, capsys):
    from evaluation.__main__ import main

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with pytest.raises(SystemExit) as e:
        main(["evaluate", str(tmp_path), "--wandb", "online"])
    assert e.value.code == 2 and "error: --wandb: wandb mode online needs WANDB_API_KEY" in capsys.readouterr().err


def test_a_failing_mirror_never_fails_the_run(tmp_path, offline, capsys):
    class Broken:
        def log(self, *a, **k):
            raise RuntimeError("network down\nmore")

        def finish(self, exit_code):
            self.exit_code = exit_code

    run_dir = tmp_path / "run"
    leg = mirror.Mirror(run_dir, "offline", NAMES, Broken(), rundir.MetricsTail(run_dir / rundir.METRICS))
    _log(run_dir, range(2))
    leg.close("completed")
    assert leg.run.exit_code == 1
    assert capsys.readouterr().err == "warning: wandb mirror stopped (network down); metrics.jsonl is complete\n"


def test_rows_a_killed_driver_never_mirrored_are_logged_by_the_next_leg(tmp_path, offline):
    """SIGKILLed before its last poll, leg 1 mirrored steps 0-1 of 0-3 (checkpoint 2): leg 2 rewinds to 1, not 2."""
    run_dir = tmp_path / "run"
    _log(run_dir, range(0, 2))
    mirror.Mirror.start(run_dir, "offline", NAMES, 0).close("interrupted")
    _log(run_dir, range(2, 4))  # written by the trainer, never polled
    rundir.truncate_metrics(run_dir / rundir.METRICS, 2)
    leg = mirror.Mirror.start(run_dir, "offline", NAMES, 2)
    _log(run_dir, range(3, 5))
    leg.close("completed")
    ids, history, _ = wandb_view(run_dir)
    assert len(ids) == 1 and [r["step"] for r in history] == [0, 1, 2, 3, 4]
    assert history == [{k: v for k, v in row.items() if v is not None} for row in rundir.read_metrics(run_dir / rundir.METRICS)]
    leg2 = wandb_records(run_dir)[1]
    assert next(r["run"]["branch_point"]["value"] for r in leg2 if r.get("type") == "run") == 1


KILLED_LEG = """
import os, signal, sys, time
from pathlib import Path
from tre.backend import mirror, rundir
run_dir = Path(sys.argv[1])
names = mirror.identity("countdown", "tiny", "ppo", 1, None)
sink = rundir.MetricsLog(run_dir / rundir.METRICS)
leg = mirror.Mirror.start(run_dir, "offline", names, 0)
for s in range(2):
    sink.log({"x": float(s)}, s)
time.sleep(mirror.SAFE_S + 2 * mirror.POLL_S)  # steps 0-1 are held by the wandb run (on disk)
for s in range(2, 4):
    sink.log({"x": float(s)}, s)
time.sleep(mirror.POLL_S + 0.5)  # logged, maybe not yet on disk
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_sigkilled_leg_is_rewound_to_what_wandb_holds(tmp_path, offline):
    """SIGKILLed right after logging steps 2-3, whose records wandb may not have written yet: the next leg, resuming
    from checkpoint 2, rewinds to step 1 (the last step known to be held) and logs step 2 again from metrics.jsonl."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    killed = subprocess.run([sys.executable, "-c", KILLED_LEG, str(run_dir)], cwd=REPO, timeout=120, capture_output=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})  # with this process's WANDB_SERVICE
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert rundir.read_wandb_run(run_dir)["mirrored_step"] == 1
    rundir.truncate_metrics(run_dir / rundir.METRICS, 2)
    leg = mirror.Mirror.start(run_dir, "offline", NAMES, 2)
    rundir.MetricsLog(run_dir / rundir.METRICS).log({"x": 30.0}, 3)
    leg.close("completed")
    ids, history, _ = wandb_view(run_dir)
    assert len(ids) == 1 and history == [{"step": s, "x": x} for s, x in ((0, 0.0), (1, 1.0), (2, 2.0), (3, 30.0))]
