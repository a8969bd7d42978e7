"""Tests for miniature.tiny_model: exact Qwen2.5 ids, cut-down vocab, chat template, offline loading, determinism."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from miniature import tiny_model as tm

TEXTS = [
    "Hello world",
    " 123",
    "naïve café, 日本語のテキスト, emoji 🤖🎉 and ünïcödé",
    "def f(x):\n    return x ** 2  # square\n\n\n",
    r"The answer is $\boxed{\frac{3}{4}}$ and \sqrt{2}/2.",
    "I'll say we've   three spaces\t\ttabs\r\nand CRLF  \n",
    "Using the numbers [3, 7, 19], create an equation that equals 42.",
    "<think> 19 + 3 = 22 </think> <answer> (19 + 3) * 7 / 7 </answer>",
]


@pytest.fixture(scope="module")
def full_tok(tmp_path_factory):
    """The full-vocabulary tokenizer, built once (about 5 s) and read back from disk."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("full")
    tm.build_tokenizer(out, vocab_size=None)
    return AutoTokenizer.from_pretrained(out)


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory) -> Path:
    """A tiny 8k-vocab policy + reward model pair."""
    return tm.build(tmp_path_factory.mktemp("tiny"), vocab_size=8192, seed=0, kind="both")


def test_full_vocab_ids_match_quicktok(full_tok):
    import quicktok

    ref = quicktok.get_encoding("qwen3")
    for text in TEXTS:
        assert full_tok.encode(text, add_special_tokens=False) == ref.encode_ordinary(text), text
    assert full_tok.encode("Hello world") == [9707, 1879]
    assert full_tok.encode(" 123") == [220, 16, 17, 18]
    assert full_tok.encode("<|im_start|>user\nhi<|im_end|>") == [151644, 872, 198, 6023, 151645]


def test_full_vocab_special_tokens_match_quicktok_file(full_tok):
    data = (Path(tm._quicktok_file("qwen3.special"))).read_bytes()
    (count,) = struct.unpack_from("<I", data, 0)
    pos, specials = 4, {}
    for _ in range(count):
        (tid, length) = struct.unpack_from("<IH", data, pos)
        specials[data[pos + 6 : pos + 6 + length].decode()] = tid
        pos += 6 + length
    ours = {t: full_tok.convert_tokens_to_ids(t) for t in tm.SPECIAL_TOKENS + tm.ADDED_TOKENS}
    assert ours == {t: specials[t] for t in ours}
    assert len(full_tok) == 151_665
    assert (full_tok.eos_token, full_tok.eos_token_id) == ("<|im_end|>", 151645)
    assert (full_tok.pad_token, full_tok.pad_token_id) == ("<|endoftext|>", 151643)
    assert full_tok.bos_token is None
    assert tm.model_vocab_size(None) == 151_936


def test_cut_vocab_round_trips_and_keeps_low_ids(small_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(small_dir / "policy")
    assert len(tok) == 8192 + 22
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|file_sep|>"]) == [8192, 8193, 8194, 8213]
    assert tok.encode("user\n") == [872, 198]  # ids below the cut keep their real Qwen values
    ascii_texts = [t for t in TEXTS if t.isascii()] + ["".join(chr(c) for c in range(32, 127))]
    for text in ascii_texts:
        ids = tok.encode(text, add_special_tokens=False)
        assert max(ids) < 8192
        assert tok.decode(ids) == text
    for text in TEXTS:  # non-ASCII too: byte-level BPE can always fall back to single bytes
        assert tok.decode(tok.encode(text)) == text
    ids = tok.encode("Hello<|im_end|>")
    assert ids[-1] == 8194
    assert tok.decode(ids, skip_special_tokens=True) == "Hello"


def test_chat_template(small_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(small_dir / "reward")
    msgs = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]
    assert tok.apply_chat_template(msgs, tokenize=False) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
    )
    sys_msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(sys_msgs, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_from_pretrained_offline(small_dir):
    script = (
        "import json, sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer\n"
        "d = sys.argv[1]\n"
        "tok = AutoTokenizer.from_pretrained(d + '/policy')\n"
        "lm = AutoModelForCausalLM.from_pretrained(d + '/policy')\n"
        "rm = AutoModelForSequenceClassification.from_pretrained(d + '/reward')\n"
        "ids = tok(['hi there'], return_tensors='pt')\n"
        "with torch.no_grad():\n"
        "    out = lm.generate(**ids, max_new_tokens=3, do_sample=False)\n"
        "    score = rm(**ids).logits\n"
        "print(json.dumps({'lm': type(lm).__name__, 'rm': type(rm).__name__, 'vocab': lm.config.vocab_size,\n"
        "    'eos': lm.generation_config.eos_token_id, 'pad': lm.generation_config.pad_token_id,\n"
        "    'rm_pad': rm.config.pad_token_id, 'labels': rm.config.num_labels, 'gen': out.shape[1], 'score': list(score.shape)}))\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", script, str(small_dir)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info == {"lm": "Qwen2ForCausalLM", "rm": "Qwen2ForSequenceClassification", "vocab": 8214,
                    "eos": [8194, 8192], "pad": 8192, "rm_pad": 8192, "labels": 1, "gen": 2 + 3, "score": [1, 1]}


def _tree_bytes(root: Path) -> dict[str, bytes]:
    """Relative path -> file bytes for every file under root."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_different_seed_different_weights(tmp_path, small_dir):
    again = tm.build(tmp_path / "again", vocab_size=8192, seed=0, kind="both")
    assert _tree_bytes(again) == _tree_bytes(small_dir)
    other = tm.build(tmp_path / "other", vocab_size=8192, seed=1, kind="policy")
    from safetensors.torch import load_file

    a = load_file(small_dir / "policy" / "model.safetensors")
    b = load_file(other / "model.safetensors")
    assert a.keys() == b.keys()
    assert not a["model.embed_tokens.weight"].equal(b["model.embed_tokens.weight"])
    assert a["model.norm.weight"].equal(b["model.norm.weight"])  # RMSNorm starts at ones whatever the seed


def test_cli_bad_vocab_size_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        tm.main(["--out", str(tmp_path), "--vocab-size", "10"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--vocab-size" in err and "between 256 and 151643" in err
    with pytest.raises(SystemExit) as exc:
        tm.main(["--out", str(tmp_path), "--kind", "critic"])
    assert exc.value.code == 2
    with pytest.raises(ValueError, match="kind must be one of policy, reward, both"):
        tm.build(tmp_path, kind="critic")  # type: ignore[arg-type]
