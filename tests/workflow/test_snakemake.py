"""The Snakefile: DAG of the grids, profiles, config errors, and the whole pipeline with stand-in steps."""
from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]
SMALL = {"tasks": ["countdown", "hh"], "methods": ["ppo", "tre_k"], "seeds": [0], "figures": ["curves"],
         "launcher": {"cluster": "debug"}}


def _job_counts(stdout: str) -> dict[str, int]:
    lines = stdout.split("Job stats:")[1].splitlines()[3:]
    counts = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


def _jobs(stdout: str) -> list[tuple[str, str]]:
    """(rule, sorted wildcards) of every job a dry run lists."""
    jobs, rule = [], None
    for line in stdout.splitlines():
        if line.startswith(("rule ", "localrule ")):
            rule = line.split()[1].rstrip(":")
        elif line.strip().startswith("wildcards:") and rule:
            jobs.append((rule, ", ".join(sorted(line.split(":", 1)[1].strip().split(", ")))))
    return jobs


def _dry(args: list[str], cwd: Path = REPO) -> tuple[subprocess.CompletedProcess, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc, cpu


def test_paper_grid_dry_run_is_fast_and_complete():
    _dry(["all", "--config", "grid=paper"])  # warms the method cache (.snakemake/tre-cache)
    proc, cpu = _dry(["all", "--configfile", "workflow/config/paper.yaml"])
    assert proc.returncode == 0, proc.stderr
    counts = _job_counts(proc.stdout)
    assert counts["train"] == 108 and counts["evaluate"] == 108
    assert counts["data"] == 3 and counts["rm_train"] == 2 and counts["figure"] == 4 and counts["table"] == 1
    assert counts["dists"] == 1 and counts["collect"] == 1
    assert "tiny_model" not in counts  # the paper grid uses hub models
    # CPU seconds, not wall time: the machine is shared with other test runs
    assert cpu < 5.0, f"dry run of the paper grid took {cpu:.1f} s of CPU"


def test_profile_slurm_resolves_from_the_repo_root():
    proc, _ = _dry(["--profile", "slurm", "all"])
    assert proc.returncode == 0, proc.stderr
    assert "Using profiles slurm and workflow specific profile workflow/profiles/default" in proc.stderr
    assert "TRE workflow: grid tiny (profile tiny), 18 runs, heavy steps through the launcher on slurm" in proc.stderr
    local, _ = _dry(["--profile", "workflow/profiles/local", "all"])
    assert "heavy steps through the launcher on local" in local.stderr


def test_bad_config_stops_with_one_line():
    proc, _ = _dry(["all", "--config", "tasks=[maths]"])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "config: tasks.0: 'maths' is not one of math, countdown, hh"


def _write_config(workdir: Path, extra: dict | None = None, name: str = "cfg.json") -> str:
    cfg = {**SMALL, **(extra or {})}
    (workdir / name).write_text(json.dumps(cfg))
    return name


def _calls(workdir: Path) -> list[dict]:
    path = workdir / "calls.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_pipeline_runs_reruns_nothing_and_only_what_a_change_touches(standin_workdir, snakemake):
    work = standin_workdir
    cfg = _write_config(work)
    first = snakemake(work, "all", "--configfile", cfg)  # no --cores: the workflow profile gives them
    assert first.returncode == 0, first.stderr[-3000:]
    names = [c["name"] for c in _calls(work)]
    assert names.count("train") == 4 and names.count("evaluate") == 4 and names.count("prepare") == 2
    assert names.count("reward_model.train") == 1 and names.count("reward_model.serve") == 4  # 2 HH trains + 2 evals
    for run in ("countdown/tiny/ppo/seed0", "countdown/tiny/tre_k/seed0", "hh/tiny/ppo/seed0", "hh/tiny/tre_k/seed0"):
        summary = json.loads((work / "runs" / run / "summary.json").read_text())
        # the HH runs were scored through the reward server the launcher ran next to them
        assert summary["hh_reward"] == (4.0 if run.startswith("hh") else None)
        assert json.loads((work / "logs/train" / run / "job.json").read_text())["state"] == "completed"
    assert (work / "results/figures/curves.pdf").exists() and (work / "results/figures/curves.png").exists()
    # each training job's progress reaches Snakemake's terminal, not only its log
    assert "train countdown/tiny/tre_k/seed0: step 1/1" in first.stderr

    report = snakemake(work, "all", "--configfile", cfg, "--report", "report.html")
    assert report.returncode == 0, report.stderr[-2000:]
    html = (work / "report.html").read_text()
    assert "curves.png" in html and "Figures" in html

    again = snakemake(work, "all", "--configfile", cfg, "-n")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr

    changed = _write_config(work, {"train": {"method_overrides": {"tre_k": ["actor_rollout_ref.actor.entropy_coeff=0.002"]}}},
                            name="changed.json")
    dry = snakemake(work, "all", "--configfile", changed, "-n", "-p")
    assert _job_counts(dry.stdout) == {"train": 2, "evaluate": 2, "collect": 1, "figure": 1, "all": 1, "total": 7}
    jobs = _jobs(dry.stdout)
    assert sorted(w for r, w in jobs if r == "train") == ["method=tre_k, seed=0, size=tiny, task=countdown",
                                                        "method=tre_k, seed=0, size=tiny, task=hh"]

    n_calls = len(_calls(work))
    (work / "results/figures/curves.pdf").unlink()
    fig = snakemake(work, "results/figures/curves.pdf", "--configfile", cfg)
    assert fig.returncode == 0, fig.stderr[-2000:]
    assert [c["name"] for c in _calls(work)[n_calls:]] == ["figures.curves"]


def test_warm_start_runs_once_before_the_runs_that_start_from_it(standin_workdir, snakemake):
    work = standin_workdir
    cfg = _write_config(work, {"tasks": ["countdown"], "methods": ["ppo"], "seeds": [0, 1],
                               "models": {"tiny": {"policy": "models/tiny/warm"}}})
    proc = snakemake(work, "all", "--configfile", cfg)
    assert proc.returncode == 0, proc.stderr[-3000:]
    calls = _calls(work)
    names = [c["name"] for c in calls]
    assert names.count("warm_start") == 1 and names.index("warm_start") < names.index("train")
    warm = calls[names.index("warm_start")]["argv"]
    assert warm[:6] == ["--model", "models/tiny/policy", "--data", "data/countdown/train.parquet", "--out",
                        "models/tiny/warm"]
    trains = [c["argv"] for c in calls if c["name"] == "train"]
    assert len(trains) == 2 and all(a[a.index("--model-path") + 1] == "models/tiny/warm" for a in trains)


def test_archive_only_figures_need_no_runs(standin_workdir, snakemake):
    work = standin_workdir
    for name in ("metrics", "runs", "eval"):
        (work / "results").mkdir(exist_ok=True)
        (work / "results" / f"{name}.csv").write_text("run\n")
    cfg = _write_config(work, {"archive_only": True})
    proc = snakemake(work, "all", "--configfile", cfg)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [c["name"] for c in _calls(work)] == ["figures.curves"]
