"""CLI: `python -m tre.backend train|overrides --task T --size S --method M [options] [key=value ...]`."""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Optional

from common.argtypes import Parser
from tre.backend.mirror import DEFAULT_PROJECT
from tre.backend.profiles import PROFILES, WANDB_MODES, RunSpec, SpecError
from tre.backend.rundir import RunDirError
from tre.grid import METHODS, SIZES, TASKS


def build_parser() -> argparse.ArgumentParser:
    """The `python -m tre.backend` argument parser."""
    parser = Parser(prog="python -m tre.backend", description="verl PPO runs with TRE and the baselines")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("train", "run one PPO experiment and write its run directory"),
                            ("overrides", "print the verl Hydra overrides of a run, one key=value per line")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--task", required=True, help=f"one of {', '.join(TASKS)}")
        p.add_argument("--size", required=True, help=f"one of {', '.join(SIZES)}")
        p.add_argument("--method", required=True, help=f"one of {', '.join(METHODS)}")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--profile", default=None, help=f"one of {', '.join(PROFILES)} (default: tiny for size tiny, else paper)")
        p.add_argument("--run-dir", default=None, help="default runs/<task>/<size>/<method>/seed<N>")
        p.add_argument("--data-dir", default=None, help="holds train.parquet and test.parquet (default data/<task>)")
        p.add_argument("--model-path", default=None, help="local model directory (required for size tiny)")
        p.add_argument("--wandb", default="disabled", help=f"the wandb mirror of metrics.jsonl: one of {', '.join(WANDB_MODES)} "
                       "(online needs WANDB_API_KEY)")
        p.add_argument("--wandb-project", default=DEFAULT_PROJECT, help=f"wandb project (default {DEFAULT_PROJECT})")
        p.add_argument("--wandb-entity", default=None, help="wandb entity (default: the key's own)")
        p.add_argument("--wandb-group", default=None, help="prefix of the run's wandb group (default: its cell, task_size_method)")
        p.add_argument("extra", nargs="*", metavar="key=value", help="verl Hydra overrides, applied last")
    return parser


def spec_from_args(args: argparse.Namespace) -> RunSpec:
    """The RunSpec of parsed CLI arguments (pseudo-keys model_path=/data_dir=/run_dir= accepted too)."""
    from tre.backend.launch import parse_extra

    pseudo, extra = parse_extra(list(args.extra))
    profile = args.profile or ("tiny" if args.size == "tiny" else "paper")
    return RunSpec(task=args.task, size=args.size, method=args.method, seed=args.seed, profile=profile,
                   run_dir=args.run_dir or pseudo.get("run_dir"), data_dir=args.data_dir or pseudo.get("data_dir"),
                   model_path=args.model_path or pseudo.get("model_path"), wandb=args.wandb, wandb_project=args.wandb_project,
                   wandb_entity=args.wandb_entity, wandb_group=args.wandb_group, extra=tuple(extra))


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point; user errors print one line and return 2."""
    # verl 0.4.1 imports pkg_resources; keep `overrides` output (and errors) free of that warning.
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # usage errors (2) and --help (0) as return codes, for callers of main()
        return int(exc.code or 0)
    try:
        spec = spec_from_args(args)
        if args.command == "overrides":
            from tre.backend.launch import compose, resolve
            from tre.backend.profiles import overrides

            items = overrides(spec)
            resolve(compose(items))  # a malformed override or a broken interpolation fails here, not on a cluster
            print("\n".join(items))
            return 0
        from tre.backend.launch import train

        return train(spec)
    except (SpecError, RunDirError) as exc:  # RunDirError: a resumed run's metrics.jsonl is corrupt
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
