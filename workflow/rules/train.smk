# PPO runs (tre.backend through the launcher, checkpointable) and their checkpoint evaluation.
# `params` hold what a result depends on (a change reruns exactly those runs); the launcher command line with
# cluster and resources is built in `run:`, so moving the workflow to another cluster or partition reruns nothing.


def reward_model_of(run):
    """The RM directory an HH run is scored by, else None."""
    return f"models/rm/{run.size}" if run.task == "hh" else None


def train_inputs(wc):
    run = run_of(wc)
    rm = reward_model_of(run)
    return {
        "train": f"data/{run.task}/train.parquet",
        "test": f"data/{run.task}/test.parquet",
        "models": model_inputs(wfc.policy_path(config, run)) + ([rm] if rm else []),
    }


def train_cmd(wc):
    run = run_of(wc)
    res = wfc.step_resources(config, "train", run.size)
    spec = json.dumps(wfc.method_spec(config, run), sort_keys=True)
    return wfc.launcher_cmd(
        PY,
        name="train",
        log_dir=f"logs/train/{run.wildcards}",
        config=config,
        resources=res,
        argv=[PY, "-m", "tre.backend", *wfc.train_args(config, run)],
        checkpointable=True,
        reward_model=reward_model_of(run),
        ray=res.get("nodes", 1) > 1,
        supersede=(run.run_dir, spec),
        term_grace_s=config["train"].get("term_grace_s"),
    )


rule train:
    input:
        unpack(train_inputs),
    output:
        "runs/{task}/{size}/{method}/seed{seed}/summary.json",
    params:
        # the method's fields, profile, model and overrides
        spec=lambda wc: json.dumps(wfc.method_spec(config, run_of(wc)), sort_keys=True),
    threads: lambda wc: launcher_threads("train", wc.size)
    log:
        "logs/train/{task}/{size}/{method}/seed{seed}/snakemake.log",
    run:
        shell_logged(train_cmd(wildcards), log)


def eval_inputs(wc):
    run = run_of(wc)
    rm = reward_model_of(run)
    return {"summary": f"{run.run_dir}/summary.json", "models": [rm] if rm else []}


rule evaluate:
    input:
        unpack(eval_inputs),
    output:
        "runs/{task}/{size}/{method}/seed{seed}/eval/launch.json",
    params:
        args=lambda wc: wfc.eval_args(config, run_of(wc)),
    threads: lambda wc: launcher_threads("eval", wc.size)
    log:
        "logs/evaluate/{task}/{size}/{method}/seed{seed}/snakemake.log",
    run:
        run_ = run_of(wildcards)
        cmd = wfc.launcher_cmd(
            PY,
            name="evaluate",
            log_dir=f"logs/evaluate/{run_.wildcards}",
            config=config,
            resources=wfc.step_resources(config, "eval", wildcards.size),
            argv=[PY, "-m", "evaluation", *params.args, *wfc.wandb_args(config)],  # not a param: it reruns nothing
            reward_model=reward_model_of(run_),
            record=output[0],
        )
        shell_logged(cmd, log)
