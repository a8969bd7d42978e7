"""Warm start: a short supervised stage that teaches a (tiny) policy the task formats from demonstrations.

At full scale PPO starts from Qwen2.5-Instruct, which already answers in the task's format and is right some of the
time. A random tiny model never is, so every method would score 0 and the CPU grid would compare noise. This stage
fine-tunes the tiny policy on each prepared training row's demonstration (MATH: the worked solution ending in
\\boxed{}; Countdown: the solver's equation in the authors' <think>/<answer> format; HH: the preferred reply of the
preference pair) for a fixed, small number of steps, so PPO starts non-zero but far from perfect. Deterministic given
the seed and the thread count.

--plain-fraction F writes that fraction of the demonstrations with the task's format slip (MATH: no \\boxed{} around
the answer; Countdown: the result written into <answer>, `(5 + 2) + 4 = 11`). The warm
policy then often ignores the requested answer format, as instruct models do, and the scorer gives those answers 0:
a consistent signal that PPO on a tiny policy can learn within tens of steps (the arithmetic itself it cannot
improve that fast; see README, "The CPU miniature").

    python -m miniature.warm_start --model models/tiny/policy --data data/math/train.parquet --out models/tiny/warm/math
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from common.argtypes import Parser, fraction, int_at_least, open_fraction, output_dir
from common.files import BadFile, atomic_write_text, read_parquet, replace_dir

RECORD = "warm_start.json"


class WarmStartError(ValueError):
    """Bad input to the warm start (one line naming the field)."""


@dataclass(frozen=True)
class Settings:
    """The optimisation settings of a warm start (recorded in warm_start.json)."""

    steps: int = 400
    lr: float = 3e-3
    batch_size: int = 32
    warmup: float = 0.1
    seed: int = 0
    plain_fraction: float = 0.0


def demonstrations(paths: list[Path], *, plain_fraction: float = 0.0, seed: int = 0) -> list[tuple[list[dict[str, str]], str]]:
    """(chat prompt, target response) of every row of the prepared parquet files, from the task's demonstration().

    A plain_fraction of the rows (one draw with `seed` per row) get the task's format slip (demonstration(plain=True)).
    """
    from evaluation.tasks import task_for_source

    rng = random.Random(seed)
    pairs = []
    for path in paths:
        try:
            rows = read_parquet(path, "data").to_pylist()
        except BadFile as exc:
            raise WarmStartError(str(exc)) from None
        for i, row in enumerate(rows):
            try:
                task = task_for_source(row["data_source"])
            except (KeyError, TypeError, ValueError):
                raise WarmStartError(f"data: row {i} of {path} has no known data_source") from None
            if not hasattr(task, "demonstration"):
                raise WarmStartError(f"data: task {task.NAME} ({path}) has no demonstrations")
            try:
                # one draw per row, in file order: math-only data gets the same slips as before countdown had any
                plain = bool(plain_fraction) and rng.random() < plain_fraction
                pairs.append((list(row["prompt"]), task.demonstration(row, plain=plain)))
            except (KeyError, TypeError, ValueError) as exc:
                raise WarmStartError(f"data: row {i} of {path} has no {task.NAME} demonstration ({type(exc).__name__}: {exc}); "
                                     f"make the file with `python -m evaluation.tasks prepare {task.NAME}`") from None
    if not pairs:
        raise WarmStartError(f"data: {', '.join(map(str, paths))} has no rows")
    return pairs


def tokenize(tokenizer, pairs) -> list[tuple[list[int], int]]:
    """(prompt + response + end-of-turn token ids, prompt length) per pair, with the model's chat template."""
    examples = []
    for messages, response in pairs:
        prompt = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        answer = tokenizer(response + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        examples.append((list(prompt) + answer, len(prompt)))
    return examples


def train(model_dir: Path, data: list[Path], out: Path, settings: Settings, *, log=print) -> dict[str, Any]:
    """Fine-tune model_dir on the demonstrations of `data` and save it (with its tokenizer) to `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (Path(model_dir) / "config.json").is_file():
        raise WarmStartError(f"model: {model_dir} is not a model directory (no config.json)")
    check_out(Path(out))
    pairs = demonstrations(data, plain_fraction=settings.plain_fraction, seed=settings.seed)
    torch.manual_seed(settings.seed)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    except (OSError, ValueError, TypeError, KeyError) as exc:  # transformers' ways of saying "not a loadable model"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise WarmStartError(f"model: {model_dir} is not a loadable model directory ({type(exc).__name__}: {first[:200]})") from None
    examples = tokenize(tokenizer, pairs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    optim = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.0)
    warmup = max(1, round(settings.warmup * settings.steps))

    def lr_factor(step: int) -> float:  # linear warm-up, cosine decay to 0
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, settings.steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_factor)
    rng = random.Random(settings.seed)
    model.train()
    losses, t0 = [], time.time()
    for step in range(settings.steps):
        batch = rng.sample(examples, min(settings.batch_size, len(examples)))
        width = max(len(ids) for ids, _ in batch)
        ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch])
        lengths = torch.tensor([len(ids) for ids, _ in batch])
        starts = torch.tensor([start for _, start in batch])
        pos = torch.arange(width)[None]
        attention = (pos < lengths[:, None]).long()
        # the loss covers the response tokens only; the LM head runs on just those positions (the prompt is
        # 3-4x longer, and the vocabulary-wide logits are most of the cost)
        target = ((pos >= starts[:, None]) & (pos < lengths[:, None]))[:, 1:]
        hidden = model.model(input_ids=ids, attention_mask=attention).last_hidden_state[:, :-1]
        loss = torch.nn.functional.cross_entropy(model.lm_head(hidden[target]), ids[:, 1:][target])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        sched.step()
        optim.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 5))
        if step % 50 == 0 or step == settings.steps - 1:
            log(f"warm start step {step + 1}/{settings.steps}: loss {loss.item():.4f} ({time.time() - t0:.0f} s)")
    record = {"base": str(model_dir), "data": [str(p) for p in data], "examples": len(examples),
              **asdict(settings), "threads": torch.get_num_threads(), "final_loss": losses[-1], "losses": losses,
              "wall_time_s": round(time.time() - t0, 3)}
    _save(model, tokenizer, Path(out), record)
    return record


def check_out(out: Path) -> None:
    """WarmStartError unless `out` may be (re)placed: absent, an empty directory, or an earlier warm start's output."""
    if not out.exists():
        return
    if not out.is_dir():
        raise WarmStartError(f"--out: {out} is a file; give a directory")
    if any(out.iterdir()) and not (out / RECORD).is_file():
        raise WarmStartError(f"--out: {out} already holds files and is not a warm start output (no {RECORD}); "
                             "give a new or empty directory")


def _save(model, tokenizer, out: Path, record: dict[str, Any]) -> None:
    """Write the model, tokenizer and record to a sibling temp dir, then swap it in: `out` is whole or absent."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_text(tmp / RECORD, json.dumps(record, indent=1) + "\n")
        check_out(out)  # again: `out` may have changed during the training
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def build_parser() -> argparse.ArgumentParser:
    """The `python -m miniature.warm_start` argument parser."""
    defaults = Settings()
    parser = Parser(prog="python -m miniature.warm_start", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path, metavar="DIR", help="base policy directory (HF format)")
    parser.add_argument("--data", required=True, nargs="+", type=Path, metavar="PARQUET",
                        help="prepared train parquet(s) (python -m evaluation.tasks prepare)")
    parser.add_argument("--out", required=True, type=output_dir, metavar="DIR",
                        help="where the warm-started policy goes: a new or empty directory, or an earlier warm start's "
                             f"output (it has {RECORD}), replaced only once the new one is saved")
    parser.add_argument("--steps", type=int_at_least(1), default=defaults.steps, help=f"optimiser steps ({defaults.steps})")
    parser.add_argument("--lr", type=float, default=defaults.lr, help=f"peak learning rate ({defaults.lr})")
    parser.add_argument("--batch-size", type=int_at_least(1), default=defaults.batch_size,
                        help=f"demonstrations per step ({defaults.batch_size})")
    parser.add_argument("--warmup", type=open_fraction, default=defaults.warmup,
                        help=f"fraction of steps of linear warm-up before the cosine decay ({defaults.warmup})")
    parser.add_argument("--seed", type=int, default=defaults.seed, help=f"sampling and init seed ({defaults.seed})")
    parser.add_argument("--plain-fraction", type=fraction, default=defaults.plain_fraction, metavar="F",
                        help="fraction of demonstrations written with the task's format slip (MATH: no \\boxed{}; "
                             "Countdown: `= result` inside <answer>) "
                             f"({defaults.plain_fraction})")
    parser.add_argument("--threads", type=int_at_least(1), help="torch threads (default: torch's)")
    return parser


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """The CLI's arguments, checked; a usage error exits 2 with one line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.lr > 0 and math.isfinite(args.lr)):
        parser.error(f"--lr: must be a positive number, got {args.lr}")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    """CLI entry point; bad input -> one line on stderr, exit 2."""
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    settings = Settings(steps=args.steps, lr=args.lr, batch_size=args.batch_size, warmup=args.warmup, seed=args.seed,
                        plain_fraction=args.plain_fraction)
    try:
        record = train(args.model, args.data, args.out, settings, log=lambda m: print(m, file=sys.stderr, flush=True))
    except WarmStartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in record.items() if k != "losses"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
