"""CLI: `python -m evaluation.reward_model train|serve ...` (see --help of each)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from common.argtypes import Parser, int_at_least, open_fraction, output_dir, port, positive_seconds


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for both subcommands."""
    from evaluation.reward_model.server import DEFAULT_MAX_BATCH, DEFAULT_MAX_BODY_MB, DEFAULT_MAX_REQUEST, DEFAULT_PORT
    from evaluation.reward_model.train import PRESETS

    parser = Parser(prog="python -m evaluation.reward_model", description="HH reward model: train or serve")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,serve}")

    tr = sub.add_parser("train", help="train a reward model with TRL's RewardTrainer",
                        description="Train a Bradley-Terry reward model (TRL RewardTrainer, center_rewards_coefficient=0.01) "
                                    "and write pairwise accuracy on held-out pairs to OUT/eval.json. For several GPUs "
                                    "launch with `accelerate launch --num_processes N -m evaluation.reward_model train ...`.")
    tr.add_argument("--base", required=True, help="base model directory or hub id (a causal LM gets a new 1-logit head)")
    tr.add_argument("--data", required=True, help="preference data: local .jsonl/.json/.parquet or a hub id "
                                                  "(e.g. trl-lib/ultrafeedback_binarized)")
    tr.add_argument("--out", required=True, type=output_dir, help="output directory (model, tokenizer, eval.json)")
    tr.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="hyper-parameters (default tiny)")
    tr.add_argument("--max-steps", type=int_at_least(1), default=None, help="stop after N optimiser steps")
    tr.add_argument("--split", default="train", help="hub split to train on (default train)")
    tr.add_argument("--eval-data", default=None, help="held-out preference data; default: hold out --eval-fraction of --data")
    tr.add_argument("--eval-split", default="test", help="hub split of --eval-data (default test)")
    tr.add_argument("--eval-fraction", type=open_fraction, default=0.1, help="fraction of --data held out (default 0.1)")
    tr.add_argument("--limit", type=int_at_least(1), default=None, help="use only the first N records of --data")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--report-to", choices=["none", "wandb", "tensorboard"], default="none")

    sv = sub.add_parser("serve", help="serve a reward model over HTTP",
                        description='POST /predict {"prompts": [...], "responses": [...]} -> {"rewards": [...]}; '
                                    "GET /health. When env REWARD_SERVER_TOKEN is set, /predict requires the header "
                                    "'Authorization: Bearer $REWARD_SERVER_TOKEN' (the HH reward client sends it from "
                                    "the same variable); binding beyond loopback without one prints a warning. Texts "
                                    "are cut to 2,048 tokens; only a prefix of a long text is tokenized.")
    sv.add_argument("--model", required=True, help="reward model directory (from `train`)")
    sv.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1, loopback only)")
    sv.add_argument("--port", type=port, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    sv.add_argument("--max-batch", type=int_at_least(1), default=DEFAULT_MAX_BATCH,
                    help=f"pairs per forward pass (default {DEFAULT_MAX_BATCH})")
    sv.add_argument("--max-request", type=int_at_least(1), default=DEFAULT_MAX_REQUEST,
                    help=f"most pairs accepted in one request (default {DEFAULT_MAX_REQUEST})")
    sv.add_argument("--max-body-mb", type=int_at_least(1), default=DEFAULT_MAX_BODY_MB,
                    help=f"largest request body in MiB (default {DEFAULT_MAX_BODY_MB})")
    sv.add_argument("--device", default="auto", help="auto (one replica per visible GPU, else CPU), cuda, cpu or cuda:N")
    sv.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                    help="weights dtype (default bfloat16 on GPU, float32 on CPU)")
    sv.add_argument("--cpu-threads", type=int_at_least(1), default=1,
                    help="torch threads of a CPU replica (default 1: it shares the cores with the training run)")
    sv.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"], default="info")
    sv.add_argument("--idle-exit-s", type=positive_seconds, default=None,
                    help="exit once no request has come for this many seconds (default: serve until stopped)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The CLI's arguments, checked; a usage error exits 2 with one line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve" and args.device not in ("auto", "cuda", "cpu") and not args.device.startswith("cuda:"):
        parser.exit(2, f"{parser.prog} serve: error: --device must be auto, cuda, cpu or cuda:N, got {args.device!r}\n")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors print one line and exit 2."""
    parser = build_parser()
    args = parse_args(argv)
    if args.command == "train":
        from evaluation.reward_model.train import train

        try:
            record = train(args.base, args.data, args.out, preset=args.preset, max_steps=args.max_steps,
                           split=args.split, eval_data=args.eval_data, eval_split=args.eval_split,
                           eval_fraction=args.eval_fraction, seed=args.seed, limit=args.limit,
                           report_to=args.report_to)
        except ValueError as err:
            parser.exit(2, f"{parser.prog} train: error: {err}\n")
        if record:
            summary = {k: record[k] for k in ("accuracy", "n", "loss", "train_steps", "train_seconds")}
            print(json.dumps(summary))
        return 0

    from evaluation.reward_model.server import TOKEN_ENV, serve

    try:
        serve(args.model, host=args.host, port=args.port, max_batch=args.max_batch, max_request=args.max_request,
              max_body_mb=args.max_body_mb, device=args.device, dtype=args.dtype, cpu_threads=args.cpu_threads,
              log_level=args.log_level, token=os.environ.get(TOKEN_ENV) or None, idle_exit_s=args.idle_exit_s)
    except ValueError as err:
        parser.exit(2, f"{parser.prog} serve: error: {err}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
