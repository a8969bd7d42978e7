"""tre.trust_region_entropy: known values, float64 parity (value + gradient), chunking, numerics, errors."""

import math
import zlib

import pytest
import torch

from tre import trust_region_entropy as tre
from tre import trust_region_stats


def reference(logits: torch.Tensor, top_k=None, top_p=None, max_candidates=256) -> torch.Tensor:
    """Float64 transcription of the authors' verl/utils/torch_functional.py::entropy_from_logits, autograd-able."""
    z = logits.double()
    vocab = z.shape[-1]
    if top_k is None and top_p is None:
        p = torch.softmax(z, -1)
        return torch.logsumexp(z, -1) - (p * z).sum(-1)
    if top_k == 1:
        return torch.logsumexp(z, -1) - z.max(-1).values
    if top_k is not None:
        s = torch.topk(z, top_k, -1).values
        q = torch.softmax(s, -1)
        return (torch.logsumexp(s, -1) - (q * s).sum(-1)) * (math.log(vocab) / math.log(top_k))
    probs = torch.softmax(z, -1)
    m = min(max_candidates, vocab)
    sp, idx = torch.topk(probs, m, -1)
    keep = (torch.cumsum(sp, -1) - sp) < top_p
    keep[..., 0] = True
    n = keep.sum(-1)
    cand = torch.where(keep, torch.gather(z, -1, idx), torch.tensor(-1e10, dtype=z.dtype))
    q = torch.softmax(cand, -1)
    h = torch.logsumexp(cand, -1) - (q * cand).sum(-1)
    h = h * (math.log(vocab) / torch.log(n.clamp(min=2).double()))
    return torch.where(n == 1, torch.zeros_like(h), h)


# ---------------------------------------------------------------------------------------------- known values
@pytest.mark.parametrize("kw", [{}, {"top_k": 2}, {"top_k": 7}, {"top_p": 0.99}, {"top_p": 0.5}])
def test_uniform_logits_give_ln_v(kw):
    v = 1000
    out = tre(torch.zeros(3, v), **kw)
    assert out.dtype == torch.float32 and out.shape == (3,)
    torch.testing.assert_close(out, torch.full((3,), math.log(v)), rtol=1e-6, atol=0)


def test_uniform_large_vocab_tre_p_caps_at_256_and_gives_ln_v():
    v = 151936
    out = tre(torch.zeros(2, v), top_p=0.99)
    torch.testing.assert_close(out, torch.full((2,), math.log(v)), rtol=1e-6, atol=0)


def test_two_token_closed_form():
    v, q = 50, 0.7
    logits = torch.full((v,), -30.0)
    logits[3], logits[11] = math.log(q), math.log(1 - q)
    expected = (math.log(v) / math.log(2)) * (-q * math.log(q) - (1 - q) * math.log(1 - q))
    assert tre(logits, top_k=2).item() == pytest.approx(expected, rel=1e-6)


def test_k1_is_unscaled_neg_log_pmax_of_full_distribution():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    p_max = math.exp(2.0) / sum(math.exp(x) for x in (2.0, 1.0, 0.0, -1.0))
    assert tre(logits, top_k=1).item() == pytest.approx(-math.log(p_max), rel=1e-6)


