"""Reward-model scoring shared by training eval, the server and the benchmark: pair -> chat text -> logit[:, 0]."""

from __future__ import annotations

from typing import Any, Callable, Sequence

MAX_LENGTH = 2048  # tokens per (prompt, response) pair, as the authors' server truncates
TRUNCATION_MARGIN = 64  # tokens tokenized past MAX_LENGTH before a long text's cut (see encode_truncated)
CHARS_PER_TOKEN_GUESS = 4  # first character cut per needed token; grown 4x while it yields too few tokens


def pair_messages(prompt: str, response: str) -> list[dict[str, str]]:
    """The chat the reward model scores for one (prompt, response) pair."""
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def conversation_text(tokenizer: Any, side: str | list[dict[str, str]], prompt: str | list | None = None) -> str:
    """One preference side as the text TRL's RewardTrainer trains on (chat template, or plain text + EOS)."""
    if prompt is not None:
        side = prompt + side  # type: ignore[operator]  # explicit-prompt datasets: prompt then completion
    if isinstance(side, list):
        return tokenizer.apply_chat_template(side, tokenize=False)
    eos = tokenizer.eos_token
    return side if side.endswith(eos) else side + eos


def pair_texts(tokenizer: Any, prompts: Sequence[str], responses: Sequence[str]) -> list[str]:
    """Chat-templated texts (no generation prompt) for parallel lists of prompts and responses."""
    return [tokenizer.apply_chat_template(pair_messages(p, r), tokenize=False) for p, r in zip(prompts, responses)]


class ScoringCancelled(Exception):
    """Scoring stopped between micro-batches because the caller asked (e.g. its HTTP client went away)."""


def encode_truncated(tokenizer: Any, texts: Sequence[str], max_length: int = MAX_LENGTH) -> list[list[int]]:
    """Token ids of each text cut to `max_length` tokens, equal to tokenize-then-truncate but tokenizing a prefix.

    A long text is cut to a character prefix first and only that is tokenized: the whole of a 20 MiB text took
    tens of seconds and gigabytes for 2,048 kept tokens. The prefix is accepted once it yields at least
    `max_length + TRUNCATION_MARGIN` tokens, else it grows 4x, ending at the whole text. A cut changes only the
    tokens next to it: pre-tokens are split by a regex that looks one character ahead, and BPE merges within a
    pre-token break ties leftmost first, so even in a giant pre-token (a 100k-letter word) the merges left of the
    cut stand. With TRUNCATION_MARGIN tokens between the kept ones and the cut, the kept ids are those of the whole
    text (tests/reward_model/test_truncation.py checks this on prose, code, CJK, emoji, runs and combining marks).
    A left-truncating tokenizer gets the whole text tokenized: a suffix cut can shift BPE merges through a long run.
    """
    need = max_length + TRUNCATION_MARGIN
    if getattr(tokenizer, "truncation_side", "right") == "left":
        return [tokens[-max_length:] for tokens in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    ids: list[list[int]] = [[] for _ in texts]
    pending, chars = list(range(len(texts))), need * CHARS_PER_TOKEN_GUESS
    while pending:
        cuts = [texts[i][:chars] for i in pending]
        encoded = tokenizer(cuts, add_special_tokens=False)["input_ids"]
        retry = []
        for i, cut, tokens in zip(pending, cuts, encoded):
            if len(tokens) >= need or len(cut) == len(texts[i]):
                ids[i] = tokens[:max_length]
            else:
                retry.append(i)
        pending, chars = retry, chars * 4
    return ids


def score_texts(model: Any, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 8,
                max_length: int = MAX_LENGTH, cancelled: Callable[[], bool] | None = None) -> list[float]:
    """Reward logit[:, 0] for each text, in micro-batches of `batch_size`, truncated to `max_length` tokens.

    `cancelled()` is asked before each micro-batch; when it turns true, ScoringCancelled is raised."""
    import torch
    from transformers.data.data_collator import pad_without_fast_tokenizer_warning

    device = next(model.parameters()).device
    rewards: list[float] = []
    for start in range(0, len(texts), batch_size):
        if cancelled is not None and cancelled():
            raise ScoringCancelled(f"stopped after {start} of {len(texts)} texts")
        ids = encode_truncated(tokenizer, texts[start : start + batch_size], max_length)
        enc = pad_without_fast_tokenizer_warning(tokenizer, {"input_ids": ids}, padding=True,
                                                 return_tensors="pt").to(device)
        with torch.inference_mode():
            logits = model(**enc).logits
        rewards.extend(logits[:, 0].float().cpu().tolist())
    return rewards


def score_pairs(model: Any, tokenizer: Any, prompts: Sequence[str], responses: Sequence[str], *,
                batch_size: int = 8, max_length: int = MAX_LENGTH) -> list[float]:
    """Rewards for (prompt, response) pairs, formatted as the server does."""
    return score_texts(model, tokenizer, pair_texts(tokenizer, prompts, responses), batch_size=batch_size,
                       max_length=max_length)


def load_reward_model(path: str, device: str = "cpu", dtype: str | None = None) -> tuple[Any, Any]:
    """Load a saved reward model and its tokenizer, in eval mode on `device` (bf16 on GPU unless told)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    chosen = dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=getattr(torch, chosen))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if model.config.num_labels != 1:
        raise ValueError(f"--model {path}: a reward model needs num_labels=1, this one has {model.config.num_labels}")
    return model.to(device).eval(), tokenizer
