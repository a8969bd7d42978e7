"""Offline tiny models: the real Qwen2.5 tokenizer rebuilt from quicktok-v1, and tiny random Qwen2 checkpoints.

`build_tokenizer` turns the Qwen2/2.5 byte-level BPE ranks shipped in the `quicktok-v1` wheel into a Hugging Face
fast tokenizer with Qwen2.5-Instruct's ids, special tokens and chat format, optionally cut down to the first N BPE
ranks (every Qwen merge joins two lower-ranked tokens, so a rank prefix is itself a valid BPE). `build` saves a
tiny randomly initialised `Qwen2ForCausalLM` (policy) or `Qwen2ForSequenceClassification` (reward model) next to
it, loadable with `from_pretrained(dir)` and no network.

    python -m miniature.tiny_model --out models/tiny [--vocab-size 8192|full] [--seed 0] [--kind policy|reward|both]
"""

from __future__ import annotations

import argparse
import functools
import os
import struct
import sys
from pathlib import Path
from typing import Literal

from common.argtypes import Parser, int_at_least, output_dir

Kind = Literal["policy", "reward", "both"]
KINDS: tuple[str, ...] = ("policy", "reward", "both")

FULL_VOCAB = 151_643  # BPE ranks in Qwen2/2.5 (ids 0..151642); the special tokens follow
FULL_MODEL_VOCAB = 151_936  # embedding rows of the real Qwen2.5 checkpoints (padded past the 151,665 tokens)
MIN_VOCAB = 256  # the 256 single-byte tokens must stay, or some text could not be encoded at all
DEFAULT_VOCAB = 8192

# Qwen2.5's added tokens in id order; the first 14 are special (skipped when decoding with
# skip_special_tokens=True), the last 8 are plain added tokens, as in the released tokenizer.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
ADDED_TOKENS: tuple[str, ...] = (
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
)
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
DEFAULT_SYSTEM_PROMPT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# Qwen2's pre-tokenizer split pattern (digits one by one, contractions, letter runs, punctuation runs, newlines).
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# ChatML with Qwen2.5-Instruct's default system prompt (tool calling left out): the same text as the released
# template for system/user/assistant conversations.
CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- set loop_messages = messages[1:] %}"
    "{%- else %}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{%- set loop_messages = messages %}"
    "{%- endif %}"
    "{%- for message in loop_messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _quicktok_file(name: str) -> Path:
    """Path of a data file inside the installed quicktok-v1 wheel."""
    try:
        import quicktok
    except ImportError as err:  # pragma: no cover - quicktok-v1 is a project dependency
        raise RuntimeError("the tiny tokenizer needs the PyPI package quicktok-v1: pip install quicktok-v1") from err
    return Path(os.path.dirname(quicktok.__file__)) / "data" / name


@functools.lru_cache(maxsize=1)
def qwen_ranks() -> dict[bytes, int]:
    """The 151,643 Qwen2.5 BPE tokens (raw bytes) -> rank, read from quicktok's qwen3.vocab."""
    data = _quicktok_file("qwen3.vocab").read_bytes()
    (count,) = struct.unpack_from("<I", data, 0)
    pos = 4
    ranks: dict[bytes, int] = {}
    for _ in range(count):
        (length,) = struct.unpack_from("<H", data, pos)
        token = data[pos + 2 : pos + 2 + length]
        (rank,) = struct.unpack_from("<I", data, pos + 2 + length)
        pos += 6 + length
        ranks[token] = rank
    if sorted(ranks.values()) != list(range(FULL_VOCAB)):
        raise RuntimeError(f"unexpected quicktok qwen3.vocab: ranks are not 0..{FULL_VOCAB - 1}")
    return ranks


def _merge_parts(token: bytes, ranks: dict[bytes, int], max_rank: int) -> list[bytes]:
    """Byte-level BPE of `token` using only merges whose result ranks below `max_rank`."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        best_i, best_rank = -1, max_rank
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best_i, best_rank = i, rank
        if best_i < 0:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts


def bpe_vocab_and_merges(vocab_size: int | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """HF byte-level BPE vocab and merges for the first `vocab_size` Qwen ranks (None: all of them)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    n = FULL_VOCAB if vocab_size is None else vocab_size
    ranks = {tok: r for tok, r in qwen_ranks().items() if r < n}
    byte_char = bytes_to_unicode()

    def as_str(token: bytes) -> str:
        return "".join(byte_char[b] for b in token)

    vocab = {as_str(tok): r for tok, r in ranks.items()}
    merges: list[tuple[int, str, str]] = []
    for tok, rank in ranks.items():
        if len(tok) < 2:
            continue
        parts = _merge_parts(tok, ranks, rank)
        if len(parts) != 2:
            raise RuntimeError(f"Qwen token rank {rank} does not split into two lower-ranked tokens")
        merges.append((rank, as_str(parts[0]), as_str(parts[1])))
    merges.sort()
    return vocab, [(a, b) for _, a, b in merges]


def _check_vocab_size(vocab_size: int | None) -> None:
    """Raise ValueError naming the allowed range when `vocab_size` is out of it."""
    if vocab_size is not None and not (MIN_VOCAB <= vocab_size <= FULL_VOCAB):
        raise ValueError(f"vocab_size must be between {MIN_VOCAB} and {FULL_VOCAB} "
                         f"(or None for the full vocabulary), got {vocab_size}")


