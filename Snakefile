"""The TRE workflow: data -> tiny model / reward model -> PPO runs -> evaluation -> results tables -> figures.

`snakemake all` runs the tiny CPU grid (workflow/config/tiny.yaml) with the workflow profile profiles/default;
`snakemake --profile slurm all` the paper grid (workflow/config/paper.yaml) on a Slurm cluster. The rules are in
workflow/rules/. Heavy steps go through workflow/launcher/ (submitit), light ones run where Snakemake runs.
"""
import json
import os
import re
import shlex
import sys

from figures import ARTEFACTS
from tre.grid import METHODS, SIZES, TASKS
from workflow import config as wfc
from workflow.launcher.cluster import resolve_cluster
from workflow.launcher.tokens import ensure_launch_token, reward_token

_resolved = wfc.load_or_exit(config)
config.clear()
config.update(_resolved)

PY = sys.executable
RUNS = list(wfc.runs(config))
CLUSTER = resolve_cluster(config["launcher"]["cluster"])
config["launcher"]["cluster"] = CLUSTER  # decided once per workflow run, not again by each launcher
if CLUSTER == "local":
    # one launch secret for the whole run (the jobs inherit it), so that its local HH steps share one reward server
    # per model (evaluation.reward_model.lifecycle.shared_server), stopped when the run ends
    ensure_launch_token()
ARCHIVE_ONLY = config.get("archive_only", False)
TABLES = ["results/metrics.csv", "results/runs.csv", "results/eval.csv"]
FIGURES = [path for name in config["figures"] for path in wfc.artefact_outputs(name)]
sys.stderr.write(
    f"TRE workflow: grid {config['grid']} (profile {config['profile']}), {len(RUNS)} runs, "
    f"heavy steps through the launcher on {CLUSTER}\n"
)


def one_of(names):
    """A wildcard constraint matching exactly these names."""
    return "|".join(map(re.escape, names))


wildcard_constraints:
    task=one_of(TASKS),
    size=one_of(SIZES),
    method=one_of(METHODS),
    seed=r"\d+",
    name=one_of(ARTEFACTS),


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
