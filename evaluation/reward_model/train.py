"""Train the HH reward model with TRL's RewardTrainer (Bradley-Terry, centred rewards) and report held-out accuracy.

Single process (CPU or one GPU):  python -m evaluation.reward_model train --base DIR --data PATH --out DIR
Several GPUs:  accelerate launch --num_processes 8 -m evaluation.reward_model train --preset 1.5b ...
(the per-device batch stays the preset's; gradient accumulation is derived so the effective batch stays 512).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CENTER_REWARDS_COEFFICIENT = 0.01


@dataclass(frozen=True)
class Preset:
    """Training hyper-parameters of one reward-model size."""

    name: str
    learning_rate: float
    num_train_epochs: float
    warmup_ratio: float
    per_device_batch: int
    effective_batch: int | None  # per-device x grad-accum x processes; None: no accumulation
    bf16: bool
    gradient_checkpointing: bool = False
    deepspeed_zero3: bool = False
    max_length: int | None = None  # TRL drops (does not truncate) longer pairs; the authors kept all


# The authors' experiments/hh/reward/train_reward_model_{1.5b,7b}.py (docs/fidelity.md, "Reward: HH"):
# lr 1e-5, 3 epochs, warm-up ratio 0.1 (TRL's linear schedule), effective batch 512, bf16;
# 1.5B: 8 per device x 8 accumulation x 8 GPUs; 7B: 1 x 64 x 8 with gradient checkpointing and ZeRO-3.
PRESETS: dict[str, Preset] = {
    "1.5b": Preset("1.5b", 1e-5, 3, 0.1, per_device_batch=8, effective_batch=512, bf16=True),
    "7b": Preset("7b", 1e-5, 3, 0.1, per_device_batch=1, effective_batch=512, bf16=True,
                 gradient_checkpointing=True, deepspeed_zero3=True),
    # CPU smoke preset for the tiny random model: a high learning rate so that a few dozen steps learn something.
    "tiny": Preset("tiny", 1e-3, 3, 0.1, per_device_batch=8, effective_batch=None, bf16=False, max_length=1024),
}

# DeepSpeed ZeRO-3 as the authors' accelerate config (bf16, no offload, 16-bit weights gathered on save);
# "auto" values are filled in by transformers from the training arguments.
DEEPSPEED_ZERO3: dict[str, Any] = {
    "bf16": {"enabled": "auto"},
    "zero_optimization": {
        "stage": 3,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
        "stage3_prefetch_bucket_size": "auto",
        "stage3_param_persistence_threshold": "auto",
        "stage3_gather_16bit_weights_on_model_save": True,
    },
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
}


def grad_accumulation(preset: Preset, world_size: int) -> int:
    """Gradient-accumulation steps that keep the preset's effective batch on `world_size` processes."""
    if preset.effective_batch is None:
        return 1
    per_step = preset.per_device_batch * world_size
    if preset.effective_batch % per_step:
        raise ValueError(f"preset {preset.name}: effective batch {preset.effective_batch} is not divisible by "
                         f"per-device batch {preset.per_device_batch} x {world_size} processes")
    return preset.effective_batch // per_step