def make_tokenizer(vocab_size: int | None = None):
    """The Qwen2.5-Instruct fast tokenizer (exact ids), optionally cut to the first `vocab_size` BPE ranks."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    _check_vocab_size(vocab_size)
    vocab, merges = bpe_vocab_and_merges(vocab_size)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False, byte_fallback=False))
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tk.decoder = decoders.ByteLevel()
    # Added tokens take the ids right after the BPE ranks, in Qwen's order (151643.. for the full vocabulary).
    tk.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
        + [AddedToken(t, special=False, normalized=False) for t in ADDED_TOKENS]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        bos_token=None,
        unk_token=None,
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        clean_up_tokenization_spaces=False,
        model_max_length=131072,
        chat_template=CHAT_TEMPLATE,
        model_input_names=["input_ids", "attention_mask"],  # as Qwen2's tokenizer: no token_type_ids
    )
    return tok


def build_tokenizer(out_dir: str | os.PathLike, vocab_size: int | None = None):
    """Make the (optionally cut-down) Qwen2.5 tokenizer, save it to `out_dir` and return it."""
    tok = make_tokenizer(vocab_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out)
    return tok


def model_vocab_size(vocab_size: int | None) -> int:
    """Embedding rows for a tokenizer of `vocab_size` ranks: Qwen2.5's 151,936, or exactly the token count."""
    if vocab_size is None:
        return FULL_MODEL_VOCAB
    return vocab_size + len(SPECIAL_TOKENS) + len(ADDED_TOKENS)


def _qwen2_config(tok, vocab_size: int | None, *, hidden_size: int, layers: int, heads: int, kv_heads: int,
                  intermediate_size: int, max_position_embeddings: int, initializer_range: float, reward: bool):
    """A tiny Qwen2Config wired to the tokenizer's eos/pad ids."""
    from transformers import Qwen2Config

    pad_id = tok.convert_tokens_to_ids(PAD_TOKEN)
    eos_id = tok.convert_tokens_to_ids(EOS_TOKEN)
    extra = {"num_labels": 1} if reward else {}
    return Qwen2Config(
        vocab_size=model_vocab_size(vocab_size),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_position_embeddings,
        max_window_layers=layers,
        rope_theta=1_000_000.0,
        initializer_range=initializer_range,
        tie_word_embeddings=True,
        use_sliding_window=False,
        bos_token_id=pad_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        **extra,
    )


def _save_model(out: Path, tok, config, *, reward: bool, seed: int) -> None:
    """Initialise a random model from `config` under `seed` and save it with its tokenizer and generation config."""
    import torch
    from transformers import GenerationConfig, Qwen2ForCausalLM, Qwen2ForSequenceClassification

    cls = Qwen2ForSequenceClassification if reward else Qwen2ForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        bos_token_id=config.pad_token_id,
        eos_token_id=[config.eos_token_id, config.pad_token_id],
        pad_token_id=config.pad_token_id,
    )
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def build(
    out_dir: str | os.PathLike,
    *,
    vocab_size: int | None = DEFAULT_VOCAB,
    seed: int = 0,
    kind: Kind = "policy",
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 4096,
    initializer_range: float = 0.02,
) -> Path:
    """Save a tiny random Qwen2 policy and/or reward model (+ tokenizer) to `out_dir`; returns `out_dir`.

    kind="both" writes `out_dir/policy` and `out_dir/reward`. `vocab_size` counts the BPE ranks kept
    (None: all 151,643, with Qwen2.5's 151,936 embedding rows).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    _check_vocab_size(vocab_size)
    if hidden_size % heads or heads % kv_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be divisible by heads ({heads}), and heads by kv_heads ({kv_heads})")
    out = Path(out_dir)
    tok = make_tokenizer(vocab_size)
    dims = dict(
        hidden_size=hidden_size, layers=layers, heads=heads, kv_heads=kv_heads,
        intermediate_size=intermediate_size or 2 * hidden_size,
        max_position_embeddings=max_position_embeddings, initializer_range=initializer_range,
    )
    targets = {"policy": [("policy", out)], "reward": [("reward", out)],
               "both": [("policy", out / "policy"), ("reward", out / "reward")]}[kind]
    for which, path in targets:
        reward = which == "reward"
        config = _qwen2_config(tok, vocab_size, reward=reward, **dims)
        _save_model(path, tok, config, reward=reward, seed=seed)
    return out


def _vocab_arg(text: str) -> int | None:
    """argparse type for --vocab-size: an int in range, or 'full'."""
    if text == "full":
        return None
    try:
        value = int(text)
        _check_vocab_size(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'full' or an integer between {MIN_VOCAB} and {FULL_VOCAB}, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The `python -m miniature.tiny_model` argument parser."""
    parser = Parser(prog="python -m miniature.tiny_model", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=output_dir, help="output directory")
    parser.add_argument("--vocab-size", type=_vocab_arg, default=DEFAULT_VOCAB,
                        help=f"BPE ranks to keep, {MIN_VOCAB}..{FULL_VOCAB}, or 'full' (default {DEFAULT_VOCAB})")
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default 0)")
    parser.add_argument("--kind", choices=KINDS, default="policy", help="policy (causal LM), reward (1-logit head) or both")
    parser.add_argument("--hidden-size", type=int_at_least(1), default=64)
    parser.add_argument("--layers", type=int_at_least(1), default=2)
    parser.add_argument("--heads", type=int_at_least(1), default=4)
    parser.add_argument("--kv-heads", type=int_at_least(1), default=2)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The CLI's arguments, checked; a usage error exits 2 with one line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.hidden_size % args.heads or args.heads % args.kv_heads:
        parser.error(f"--hidden-size ({args.hidden_size}) must be divisible by --heads ({args.heads}), "
                     f"and --heads by --kv-heads ({args.kv_heads})")
    return args


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: build a tiny model directory."""
    args = parse_args(argv)
    out = build(args.out, vocab_size=args.vocab_size, seed=args.seed, kind=args.kind, hidden_size=args.hidden_size,
                layers=args.layers, heads=args.heads, kv_heads=args.kv_heads)
    print(f"wrote tiny {args.kind} model to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
