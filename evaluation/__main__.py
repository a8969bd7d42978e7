"""CLI: `python -m evaluation evaluate RUN_DIR [--step N] [--n K] [--split test]`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from common.argtypes import Parser, device, int_at_least
from tre.backend.mirror import DEFAULT_PROJECT
from tre.backend.mirror import MODES as WANDB_MODES


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of `python -m evaluation`."""
    p = Parser(prog="python -m evaluation", description="Evaluate run checkpoints.")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("evaluate", help="sample a checkpoint (T=1.0, top-p 0.7) and score it: pass@k, mean@n, lm-eval",
                       description="Writes RUN_DIR/eval/<step>/samples.jsonl and scores.json.")
    e.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="runs/<task>/<size>/<method>/seed<k>")
    e.add_argument("--step", type=int_at_least(0), default=None, help="checkpoint step (default: the last; 0 = the initial model)")
    e.add_argument("--n", type=int_at_least(1), default=1, help="samples per prompt (1 = Pass@1; k > 1 adds pass@k and mean@k)")
    e.add_argument("--split", choices=("test", "train"), default="test", help="which data file of the run (default: test)")
    e.add_argument("--data", type=Path, default=None, help="a verl parquet to evaluate instead of the run's split")
    e.add_argument("--limit", type=int_at_least(1), default=None, help="only the first LIMIT prompts")
    e.add_argument("--max-new-tokens", type=int_at_least(1), default=None, help="default: the run's max_response_length")
    e.add_argument("--batch-size", type=int_at_least(1), default=8)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", type=device, default="cpu", help="torch device (cpu, cuda, cuda:1...)")
    e.add_argument("--lm-eval", dest="lm_eval", action=argparse.BooleanOptionalAction, default=None,
                   help="run the lm-eval cross-check (default: on for task math)")
    e.add_argument("--lm-eval-task", default="tre_math_local", choices=("tre_math_local", "minerva_math500"),
                   help="tre_math_local: ours, offline, on the run's test split (default); minerva_math500: lm-eval's "
                        "own 4-shot task on MATH-500, run in --lm-eval-python")
    e.add_argument("--lm-eval-python", type=Path, default=None, metavar="PYTHON",
                   help="interpreter with lm-eval[math] for minerva_math500 (default: .venv-lmeval/bin/python, "
                        "made by `bash workflow/setup.sh --lm-eval-math`)")
    e.add_argument("--lm-eval-data", type=Path, default=None, metavar="JSONL",
                   help="minerva_math500 on a local MATH-500 file instead of the hub's (offline clusters)")
    e.add_argument("--wandb", choices=WANDB_MODES, default="disabled",
                   help="add the scores to the run's wandb run as summary values (online needs WANDB_API_KEY)")
    e.add_argument("--wandb-project", default=DEFAULT_PROJECT,
                   help=f"wandb project of a run trained without the mirror (default {DEFAULT_PROJECT})")
    e.add_argument("--wandb-entity", default=None, help="wandb entity of a run trained without the mirror")
    e.add_argument("--wandb-group", default=None, help="prefix of the wandb group of a run trained without the mirror")
    return p


def eval_wandb_scores(res: dict) -> dict:
    """The scores the wandb mirror gets as summary values: the metrics (pass@k, mean@n, RM score), lm-eval's, the step."""
    scores = {"step": res["step"], "n": res["n"], **res["metrics"]}
    if res["lm_eval"]:
        scores.update({f"lm_eval/{k}": v for k, v in res["lm_eval"]["metrics"].items()})
    return scores


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point."""
    from evaluation.evaluate import EvalError, evaluate

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.wandb != "disabled":
        from tre.backend.mirror import credentials_error

        missing_key = credentials_error(args.wandb)
        if missing_key:  # before the sampling, not after it
            parser.error(f"--wandb: {missing_key}")
    try:
        res = evaluate(args.run_dir, step=args.step, n=args.n, split=args.split, data=args.data, limit=args.limit,
                       max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed,
                       device=args.device, lm_eval=args.lm_eval, lm_eval_task=args.lm_eval_task,
                       lm_eval_python=args.lm_eval_python, lm_eval_data=args.lm_eval_data)
    except EvalError as e:
        parser.error(str(e))
    except RuntimeError as e:  # the lm-eval harness failed: one line, the log's path in it
        print(f"error: {e}", file=sys.stderr)
        return 1
    scores = eval_wandb_scores(res)
    print(json.dumps({"step": res["step"], "n": res["n"], "num_prompts": res["num_prompts"],
                      **{k: v for k, v in scores.items() if k not in ("step", "n")}}))
    if args.wandb != "disabled":
        from tre.backend.mirror import identity, log_eval
        from tre.backend.rundir import RunDir

        config = RunDir(args.run_dir).config
        names = identity(config["task"], config["size"], config["method"], config["seed"], config.get("git_commit"),
                         project=args.wandb_project, entity=args.wandb_entity, group=args.wandb_group)
        print(f"wandb: scores added to run {log_eval(args.run_dir, args.wandb, names, scores)}", file=sys.stderr)
    print(f"wrote {Path(args.run_dir) / 'eval' / str(res['step'])}/{{samples.jsonl,scores.json}}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
