"""Prefix tokenization of long reward-model inputs: equal to tokenize-then-truncate, and cheap on huge texts."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from evaluation.reward_model.scoring import (MAX_LENGTH, encode_truncated, load_reward_model, pair_texts,
                                             score_texts)

FIXTURE = Path(__file__).resolve().parents[2] / "evaluation" / "tasks" / "fixtures" / "ultrafeedback.jsonl"


def realistic_texts() -> list[str]:
    """Long texts of the kinds an HH policy or a hostile client sends: prose, chat, code, CJK, emoji, runs, marks."""
    records = [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]
    prose = " ".join(m["content"] for r in records for m in r["chosen"] + r["rejected"])
    rng = random.Random(0)
    alphabet = ["the", " ", "  ", "\n", "\n\n", "\t", "42", "3.14", "'s", "don't", "!!", "...", "é", "e\u0301",
                "日本語", "😀", "👩‍💻", "∑", "<|im_end|>", "-", "====", "    ", "\u200b", "Ελληνικά", "ᾅ"]
    soup = "".join(rng.choice(alphabet) for _ in range(15_000))
    code = "def f(x):\n    return [i ** 2 for i in range(x)]  # squares\n\n" * 700
    return [
        prose * 2,
        code,
        "日本語のテキストです。句読点も含みます。" * 2000,
        "emoji 😀🎉👩‍💻 and words " * 1600,
        "x" * 40_000,  # one pre-token: BPE over a giant word
        " " * 40_000 + "tail",  # a whitespace run, split with lookahead
        ("a\u0301" * 20_000),  # combining marks: NFC joins them across any cut
        "1234567890" * 4_000,
        soup,
        "short text",
        "",
    ]


@pytest.fixture(scope="module")
def tokenizer(tiny_rm_dir):
    """The tiny reward model's tokenizer (Qwen2.5's pipeline: NFC, regex pre-tokens, byte-level BPE)."""
    return load_reward_model(str(tiny_rm_dir))[1]


@pytest.fixture(scope="module")
def full_tokenizer():
    """The full Qwen2.5 tokenizer (151k ranks: longer merges than the 8k tiny one)."""
    from miniature.tiny_model import make_tokenizer

    return make_tokenizer(None)


@pytest.mark.parametrize("which", ["tokenizer", "full_tokenizer"])
def test_prefix_tokenization_equals_tokenize_then_truncate(which, request):
    tok = request.getfixturevalue(which)
    texts = realistic_texts()
    texts += pair_texts(tok, texts[:4], texts[4:8])  # chat-templated pairs, as the server scores them
    whole = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    for max_length in (1, 7, 100, 513, MAX_LENGTH):
        assert encode_truncated(tok, texts, max_length) == [ids[:max_length] for ids in whole], max_length
    # tokenize-then-truncate is what the tokenizer's own truncation does
    assert tok(texts, truncation=True, max_length=MAX_LENGTH, add_special_tokens=False)["input_ids"] == [
        ids[:MAX_LENGTH] for ids in whole]


def test_left_truncation_keeps_the_suffix_of_the_whole_text(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.truncation_side = "left"
    texts = realistic_texts()
    want = [tok(t, truncation=True, max_length=300, add_special_tokens=False)["input_ids"] for t in texts]
    assert encode_truncated(tok, texts, 300) == want


class CountingTokenizer:
    """Delegates to a tokenizer and adds up the characters it was asked to tokenize."""

    def __init__(self, tok):
        self._tok, self.chars = tok, 0

    def __call__(self, texts, **kwargs):
        self.chars += sum(len(t) for t in texts)
        return self._tok(texts, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tok, name)


def test_a_huge_text_is_scored_from_a_prefix(tiny_rm_dir):
    model, tok = load_reward_model(str(tiny_rm_dir))
    huge = pair_texts(tok, ["Summarise this."], ["All work and no play makes Jack a dull boy. " * 120_000])[0]
    counting = CountingTokenizer(tok)
    reward = score_texts(model, counting, [huge])
    # one cut of (2048 + 64) tokens x 4 characters was enough; the whole 5.3M-character text was never tokenized
    assert counting.chars == (MAX_LENGTH + 64) * 4
    # and the reward is the one of the text tokenized whole and truncated to 2048 tokens
    import torch

    enc = tok([huge[:200_000]], truncation=True, max_length=MAX_LENGTH, add_special_tokens=False, return_tensors="pt")
    assert enc["input_ids"].shape[1] == MAX_LENGTH
    with torch.inference_mode():
        assert reward == [model(**enc).logits[0, 0].item()]