def training_kwargs(preset: Preset, out_dir: str, *, world_size: int = 1, seed: int = 0, max_steps: int | None = None,
                    use_cpu: bool = False, deepspeed_config: str | None = None, report_to: str = "none") -> dict[str, Any]:
    """RewardConfig keyword arguments for a preset (pure: no TRL import)."""
    kwargs: dict[str, Any] = dict(
        output_dir=out_dir,
        learning_rate=preset.learning_rate,
        num_train_epochs=preset.num_train_epochs,
        warmup_ratio=preset.warmup_ratio,
        per_device_train_batch_size=preset.per_device_batch,
        per_device_eval_batch_size=preset.per_device_batch,
        gradient_accumulation_steps=grad_accumulation(preset, world_size),
        bf16=preset.bf16,
        gradient_checkpointing=preset.gradient_checkpointing,
        center_rewards_coefficient=CENTER_REWARDS_COEFFICIENT,
        max_length=preset.max_length,
        seed=seed,
        logging_steps=1 if preset.name == "tiny" else 10,
        save_strategy="no",
        report_to=report_to,
        use_cpu=use_cpu,
        disable_tqdm=preset.name == "tiny",
        dataloader_num_workers=0,
    )
    if preset.gradient_checkpointing:
        kwargs["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    if max_steps is not None:
        kwargs["max_steps"] = max_steps
    if preset.deepspeed_zero3:
        # DeepSpeed's bf16 mode keeps fp32 master weights in the optimizer, so the model itself can load in bf16.
        # Without DeepSpeed, bf16=True is autocast over fp32 weights: bf16 weights would round away lr-1e-5 updates.
        kwargs["model_init_kwargs"] = {"dtype": "bfloat16"}
    if deepspeed_config is not None:
        kwargs["deepspeed"] = deepspeed_config
    return kwargs


def _is_local(data: str) -> bool:
    """Whether --data names a local file or directory rather than a hub id."""
    return os.path.exists(data) or data.endswith((".jsonl", ".json", ".parquet"))


def load_preferences(data: str, split: str = "train"):
    """A preference dataset (chosen/rejected, optional prompt) from a local jsonl/json/parquet file or a hub id."""
    from datasets import load_dataset

    if _is_local(data):
        path = Path(data)
        if not path.exists():
            raise ValueError(f"--data {data}: no such file")
        if not path.is_dir() and path.suffix not in (".parquet", ".jsonl", ".json"):
            raise ValueError(f"--data {data}: unsupported file type {path.suffix!r}; use .jsonl, .json or .parquet")
        import datasets

        # A local file loads in seconds; its progress bar and datasets' own log of a parse error would only
        # surround the one error line below.
        datasets.disable_progress_bars()
        verbosity = datasets.logging.get_verbosity()
        datasets.logging.set_verbosity(datasets.logging.CRITICAL)
        try:
            if path.is_dir():
                ds = load_dataset(str(path), split=split)
            else:
                fmt = "parquet" if path.suffix == ".parquet" else "json"
                ds = load_dataset(fmt, data_files=str(path), split="train")
        except Exception as err:  # datasets wraps a parser's error in its own types: all mean "unreadable file"
            cause = err.__cause__ or err.__context__ or err
            first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
            raise ValueError(f"--data {data}: not readable as a preference file ({first[:200]})") from None
        finally:
            datasets.logging.set_verbosity(verbosity)
            datasets.enable_progress_bars()
    else:
        try:
            ds = load_dataset(data, split=split)
        except Exception as err:  # the hub may be unreachable (offline machines): say what to do instead
            raise ValueError(f"--data {data}: could not load split {split!r} from the Hugging Face hub "
                             f"({type(err).__name__}); pass a local .jsonl or .parquet file instead") from err
    missing = [c for c in ("chosen", "rejected") if c not in ds.column_names]
    if missing:
        raise ValueError(f"--data {data}: missing field(s) {', '.join(missing)}; a preference record needs "
                         f"'chosen' and 'rejected' (chat message lists or strings) and may have 'prompt'")
    keep = [c for c in ("prompt", "chosen", "rejected") if c in ds.column_names]
    if "prompt" in keep and len(ds) and isinstance(ds[0]["prompt"], str) != isinstance(ds[0]["chosen"], str):
        # e.g. a text prompt next to full chat conversations (HuggingFaceH4 layout): the chats already hold it
        keep.remove("prompt")
    return ds.select_columns(keep)


def split_holdout(ds, fraction: float, seed: int):
    """(train, held-out) with round(fraction * n) records held out (at least 1), shuffled with `seed`."""
    if not 0 < fraction < 1:
        raise ValueError(f"--eval-fraction must be between 0 and 1 (exclusive), got {fraction}")
    n_eval = max(1, round(fraction * len(ds)))
    if n_eval >= len(ds):
        raise ValueError(f"--data has {len(ds)} record(s): too few to hold out {n_eval} and still train")
    parts = ds.train_test_split(test_size=n_eval, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


def pairwise_eval(model: Any, tokenizer: Any, ds, *, batch_size: int = 8) -> dict[str, float | int]:
    """Pairwise accuracy (r_chosen > r_rejected), mean Bradley-Terry loss and mean margin on a preference dataset."""
    from evaluation.reward_model.scoring import conversation_text, score_texts

    rows = list(ds)
    prompts = [r.get("prompt") for r in rows]
    chosen = [conversation_text(tokenizer, r["chosen"], p) for r, p in zip(rows, prompts)]
    rejected = [conversation_text(tokenizer, r["rejected"], p) for r, p in zip(rows, prompts)]
    rc = score_texts(model, tokenizer, chosen, batch_size=batch_size)
    rr = score_texts(model, tokenizer, rejected, batch_size=batch_size)
    diffs = [c - r for c, r in zip(rc, rr)]
    # -log(sigmoid(d)) written stably as softplus(-d)
    losses = [max(-d, 0.0) + math.log1p(math.exp(-abs(d))) for d in diffs]
    n = len(diffs)
    return {"accuracy": sum(d > 0 for d in diffs) / n, "n": n, "loss": sum(losses) / n, "margin": sum(diffs) / n}


def train(base: str, data: str, out: str, *, preset: str = "tiny", max_steps: int | None = None, split: str = "train",
          eval_data: str | None = None, eval_split: str = "test", eval_fraction: float = 0.1, seed: int = 0,
          limit: int | None = None, report_to: str = "none") -> dict[str, Any]:
    """Train a reward model on `data` from `base`, save it to `out`, write `out/eval.json`; returns that record."""
    if preset not in PRESETS:
        raise ValueError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    p = PRESETS[preset]
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    ds = load_preferences(data, split)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    if eval_data is None:
        train_ds, eval_ds = split_holdout(ds, eval_fraction, seed)
    else:
        train_ds, eval_ds = ds, load_preferences(eval_data, eval_split)

    import torch
    from transformers import AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
    except (OSError, ValueError) as err:  # missing directory, or a hub id the hub cannot serve (offline)
        raise ValueError(f"--base {base}: not a model directory, and loading it from the hub failed "
                         f"({type(err).__name__})") from err
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    ds_path = None
    if p.deepspeed_zero3:
        try:
            import deepspeed  # noqa: F401
        except ImportError as err:
            raise ValueError("--preset 7b uses DeepSpeed ZeRO-3: install deepspeed (the project's gpu extra)") from err
        ds_path = str(out_dir / "deepspeed_zero3.json")
        Path(ds_path).write_text(json.dumps(DEEPSPEED_ZERO3, indent=2) + "\n")
    use_cpu = not torch.cuda.is_available()
    args = RewardConfig(**training_kwargs(p, str(out_dir), world_size=world_size, seed=seed,
                                          max_steps=max_steps, use_cpu=use_cpu, deepspeed_config=ds_path,
                                          report_to=report_to))
    try:
        trainer = RewardTrainer(model=base, args=args, train_dataset=train_ds, processing_class=tokenizer)
    except OSError as err:  # transformers' "no weights / unreadable config" for the base model
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"--base {base}: not a loadable model directory ({first[:200]})") from None
    started = time.time()
    result = trainer.train()
    train_seconds = time.time() - started
    trainer.save_model(str(out_dir))
    trainer.accelerator.wait_for_everyone()
    if not trainer.accelerator.is_main_process:
        return {}
    tokenizer.save_pretrained(str(out_dir))
    # Score from the saved checkpoint, exactly as the server will (also works after ZeRO-3, whose live weights are
    # sharded across processes).
    from evaluation.reward_model.scoring import load_reward_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok = load_reward_model(str(out_dir), device=device)
    record: dict[str, Any] = pairwise_eval(model, tok, eval_ds, batch_size=8)
    record.update(
        eval_data=eval_data or f"{data} (held-out {len(eval_ds)} of {len(ds)}, seed {seed})",
        train_records=len(train_ds),
        train_loss=result.training_loss,
        train_steps=result.global_step,
        train_seconds=round(train_seconds, 2),
        preset=asdict(p),
        base=base,
        data=data,
        seed=seed,
        world_size=world_size,
        grad_accumulation=args.gradient_accumulation_steps,
        center_rewards_coefficient=CENTER_REWARDS_COEFFICIENT,
    )
    (out_dir / "eval.json").write_text(json.dumps(record, indent=2) + "\n")
    return record
