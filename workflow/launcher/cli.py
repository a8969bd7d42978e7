"""The launcher's command line: `python -m workflow.launcher run ... -- CMD ...` and `... status --log-dir DIR`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import workflow.launcher
from common.files import atomic_write_text
from tre.backend.rundir import supersede_if_changed
from workflow.launcher.cluster import CLUSTERS, ENV_CLUSTER, Resources
from workflow.launcher.errors import JobFailed, LaunchError
from workflow.launcher.jobs import StepSpec, launch, read_record


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        sys.stderr.write(f"launcher: {message}\n")
        raise SystemExit(2)


def _parse_resources(text: str) -> Resources:
    try:
        data = json.loads(text)
    except ValueError as e:
        raise LaunchError(f"--resources: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise LaunchError("--resources: must be a JSON object")
    return Resources.from_mapping(data)


def build_parser() -> argparse.ArgumentParser:
    """The launcher's command line."""
    p = _Parser(prog="python -m workflow.launcher", description=workflow.launcher.__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run one command as one job and wait for it")
    run.add_argument("--name", required=True, help="job name (the rule)")
    run.add_argument("--log-dir", required=True, type=Path, help="logs/<rule>/<wildcards>/")
    run.add_argument("--cluster", default=None, help=f"one of {', '.join(CLUSTERS)} (default: ${ENV_CLUSTER} or auto)")
    run.add_argument("--resources", default="{}", help="JSON object of resources (timeout_min, nodes, ...)")
    run.add_argument("--checkpointable", action="store_true", help="requeue on time limit/preemption")
    run.add_argument("--reward-model", default=None, help="serve this reward model next to the command")
    run.add_argument("--ray", action="store_true", help="multi-node: Ray head on rank 0, workers elsewhere")
    run.add_argument("--term-grace-s", type=float, default=60.0, help="seconds the command gets to save")
    run.add_argument("--record", type=Path, default=None, help="also write the outcome JSON here (rule output)")
    run.add_argument("--supersede", nargs=2, metavar=("RUN_DIR", "SPEC_JSON"), default=None,
                     help="move RUN_DIR aside when it was made with a different spec")
    run.add_argument("argv", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    st = sub.add_parser("status", help="print the recorded job of a log dir")
    st.add_argument("--log-dir", required=True, type=Path)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point."""
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "status":
            rec = read_record(args.log_dir)
            if rec is None:
                raise LaunchError(f"--log-dir: no job.json in {args.log_dir}")
            print(json.dumps(rec, indent=2, sort_keys=True))
            return 0
        resources = _parse_resources(args.resources)
        cmd = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not cmd:
            raise LaunchError("command: missing; give it after `--`")
        if args.supersede:
            moved = supersede_if_changed(Path(args.supersede[0]), args.log_dir / "spec.json", args.supersede[1])
            if moved:
                print(f"[launcher] {args.name}: spec changed; previous run moved to {moved}", file=sys.stderr)
        spec = StepSpec(name=args.name, log_dir=args.log_dir, argv=cmd, resources=resources, cluster=args.cluster,
                        checkpointable=args.checkpointable, reward_model=args.reward_model, ray=args.ray,
                        term_grace_s=args.term_grace_s)
        record = launch(spec)
        if args.record:
            atomic_write_text(args.record, json.dumps(record, indent=2, sort_keys=True) + "\n")
        return 0
    except LaunchError as e:
        print(f"launcher: {e}", file=sys.stderr)
        return 1 if isinstance(e, JobFailed) else 2