def test_single_token_nucleus_is_exactly_zero_and_keeps_graph():
    logits = torch.tensor([[10.0, -10.0, -10.0, -10.0], [0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    out = tre(logits, top_p=0.9)
    assert out[0].item() == 0.0
    assert out[1].item() == pytest.approx(math.log(4), rel=1e-6)
    # all positions n == 1: still an fp32 tensor connected to the graph, zero gradient
    only_peaked = logits[:1].detach().clone().requires_grad_(True)
    out1 = tre(only_peaked, top_p=0.9)
    assert out1.dtype == torch.float32 and out1.requires_grad
    out1.sum().backward()
    assert torch.equal(only_peaked.grad, torch.zeros_like(only_peaked))


def test_nucleus_boundary_is_strict_on_preceding_mass():
    # probs 0.5, 0.3, 0.2: the third token is preceded by mass 0.8, so it is kept for p = 0.81, not for p = 0.79
    probs = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    logits = probs.log().float()
    h3 = float(-(probs * probs.log()).sum())  # n = 3: scale ln 3 / ln 3 = 1
    q = probs[:2] / 0.8
    h2 = float(-(q * q.log()).sum()) * math.log(3) / math.log(2)
    assert tre(logits, top_p=0.81).item() == pytest.approx(h3, rel=1e-6)
    assert tre(logits, top_p=0.79).item() == pytest.approx(h2, rel=1e-6)
    assert tre(logits, top_p=0.49).item() == 0.0  # only the top token: exactly zero


def test_max_candidates_truncates_the_nucleus():
    v = 100
    out = tre(torch.zeros(v), top_p=0.99, max_candidates=10)
    assert out.item() == pytest.approx(math.log(v), rel=1e-6)  # n = 10: ln 10 * ln V / ln 10
    peaked = torch.zeros(v)
    peaked[:3] = torch.tensor([3.0, 2.0, 1.0])
    torch.testing.assert_close(tre(peaked, top_p=0.99, max_candidates=3), reference(peaked, top_p=0.99, max_candidates=3).float())


# ---------------------------------------------------------------------------------------------- float64 parity
CASES = [{}, {"top_k": 1}, {"top_k": 2}, {"top_k": 5}, {"top_p": 0.5}, {"top_p": 0.9}, {"top_p": 0.99}]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "full")
@pytest.mark.parametrize("shape", [(7, 300), (2, 3, 1000)])
def test_value_and_gradient_match_float64_reference(kw, shape):
    g = torch.Generator().manual_seed(zlib.crc32(repr((kw, shape)).encode()))  # not hash(): randomised per process
    # a spread of peaked and flat positions, so nuclei range from 1 to > 100 tokens
    scale = torch.rand(shape[:-1] + (1,), generator=g) * 6
    logits = (torch.randn(shape, generator=g) * scale).requires_grad_(True)
    weights = torch.randn(shape[:-1], generator=g)
    out = tre(logits, **kw)
    (out * weights).sum().backward()
    ref_in = logits.detach().double().requires_grad_(True)
    ref = reference(ref_in, **kw)
    (ref * weights.double()).sum().backward()
    assert out.shape == shape[:-1] and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    # fp32 rounding of q (ln q + H), amplified where the two terms cancel: worst 8.8e-6 over 840 draws
    torch.testing.assert_close(logits.grad.double(), ref_in.grad, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kw", [{}, {"top_k": 2}, {"top_p": 0.99}], ids=["full", "k2", "p0.99"])
def test_low_precision_inputs_give_fp32_matching_float64_of_same_values(dtype, kw):
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(6, 2000, generator=g) * 3).to(dtype).requires_grad_(True)
    out = tre(logits, **kw)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), reference(logits.detach(), **kw), rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert logits.grad.dtype == dtype and torch.isfinite(logits.grad.float()).all()


# ---------------------------------------------------------------------------------------------- chunking
@pytest.mark.parametrize("kw", CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "full")
def test_chunked_equals_unchunked_in_value_and_gradient(kw):
    g = torch.Generator().manual_seed(11)
    base = torch.randn(4, 5, 400, generator=g) * 2
    a = base.clone().requires_grad_(True)
    b = base.clone().requires_grad_(True)
    w = torch.randn(4, 5, generator=g)
    ya, yb = tre(a, **kw), tre(b, chunk_size=3, **kw)
    (ya * w).sum().backward()
    (yb * w).sum().backward()
    torch.testing.assert_close(ya, yb, rtol=0, atol=1e-6)
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-7)


