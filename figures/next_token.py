"""Extract next-token distributions of policies (HF dirs) into results/next_token_dists.csv for Figure 1.

This is the only figures module that imports torch/transformers, and only `extract` does; figure1 reads the CSV.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence

from figures.common import DISTS_FILE, atomic_write_text, read_parquet
from tre.backend.rundir import BASE_MODEL_FIELD, CONFIG, RunDir
from tre.grid import TRE_MAX_CANDIDATES, TRE_TOP_K, TRE_TOP_P

DIST_COLUMNS = ["stage", "label", "method", "seed", "model", "prompt", "response_prefix", "context", "rank", "prob",
                "vocab_size", "tail_beyond", "nucleus_size", "top_k"]
STAGE_LABELS = {"base": "Pre-trained", "entropy": "After PPO + entropy", "tre": "After TRE"}


def nucleus_size(sorted_probs: Sequence[float], top_p: float = TRE_TOP_P, max_candidates: int = TRE_MAX_CANDIDATES) -> int:
    """Size of the TRE-P trust region: tokens whose preceding (descending) mass is < top_p, at least 1, at most the cap."""
    mass, count = 0.0, 0
    for p in sorted_probs[:max_candidates]:
        if count and mass >= top_p:
            break
        mass += p
        count += 1
    return count


def dist_rows(stage: str, model: str, context: str, probs: Sequence[float], vocab_size: int, keep: int, *,
              method: str = "", seed: Optional[int] = None, prompt: str = "", response_prefix: str = "") -> list[dict[str, Any]]:
    """Rows (rank 1..keep) of one descending-sorted next-token distribution, with its trust-region sizes.

    method/seed: the run the policy comes from ("" / None for the pre-trained one); prompt: the user's message.
    """
    kept = [float(p) for p in probs[:keep]]
    tail = max(0.0, 1.0 - math.fsum(kept))
    n = nucleus_size(probs)
    return [{"stage": stage, "label": STAGE_LABELS.get(stage, stage), "method": method, "seed": seed, "model": model,
             "prompt": prompt, "response_prefix": response_prefix, "context": context, "rank": r, "prob": p,
             "vocab_size": vocab_size, "tail_beyond": tail, "nucleus_size": n, "top_k": TRE_TOP_K}
            for r, p in enumerate(kept, start=1)]


def repo_path(path: str) -> str:
    """`path` relative to the working directory (the repository root) when it lies inside it, else unchanged.

    The archive is committed: a clone's absolute path in it would make every other clone's rerun differ.
    """
    cwd = Path.cwd()
    for p in (os.path.abspath(path), os.path.realpath(path)):
        if Path(p).is_relative_to(cwd):
            return Path(p).relative_to(cwd).as_posix() or "."
    return str(path)


def user_prompt(messages: Sequence[dict[str, str]]) -> str:
    """The last user message of a chat (what Figure 1 names as its prompt)."""
    return next((m["content"] for m in reversed(list(messages)) if m.get("role") == "user"), "")


def render_context(tokenizer, messages: Sequence[dict[str, str]], response_prefix: str = "") -> str:
    """The policy's context: the chat-templated prompt (with the assistant header) plus an optional response prefix."""
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return text + response_prefix


def next_token_probs(model_dir: str, context: str) -> tuple[list[float], int]:
    """Descending next-token probabilities of the policy at `model_dir` after `context`, and its vocabulary size."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    ids = tok(context, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1].float()
    # Embedding rows past the tokenizer are padding that no sampler should pick; drop them like verl's rollout does.
    logits = logits[: len(tok)] if len(tok) < logits.shape[0] else logits
    probs = torch.softmax(logits, -1).sort(descending=True).values
    return probs.tolist(), int(logits.shape[0])


def prompt_from_parquet(path: Path, index: int = 0) -> list[dict[str, str]]:
    """The chat messages of row `index` of a verl RLHFDataset parquet (column 'prompt')."""
    table = read_parquet(path, "--prompt-file", columns=["prompt"])
    if index >= table.num_rows:
        raise ValueError(f"--prompt-index: {path} has {table.num_rows} rows, got {index}")
    return list(table.column("prompt")[index].as_py())


def models_from_runs(runs_dir: Path, task: str, size: str, seed: int, tre_method: str) -> dict[str, str]:
    """stage -> model dir: the base model of the entropy run, and the last checkpoints of entropy and TRE."""
    ent = RunDir.of(runs_dir, task, size, "entropy", seed, what="--runs")
    tre = RunDir.of(runs_dir, task, size, tre_method, seed, what="--runs")
    if not ent.base_model:
        raise ValueError(f"{ent.path / CONFIG}: no {BASE_MODEL_FIELD}")
    return {"base": ent.base_model, "entropy": str(ent.checkpoint()), "tre": str(tre.checkpoint())}


def val_file(runs_dir: Path, task: str, size: str, seed: int) -> Optional[Path]:
    """The first test (validation) parquet of the entropy run, or None when its config names none."""
    files = RunDir.of(runs_dir, task, size, "entropy", seed, what="--runs").data_files("test")
    return Path(files[0]) if files else None


def extract(models: dict[str, str], messages: Sequence[dict[str, str]], results: Path, response_prefix: str = "",
            keep: int = 512, *, tre_method: str = "", seed: Optional[int] = None) -> Path:
    """Write results/next_token_dists.csv: the top-`keep` next-token probabilities of each stage's policy.

    tre_method / seed: the TRE variant and the seed of the runs the trained policies come from (recorded per row).
    """
    import pandas as pd
    from transformers import AutoTokenizer

    context = render_context(AutoTokenizer.from_pretrained(models["base"]), messages, response_prefix)
    methods = {"base": "", "entropy": "entropy", "tre": tre_method}
    rows = []
    for stage, model_dir in models.items():
        probs, vocab = next_token_probs(model_dir, context)
        rows += dist_rows(stage, repo_path(str(model_dir)), context, probs, vocab, keep, method=methods.get(stage, ""),
                          seed=None if stage == "base" else seed, prompt=user_prompt(messages),
                          response_prefix=response_prefix)
    path = Path(results) / DISTS_FILE
    df = pd.DataFrame(rows, columns=DIST_COLUMNS).astype({"seed": "Int64"})  # the base policy has no seed
    atomic_write_text(path, df.to_csv(index=False, lineterminator="\n"))
    return path


def resolve_messages(prompt: Optional[str], prompt_file: Optional[Path], index: int) -> list[dict[str, str]]:
    """Messages from --prompt (one user turn) or row `index` of --prompt-file (a verl parquet)."""
    if prompt is not None:
        return [{"role": "user", "content": prompt}]
    if prompt_file is None:
        raise ValueError("--prompt / --prompt-file: give one of them")
    return prompt_from_parquet(Path(prompt_file), index)
