"""CLI: `python -m figures list | collect RUNS_DIR | compare --runs DIR | dists ... | all | NAME`."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

from common.argtypes import Parser, int_at_least, output_dir
from figures import ARTEFACTS, artefact
from figures.common import RESULTS_DIR, ArchiveError
from tre.grid import TRE_METHODS

COMMANDS = ("list", "collect", "compare", "dists", "all")


def _out_dir(name: str, results: Path, out: Optional[Path]) -> Path:
    return out if out is not None else results / ("tables" if name.startswith("table") else "figures")


def cmd_list(argv: list[str]) -> int:
    """Print every artefact name with what it shows."""
    Parser(prog="python -m figures list", description="List the tables and figures.").parse_args(argv)
    for name in ARTEFACTS:
        print(f"{name:<18} {artefact(name).DESCRIPTION}")
    return 0


def cmd_build(names: list[str], argv: list[str]) -> int:
    """Build the named artefacts from the archive, printing each output path and the time it took."""
    p = Parser(prog=f"python -m figures {names[0] if len(names) == 1 else 'all'}")
    p.add_argument("--results", type=Path, default=RESULTS_DIR, help="the archive directory (default: results)")
    p.add_argument("--out", type=output_dir, default=None, help="output directory (default: results/figures or results/tables)")
    args = p.parse_args(argv)
    failed = 0
    for name in names:
        t0 = time.perf_counter()
        try:
            paths = artefact(name).build(args.results, _out_dir(name, args.results, args.out))
        except ArchiveError as e:
            if len(names) == 1:
                raise
            print(f"figures {name}: {e}", file=sys.stderr)  # `all` goes on with the other artefacts
            failed += 1
            continue
        print(f"{name}: {', '.join(map(str, paths))} ({time.perf_counter() - t0:.2f} s)")
    return 1 if failed else 0


def cmd_collect(argv: list[str]) -> int:
    """Collect run directories into results/."""
    from figures.collect import collect

    p = Parser(prog="python -m figures collect", description="Gather run directories into results/ tables.")
    p.add_argument("runs_dir", type=Path, help="directory holding <task>/<size>/<method>/seed<k>/ run directories")
    p.add_argument("--results", "--out", dest="results", type=output_dir, default=RESULTS_DIR,
                   help="the archive directory (default: results)")
    p.add_argument("--provenance", default=None, help="label for every collected row (default: ours:<profile>:<device>)")
    args = p.parse_args(argv)
    if not args.runs_dir.is_dir():
        p.error(f"RUNS_DIR: not a directory: {args.runs_dir}")
    report = collect(args.runs_dir, args.results, args.provenance)
    for path, why in report.skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    if not report.collected:
        print(f"figures collect: no collectable run directories (<task>/<size>/<method>/seed<k>) under {args.runs_dir}", file=sys.stderr)
        return 1
    print(f"collected {len(report.collected)} runs into {args.results} ({report.metric_rows} metric rows, "
          f"{report.eval_rows} eval rows in the archive; {len(report.skipped)} skipped)")
    return 0


def cmd_compare(argv: list[str]) -> int:
    """Compare new runs against the archive."""
    from figures import compare

    p = Parser(
        prog="python -m figures compare",
        description="Compare new runs with the archived methods: every method under --runs against PPO, TRE-K and TRE-P "
                    "(Welch 95 % CIs and t-tests over seeds), and the curves next to the archived methods. Where they "
                    "share cells, the new run wins: a run under --runs replaces the archived run of the same task, size, "
                    "method and seed, and the other archived seeds stay (the runs `collect` would archive); the source "
                    "and ref_source columns say where each side's seeds came from (runs, archive or runs+archive). The "
                    "outputs are written only when all of them are made.")
    p.add_argument("--runs", type=Path, required=True, help="directory of the new runs (<task>/<size>/<method>/seed<k>/)")
    p.add_argument("--against", type=Path, default=RESULTS_DIR, help="the archive to compare with (default: results)")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: <against>/compare)")
    args = p.parse_args(argv)
    if not args.runs.is_dir():
        p.error(f"--runs: not a directory: {args.runs}")
    try:
        res = compare.run(args.runs, args.against, args.out or args.against / "compare")
    except ValueError as e:
        p.error(str(e))
    for path, why in res.skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    print(compare.to_markdown(res.table), end="")
    print("wrote " + ", ".join(map(str, res.paths)))
    return 0


def cmd_dists(argv: list[str]) -> int:
    """Extract next-token distributions (pre-trained, after PPO + entropy, after TRE) for Figure 1."""
    from figures import next_token

    p = Parser(prog="python -m figures dists", description="Extract next-token distributions for Figure 1.")
    p.add_argument("--runs", type=Path, help="runs directory: take the base model and the last entropy/TRE checkpoints from it")
    p.add_argument("--task", default="countdown")
    p.add_argument("--size", default="tiny")
    p.add_argument("--seed", type=int, default=0, help="seed of the entropy and TRE runs (with --runs)")
    p.add_argument("--tre-method", default="tre_p", choices=TRE_METHODS, help="the TRE variant of the --tre policy")
    p.add_argument("--base", help="pre-trained policy (HF dir); with --entropy and --tre instead of --runs")
    p.add_argument("--entropy", help="policy after PPO + entropy (HF dir)")
    p.add_argument("--tre", help="policy after TRE (HF dir)")
    p.add_argument("--prompt", help="user message to condition on")
    p.add_argument("--prompt-file", type=Path, help="verl parquet whose row --prompt-index gives the prompt (default with --runs: the run's val file)")
    p.add_argument("--prompt-index", type=int_at_least(0), default=0)
    p.add_argument("--response-prefix", default="", help="text already generated by the assistant before the next token")
    p.add_argument("--keep", type=int_at_least(1), default=512, help="ranks to store per distribution (default 512)")
    p.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    try:
        if args.runs is not None:
            models = next_token.models_from_runs(args.runs, args.task, args.size, args.seed, args.tre_method)
            if args.prompt is None and args.prompt_file is None:
                args.prompt_file = next_token.val_file(args.runs, args.task, args.size, args.seed)
        elif args.base and args.entropy and args.tre:
            models = {"base": args.base, "entropy": args.entropy, "tre": args.tre}
        else:
            p.error("give --runs RUNS_DIR, or all of --base, --entropy and --tre")
        messages = next_token.resolve_messages(args.prompt, args.prompt_file, args.prompt_index)
        path = next_token.extract(models, messages, args.results, args.response_prefix, args.keep,
                                  tre_method=args.tre_method, seed=args.seed if args.runs is not None else None)
    except (ValueError, FileNotFoundError, OSError) as e:
        p.error(str(e))
    print(f"wrote {path}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """Dispatch to a command or an artefact name."""
    argv = list(sys.argv[1:] if argv is None else argv)
    valid = ", ".join((*COMMANDS, *ARTEFACTS))
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m figures {{{valid}}} [options]\n  list: the tables and figures; NAME: build one from results/")
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "list":
            return cmd_list(rest)
        if cmd == "collect":
            return cmd_collect(rest)
        if cmd == "compare":
            return cmd_compare(rest)
        if cmd == "dists":
            return cmd_dists(rest)
        if cmd == "all":
            return cmd_build(list(ARTEFACTS), rest)
        if cmd in ARTEFACTS:
            return cmd_build([cmd], rest)
    except ArchiveError as e:
        print(f"figures {cmd}: {e}", file=sys.stderr)
        return 1
    print(f"figures: unknown name {cmd!r}; valid names: {valid}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
