"""The Snakefile: DAG of the grids, profiles, config errors, and the whole pipeline with stand-in steps (the real
CLIs with their models, verl and Ray replaced; tests/workflow/standins)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from common.files import parquet_metadata

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


def _dry(args: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    """`snakemake -n ARGS` in cwd (the repo root: its Snakefile and profiles, as a user types it)."""
    return subprocess.run([sys.executable, "-m", "snakemake", "-n", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_slurm_profile_dry_run_is_the_complete_paper_grid():
    """`snakemake --profile slurm -n all` from the repo root (its speed: benchmarks/dry_run.py)."""
    proc = _dry(["--profile", "slurm", "all"])
    assert proc.returncode == 0, proc.stderr
    assert "Using profiles slurm and workflow specific profile profiles/default" in proc.stderr
    assert "TRE workflow: grid paper (profile paper), 108 runs, heavy steps through the launcher on slurm" in proc.stderr
    counts = _job_counts(proc.stdout)
    assert counts["train"] == 108 and counts["evaluate"] == 108
    assert counts["data"] == 3 and counts["rm_train"] == 2 and counts["figure"] == 4 and counts["table"] == 1
    assert counts["dists"] == 1 and counts["collect"] == 1
    assert "tiny_model" not in counts  # the paper grid uses hub models


def _banner(proc: subprocess.CompletedProcess) -> str:
    return next(line for line in proc.stderr.splitlines() if line.startswith("TRE workflow: "))


def test_profiles_select_grid_and_cluster_and_the_command_line_adds_to_them(tmp_path):
    bare = _dry(["all"])  # no --cores: the workflow profile profiles/default gives them
    assert bare.returncode == 0, bare.stderr
    assert "Using workflow specific profile profiles/default" in bare.stderr
    assert _banner(bare).startswith("TRE workflow: grid tiny (profile tiny), 54 runs")
    tiny = _dry(["--profile", "slurm", "all", "--config", "grid=tiny"])
    assert _banner(tiny) == "TRE workflow: grid tiny (profile tiny), 54 runs, heavy steps through the launcher on slurm"
    # a --config or a --configfile on the command line replaces the profile's own list of either kind
    site = _dry(["--profile", "slurm", "all", "--config", "launcher={partition: gpu}"])
    assert _banner(site) == "TRE workflow: grid paper (profile paper), 108 runs, heavy steps through the launcher on slurm"
    (tmp_path / "site.yaml").write_text("seeds: [0]\n")
    site = _dry(["--profile", "slurm", "all", "--configfile", str(tmp_path / "site.yaml")])
    assert _banner(site) == "TRE workflow: grid paper (profile paper), 36 runs, heavy steps through the launcher on slurm"
    local = _dry(["--profile", "profiles/local", "all"])
    assert _banner(local).endswith("heavy steps through the launcher on local")


def test_config_on_the_command_line_as_the_readme_writes_it():
    fig = _dry(["results/figures/curves.pdf", "--config", "archive_only=true"])
    assert fig.returncode == 0, fig.stderr
    assert not {"train", "collect", "evaluate"} & {rule for rule, _ in _jobs(fig.stdout)}
    seeds = _dry(["all", "--config", "seeds=[0,1]", "eval={n: 4}"])
    assert seeds.returncode == 0, seeds.stderr
    assert _banner(seeds).startswith("TRE workflow: grid tiny (profile tiny), 36 runs")


def test_bad_config_stops_with_one_line():
    proc = _dry(["all", "--config", "tasks=[maths]"])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "config: tasks.0: 'maths' is not one of math, countdown, hh"
    proc = _dry(["all", "--config", "archive_only=maybe"])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "config: archive_only: 'maybe' is not of type 'boolean'"


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
    assert names.count("train") == 4 and names.count("evaluate") == 4
    assert names.count("reward_model.train") == 1 and names.count("reward_model.serve") == 4  # 2 HH trains + 2 evals
    for task, rows in (("countdown", 2000), ("hh", 24)):  # the real `evaluation.tasks prepare`
        assert parquet_metadata(work / "data" / task / "train.parquet", "data").num_rows == rows
    for run in ("countdown/tiny/ppo/seed0", "countdown/tiny/tre_k/seed0", "hh/tiny/ppo/seed0", "hh/tiny/tre_k/seed0"):
        summary = json.loads((work / "runs" / run / "summary.json").read_text())
        config = json.loads((work / "runs" / run / "config.json").read_text())
        scores = json.loads((work / "runs" / run / "eval/16/scores.json").read_text())
        assert (summary["status"], summary["steps"], config["total_steps"], scores["step"]) == ("completed", 16, 16, 16)
        task, size, method, seed = run.split("/")
        assert [config[k] for k in ("task", "size", "method", "seed")] == [task, size, method, int(seed[4:])]
        # the HH runs were scored, in training and in evaluation, through the reward server the launcher ran
        assert summary["final_val_score"] == scores["metrics"]["mean@4"] == (4.0 if run.startswith("hh") else 0.0)
        assert json.loads((work / "logs/train" / run / "job.json").read_text())["state"] == "completed"
    assert (work / "results/figures/curves.pdf").exists() and (work / "results/figures/curves.png").exists()
    assert "collected 4 runs" in (work / "logs/collect/collect.log").read_text()  # the real collect, no run skipped
    # each training job's progress reaches Snakemake's terminal, not only its log
    assert "train countdown/tiny/tre_k/seed0: step 16/16" in first.stderr

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


def test_local_hh_steps_share_one_reward_server_that_the_run_stops(standin_workdir, snakemake):
    from evaluation.reward_model.lifecycle import shared_state_path

    work = standin_workdir
    cfg = _write_config(work, {"tasks": ["hh"], "methods": ["ppo", "tre_k"], "launcher": {"cluster": "local"}})
    proc = snakemake(work, "all", "--configfile", cfg)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = [c["name"] for c in _calls(work)]
    # two trainings and two evaluations scored through one server, started by the first of them
    assert names.count("train") == 2 and names.count("evaluate") == 2 and names.count("reward_model.serve") == 1
    for run in ("ppo", "tre_k"):
        assert json.loads((work / f"runs/hh/tiny/{run}/seed0/eval/16/scores.json").read_text())["metrics"]["mean@4"] == 4.0
    assert not shared_state_path(str(work / "models/rm/tiny")).exists()  # stopped when the run ended


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
                        "models/tiny/warm/countdown"]
    trains = [c["argv"] for c in calls if c["name"] == "train"]
    assert len(trains) == 2 and all(a[a.index("--model-path") + 1] == "models/tiny/warm/countdown" for a in trains)


def test_archive_only_figures_need_no_runs(standin_workdir, snakemake):
    work = standin_workdir
    (work / "results").mkdir()
    for name in ("metrics", "runs", "eval"):  # the real figure is drawn from the repo's archive
        shutil.copy(REPO / "results" / f"{name}.csv", work / "results")
    cfg = _write_config(work, {"archive_only": True})
    proc = snakemake(work, "all", "--configfile", cfg)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [c["name"] for c in _calls(work)] == ["figures.curves"]