# ---------------------------------------------------------------------------------------------- robustness
@pytest.mark.parametrize("kw", [{}, {"top_k": 1}, {"top_k": 2}, {"top_k": 4}, {"top_p": 0.99}], ids=["full", "k1", "k2", "k4", "p"])
def test_masked_vocabulary_ties_and_constant_rows_stay_finite(kw):
    logits = torch.randn(5, 64)
    logits[0, 10:] = -math.inf  # masked vocabulary
    logits[1, :] = 1.0  # all equal
    logits[2, :4] = 5.0  # ties at the top
    logits[3, 1:] = -math.inf  # a single allowed token
    logits.requires_grad_(True)
    out = tre(logits, **kw)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(logits.grad).all()
    assert out[3].item() == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(out[1], torch.tensor(math.log(64)), rtol=1e-6, atol=0)
    # entries of masked tokens get no gradient
    assert torch.equal(logits.grad[0, 10:], torch.zeros(54))
    ref = reference(torch.where(torch.isinf(logits.detach()), torch.tensor(-1e4), logits.detach()), **kw)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_gradient_only_reaches_kept_logits():
    logits = torch.tensor([[4.0, 3.0, 0.0, -1.0, -2.0]], requires_grad=True)
    tre(logits, top_k=2).sum().backward()
    assert torch.count_nonzero(logits.grad[0, 2:]) == 0 and torch.count_nonzero(logits.grad[0, :2]) == 2
    # the restricted entropy is shift invariant on the kept set: its gradient sums to zero there
    assert logits.grad[0, :2].sum().item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("use_reentrant", [True, False])
@pytest.mark.parametrize("kw", [{}, {"top_k": 1}, {"top_k": 2}, {"top_p": 0.9}, {"top_p": 0.9, "chunk_size": 2}], ids=["full", "k1", "k2", "p", "p-chunk"])
def test_works_under_activation_checkpointing(kw, use_reentrant):
    from torch.utils.checkpoint import checkpoint

    base = torch.randn(5, 40)
    a, b = base.clone().requires_grad_(True), base.clone().requires_grad_(True)
    checkpoint(lambda t: tre(t, **kw), a, use_reentrant=use_reentrant).sum().backward()
    tre(b, **kw).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_empty_positions_and_no_grad_mode():
    assert tre(torch.zeros(0, 10), top_k=2).shape == (0,)
    with torch.no_grad():
        assert tre(torch.zeros(2, 10), top_p=0.9).shape == (2,)


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kw, field",
    [
        ({"top_k": 2, "top_p": 0.9}, "top_k/top_p"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 11}, "top_k"),
        ({"top_k": 2.0}, "top_k"),
        ({"top_p": 1.0}, "top_p"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": 0.9, "max_candidates": 0}, "max_candidates"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_arguments_raise_one_line_value_error(kw, field):
    with pytest.raises(ValueError) as err:
        tre(torch.zeros(2, 10), **kw)
    msg = str(err.value)
    assert msg.startswith(field + ":") and "\n" not in msg


def test_integer_logits_are_rejected():
    with pytest.raises(ValueError, match=r"^logits: must be a floating-point tensor, got torch.int64$"):
        tre(torch.zeros(2, 10, dtype=torch.long))


# ---------------------------------------------------------------------------------------------- statistics
@pytest.mark.parametrize("top_k", [1, 2, 5])
def test_trust_region_stats_agree_with_the_entropy_and_float64(top_k):
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(9, 700, generator=g) * (torch.rand(9, 1, generator=g) * 6)
    s = trust_region_stats(logits, top_k=top_k, top_p=0.9, max_candidates=64)
    torch.testing.assert_close(s["tre_k_entropy"], tre(logits, top_k=top_k), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s["tre_p_entropy"], tre(logits, top_p=0.9, max_candidates=64), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s["full_entropy"], tre(logits), rtol=1e-6, atol=1e-6)
    p = torch.softmax(logits.double(), -1).sort(-1, descending=True).values
    keep = (p[:, :64].cumsum(-1) - p[:, :64]) < 0.9
    keep[:, 0] = True
    torch.testing.assert_close(s["top1_prob"].double(), p[:, 0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(s["tre_p_size"].double(), keep.sum(-1).double())
    torch.testing.assert_close(s["tail_mass_k"].double(), 1 - p[:, :top_k].sum(-1), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(s["tail_mass_p"].double(), 1 - (p[:, :64] * keep).sum(-1), rtol=1e-4, atol=1e-6)
