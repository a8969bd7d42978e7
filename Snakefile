"""The TRE workflow: data -> tiny model / reward model -> PPO runs -> evaluation -> results tables -> figures.

`snakemake all` runs the tiny CPU grid (workflow/config/tiny.yaml) with the workflow profile profiles/default;
`snakemake --profile slurm all` the paper grid (workflow/config/paper.yaml) on a Slurm cluster. The rules are in
workflow/rules/. Heavy steps go through workflow/launcher/ (submitit), light ones run where Snakemake runs.
"""
import json
import os
import shlex
import sys

from workflow import config as wfc
from workflow.launcher.cluster import resolve_cluster

_resolved = wfc.load_or_exit(config)
config.clear()
config.update(_resolved)

PY = sys.executable
RUNS = list(wfc.runs(config))
CLUSTER = resolve_cluster(config["launcher"]["cluster"])
config["launcher"]["cluster"] = CLUSTER  # decided once per workflow run, not again by each launcher
ARCHIVE_ONLY = config.get("archive_only", False)
TABLES = ["results/metrics.csv", "results/runs.csv", "results/eval.csv"]
FIGURES = [path for name in config["figures"] for path in wfc.artefact_outputs(name)]
sys.stderr.write(
    f"TRE workflow: grid {config['grid']} (profile {config['profile']}), {len(RUNS)} runs, "
    f"heavy steps through the launcher on {CLUSTER}\n"
)


wildcard_constraints:
    task="math|countdown|hh",
    size=r"tiny|1\.5b|7b",
    method="[a-z0-9_]+",
    seed=r"\d+",
    name="[a-z0-9_]+",


rule all:
    input:
        ([] if ARCHIVE_ONLY else [f"{r.run_dir}/summary.json" for r in RUNS] + [f"{r.run_dir}/eval/launch.json" for r in RUNS]),
        TABLES,
        FIGURES,
    default_target: True


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/reward.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/results.smk"
