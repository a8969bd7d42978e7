"""CLI: python -m evaluation.tasks prepare TASK --out DIR [--source PATH|HUB_ID] [--train-size N] [--test-size N]."""

from __future__ import annotations

import argparse
import json
import sys

from common.argtypes import Parser, int_at_least, output_dir
from evaluation.tasks import FIXTURES_DIR, TASKS, get_task
from evaluation.tasks.common import DataUnavailable

# tasks with a seeded offline generator (a module-level generate(); prepare(generated=True)), alphabetically
GENERATED = tuple(sorted(name for name, module in TASKS.items() if hasattr(module, "generate")))

EPILOG = f"""\
sources:
  without --source the task's Hugging Face hub dataset is loaded (needs hub access):
    math       DigitalLearningGmbH/MATH-lighteval  (train 7,500 / test 5,000 splits)
    countdown  Jiayi-Pan/Countdown-Tasks-3to4-Unique  (train split: first 7,500 / next 5,000 rows)
    hh         trl-lib/ultrafeedback_binarized  (train split shuffled with seed 42: first 7,500 / next 5,000)
  --source PATH reads a local .jsonl/.json/.parquet file in the hub schema and takes the first N rows for train
  and the next M for test (hh: after the seed-42 shuffle); for math a directory with train.* and test.* keeps its
  own splits. --source ID loads another hub dataset with the same schema.
  --generate makes tasks with our seeded generators instead (offline): countdown every task solvable
  (3-4 numbers in 1..99, targets 10..100; --numbers, --max-number, --min-target, --max-target, --ops and
  --train-from-test change that: the CPU miniature is --numbers 3 --max-number 9 --max-target 50 --ops '+*'
  --train-from-test); math one-operation arithmetic on 0..12 in the MATH schema (the
  tiny CPU miniature: a problem a tiny policy learns in a minute, scored by the same MATH scorer).

offline fixtures (synthetic, in {FIXTURES_DIR}):
  math.jsonl          30 problems     e.g. --train-size 20 --test-size 10
  countdown.jsonl     64 tasks        e.g. --train-size 48 --test-size 16
  ultrafeedback.jsonl 40 preferences  e.g. --train-size 30 --test-size 10
"""


def build_parser() -> argparse.ArgumentParser:
    """The `python -m evaluation.tasks` argument parser."""
    parser = Parser(prog="python -m evaluation.tasks", description="Prepare task data for verl.")
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser(
        "prepare",
        help="write DIR/train.parquet and DIR/test.parquet in verl's RLHFDataset schema",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prepare.add_argument("task", choices=list(TASKS), metavar="TASK", help=f"one of {', '.join(TASKS)}")
    prepare.add_argument("--out", required=True, type=output_dir, metavar="DIR", help="output directory")
    prepare.add_argument("--source", metavar="PATH|HUB_ID", help="local file/directory or hub dataset id")
    prepare.add_argument("--train-size", type=int_at_least(1), default=7500, metavar="N", help="train rows (7500)")
    prepare.add_argument("--test-size", type=int_at_least(1), default=5000, metavar="N", help="test rows (5000)")
    prepare.add_argument("--seed", type=int, metavar="S",
                         help="hh: shuffle seed (42); --generate: generator seed (0); unused by the hub's math and countdown")
    prepare.add_argument("--generate", action="store_true", help="countdown and math: use our seeded generator")
    prepare.add_argument("--max-operand", type=int_at_least(1), metavar="N",
                         help="math --generate: operands 0..N (12; 6 gives the 126 problems of the CPU miniature)")
    prepare.add_argument("--numbers", type=int_at_least(2), metavar="N", help="countdown --generate: exactly N numbers (3-4)")
    prepare.add_argument("--max-number", type=int_at_least(1), metavar="N", help="countdown --generate: numbers 1..N (99)")
    prepare.add_argument("--min-target", type=int_at_least(0), metavar="N", help="countdown --generate: smallest target (10)")
    prepare.add_argument("--max-target", type=int_at_least(0), metavar="N", help="countdown --generate: largest target (100)")
    prepare.add_argument("--ops", metavar="OPS",
                         help="countdown --generate: targets reachable with these operators, e.g. '+*' (+-*/); the "
                              "prompt and the reward still allow all four")
    prepare.add_argument("--train-from-test", action="store_true",
                         help="countdown --generate: train draws i.i.d. from the test tasks (the CPU miniature)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors print one line and return 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.generate and args.task not in GENERATED:
        parser.error(f"--generate: only for tasks {', '.join(GENERATED)}, got {args.task!r}")
    if args.generate and args.source is not None:
        parser.error("--generate: give either --source or --generate, not both")
    if args.max_operand is not None and not (args.generate and args.task == "math"):
        parser.error("--max-operand: only with math --generate")
    countdown_options = {"numbers": args.numbers, "max_number": args.max_number, "min_target": args.min_target,
                         "max_target": args.max_target, "ops": args.ops, "train_from_test": args.train_from_test or None}
    for key, value in countdown_options.items():
        if value is not None and not (args.generate and args.task == "countdown"):
            parser.error(f"--{key.replace('_', '-')}: only with countdown --generate")
    task = get_task(args.task)
    kwargs = {"source": args.source, "train_size": args.train_size, "test_size": args.test_size}
    if args.seed is not None:
        kwargs["seed"] = args.seed
    if args.generate:
        kwargs["generated"] = True
    if args.max_operand is not None:
        kwargs["max_operand"] = args.max_operand
    kwargs.update({key: value for key, value in countdown_options.items() if value is not None})
    try:
        result = task.prepare(args.out, **kwargs)
    except DataUnavailable as exc:
        offline = "--generate, or --source " if args.task in GENERATED else "--source "
        print(f"error: {exc} (offline: {offline}{task.FIXTURE} with small sizes, see --help)", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {args.task}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
