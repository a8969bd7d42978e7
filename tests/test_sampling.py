"""common.sampling: transformers' top-p filter without the vocabulary sort gives transformers' output bit for bit."""
from __future__ import annotations

import math

import pytest
import torch
from transformers.generation.logits_process import TopPLogitsWarper

from common import sampling

# transformers' own __call__, also when another test of this process has installed ours
TRANSFORMERS = getattr(TopPLogitsWarper.__call__, "__wrapped__", TopPLogitsWarper.__call__)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(a.isnan(), b.isnan()) and torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))


def _filter(scores: torch.Tensor, top_p: float, min_keep: int = 1) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(transformers' output, ours, the number of rows ours handed to transformers)."""
    warper = TopPLogitsWarper(top_p, min_tokens_to_keep=min_keep)
    handed = []

    def exact(rows):
        handed.append(rows.shape[0])
        return TRANSFORMERS(warper, None, rows)

    ref = TRANSFORMERS(warper, None, scores.clone())
    return ref, sampling.top_p_filter(scores.clone(), top_p, warper.filter_value, min_keep, exact), sum(handed)


@pytest.mark.parametrize("vocab", [65, 300, 8214])
@pytest.mark.parametrize("scale", [0.3, 3.0, 10.0, 40.0])
@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.7, 0.9, 0.99])
@pytest.mark.parametrize("min_keep", [1, 3])
def test_same_bits_as_transformers(vocab, scale, top_p, min_keep):
    g = torch.Generator().manual_seed(vocab * 1000 + int(scale * 10) + int(top_p * 100) + min_keep)
    scores = torch.randn(48, vocab, generator=g) * scale
    scores[1:8] = torch.round(scores[1:8])  # many equal values
    scores[8, :] = scores[8, 0]  # one value everywhere
    scores[9, 10:] = float("-inf")  # a row a top-k warper has cut
    ref, got, _ = _filter(scores, top_p, min_keep)
    assert _same(ref, got)


def test_peaked_rows_are_decided_without_transformers():
    """The point of the module: a trained policy's peaked rows never take the sort."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(256, 8214, generator=g) * 10.0
    ref, got, handed = _filter(scores, 0.7)
    assert _same(ref, got)
    assert handed <= 256 * 0.05


@pytest.mark.parametrize("case", ["nan", "+inf", "all -inf", "tie at the boundary", "on the threshold", "large nucleus"])
def test_rows_it_cannot_prove_go_to_transformers(case):
    scores = torch.randn(4, 1000, generator=torch.Generator().manual_seed(1)) * 8.0
    row = scores[2]
    if case == "nan":
        row[17] = float("nan")
    elif case == "+inf":
        row[17] = float("inf")
    elif case == "all -inf":
        row[:] = float("-inf")
    elif case == "tie at the boundary":  # two equal tokens, one of which the nucleus of 0.7 keeps (0.5 + 0.25 > 0.7)
        row[:] = -30.0
        row[0], row[1], row[2] = math.log(0.5), math.log(0.25), math.log(0.25)
    elif case == "on the threshold":  # the cumulative at the boundary is 1 - p up to float32 rounding
        row[:] = -40.0
        row[0], row[1], row[2] = math.log(0.7), math.log(0.2), math.log(0.1)
    else:  # a flat row: hundreds of tokens in the nucleus, more than CANDIDATES
        row[:] = torch.randn(1000, generator=torch.Generator().manual_seed(2)) * 0.01
    ref, got, handed = _filter(scores, 0.7)
    assert _same(ref, got)
    assert handed == 1


def test_non_float32_or_small_vocab_is_transformers_own():
    bf16 = (torch.randn(8, 500) * 5).to(torch.bfloat16)
    ref, got, handed = _filter(bf16, 0.7)
    assert _same(ref, got) and handed == 8
    small = torch.randn(8, sampling.CANDIDATES) * 5
    ref, got, handed = _filter(small, 0.7)
    assert _same(ref, got) and handed == 8


def test_margin_bounds_the_float32_cumulative_error():
    """The proof's premise, checked where it is tightest (flat rows, the largest vocabulary): transformers' float32
    cumulative stays within half the margin of the exact one."""
    g = torch.Generator().manual_seed(3)
    for vocab, scale in ((8214, 0.01), (151936, 0.01), (151936, 2.0)):
        scores = torch.randn(4, vocab, generator=g) * scale
        s, _ = torch.sort(scores, descending=False)
        hf = s.softmax(dim=-1).cumsum(dim=-1).double()
        exact = torch.softmax(s.double(), dim=-1).cumsum(dim=-1)
        assert float((hf - exact).abs().max()) < sampling.margin(vocab) / 2


def test_install_samples_the_same_tokens(tmp_path):
    """generate() with do_sample and top-p: the same tokens with ours installed as with transformers' own."""
    from miniature.tiny_model import build

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(build(tmp_path / "m", vocab_size=1024, seed=0, kind="policy",
                                                       initializer_range=0.5)).eval()
    ids = torch.randint(0, 1000, (6, 12), generator=torch.Generator().manual_seed(0))

    def sample():
        torch.manual_seed(0)
        with torch.no_grad():
            return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_p=0.7,
                                  top_k=0, max_new_tokens=16, num_return_sequences=2, pad_token_id=0)

    installed = TopPLogitsWarper.__call__
    TopPLogitsWarper.__call__ = TRANSFORMERS
    try:
        ref = sample()
    finally:
        TopPLogitsWarper.__call__ = installed
    sampling.install()
    assert TopPLogitsWarper.__call__.__wrapped__ is TRANSFORMERS
    assert torch.equal(sample(), ref)
