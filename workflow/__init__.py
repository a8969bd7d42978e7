"""The Snakemake workflow's Python side: config loading/validation (workflow.config) and the submitit launcher."""
