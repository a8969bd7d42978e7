# The HH reward model of each size (TRL RewardTrainer through the launcher). Its server is started by the
# launcher next to each HH training/evaluation step (--reward-model), on loopback: for that step's lifetime on Slurm,
# shared by the run's steps on the local launcher (the first starts it; it stops when the run ends or sits idle).


def rm_inputs(wc):
    data = config["reward_model"]["data"]
    local_data = [data] if not wfc.is_made_path(data) and os.path.exists(data) else []
    return model_inputs(config["models"][wc.size]["reward_base"]) + local_data


rule rm_train:
    input:
        rm_inputs,
    output:
        directory("models/rm/{size}"),
    params:
        # what the model depends on (a change retrains it); where/how it runs (cluster, resources) is not
        args=lambda wc: wfc.rm_train_args(config, wc.size),
    threads: lambda wc: launcher_threads("rm_train", wc.size)
    log:
        "logs/rm_train/{size}/snakemake.log",
    run:
        cmd = wfc.launcher_cmd(
            PY,
            name="rm_train",
            log_dir=f"logs/rm_train/{wildcards.size}",
            config=config,
            resources=wfc.step_resources(config, "rm_train", wildcards.size),
            argv=[PY, "-m", "evaluation.reward_model", *params.args],
        )
        shell_logged(cmd, log)


def stop_shared_reward_servers():
    """The local launcher's shared reward servers of this run (a server another run started is not ours)."""
    if CLUSTER != "local":
        return
    from evaluation.reward_model.lifecycle import stop_shared_server

    for model in sorted({reward_model_of(r) for r in RUNS} - {None}):
        stop_shared_server(model, reward_token())


onsuccess:
    stop_shared_reward_servers()


onerror:
    stop_shared_reward_servers()
