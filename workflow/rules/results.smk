# The results/ archive (tidy tables collected from runs/) and one rule per table/figure, reading only results/.
# With archive_only=true the tables are taken as they are on disk, so a figure never reruns anything.

DISTS = "results/next_token_dists.csv"


localrules:
    figure,
    table,


if not ARCHIVE_ONLY:

    localrules:
        collect,
        dists,

    rule collect:
        input:
            [f"{r.run_dir}/summary.json" for r in RUNS],
            [f"{r.run_dir}/eval/launch.json" for r in RUNS],
        output:
            TABLES,
            "results/provenance.json",
        log:
            "logs/collect/collect.log",
        shell:
            "{PY} -m figures collect runs --results results > {log} 2>&1"

    # Figure 1: next-token distributions of the base policy and of the last entropy / TRE checkpoints.
    _F1 = wfc.figure1_run(config)

    rule dists:
        input:
            [
                f"runs/{_F1['task']}/{_F1['size']}/{m}/seed{_F1['seed']}/summary.json"
                for m in ("entropy", _F1["tre_method"])
            ],
        output:
            DISTS,
        params:
            args=shlex.join(
                ["--runs", "runs", "--task", _F1["task"], "--size", _F1["size"], "--seed", str(_F1["seed"]),
                 "--tre-method", _F1["tre_method"], "--results", "results", "--prompt-index", str(_F1["prompt_index"]),
                 "--response-prefix", _F1["response_prefix"]]
            ),
        log:
            "logs/figures/dists.log",
        shell:
            "{PY} -m figures dists {params.args} > {log} 2>&1"


def artefact_inputs(wc):
    return TABLES + ([DISTS] if wc.name == "figure1" else [])


rule figure:
    input:
        artefact_inputs,
    output:
        pdf="results/figures/{name}.pdf",
        png=report("results/figures/{name}.png", category="Figures", caption="../report/figure.rst"),
    log:
        "logs/figures/{name}.log",
    shell:
        "{PY} -m figures {wildcards.name} > {log} 2>&1"


rule table:
    input:
        artefact_inputs,
    output:
        csv=report("results/tables/{name}.csv", category="Tables", caption="../report/table.rst"),
        md="results/tables/{name}.md",
        tex="results/tables/{name}.tex",
    wildcard_constraints:
        name=one_of(n for n in ARTEFACTS if n.startswith("table")),
    log:
        "logs/figures/{name}.log",
    shell:
        "{PY} -m figures {wildcards.name} > {log} 2>&1"
