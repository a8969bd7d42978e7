# Task data (verl RLHFDataset parquet) and the tiny offline models; both light, run where Snakemake runs.


localrules:
    data,
    tiny_model,
    warm_start,


rule data:
    output:
        train="data/{task}/train.parquet",
        test="data/{task}/test.parquet",
    params:
        args=lambda wc: shlex.join(wfc.data_args(config, wc.task)),
    log:
        "logs/data/{task}.log",
    shell:
        "{PY} -m evaluation.tasks {params.args} > {log} 2>&1"


rule tiny_model:
    output:
        policy=directory("models/tiny/policy"),
        reward=directory("models/tiny/reward"),
    params:
        vocab=config.get("tiny_model", {}).get("vocab_size", 8192),
        seed=config.get("tiny_model", {}).get("seed", 0),
    log:
        "logs/tiny_model/tiny_model.log",
    shell:
        "{PY} -m miniature.tiny_model --out models/tiny --kind both --vocab-size {params.vocab} "
        "--seed {params.seed} > {log} 2>&1"


rule warm_start:
    input:
        base=lambda wc: model_inputs(config["warm_start"]["base"]),
        data="data/{task}/train.parquet",
    output:
        directory(wfc.warm_start_model("{task}")),
    params:
        spec=lambda wc: json.dumps(wfc.warm_start_settings(config, wc.task), sort_keys=True),
    # One thread: a second made a warm start only 1.3-1.5x faster for 1.7 cores, while the first task's PPO runs could
    # use that core; the models are the same bits with 1 or 2 (all three tasks' compared)
    threads: 1
    log:
        "logs/warm_start/{task}.log",
    run:
        shell_logged(shlex.join([PY, "-m", "miniature.warm_start", *wfc.warm_start_args(config, wildcards.task, threads)]), log)
