"""tre.trust_region_entropy: known values, float64 parity (value + gradient), chunking, numerics, errors."""

import importlib.util
import math
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

import tre.kernel as kernel
from tre import trust_region_entropy as tre
from tre import trust_region_stats
from tre.reference import authors_entropy as reference

ROOT = Path(__file__).resolve().parents[1]


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


# ---------------------------------------------------------------------------------------------- fast selection
def _mixed_rows(vocab: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Continuous rows, coarse rows (many equal values at every cut), masked rows and a constant row."""
    g = torch.Generator().manual_seed(seed)
    smooth = torch.randn(4, vocab, generator=g) * (torch.rand(4, 1, generator=g) * 6 + 0.5)
    coarse = (torch.randn(4, vocab, generator=g) * 4).round()
    masked = torch.randn(3, vocab, generator=g) * 3
    masked[0, 50:] = -math.inf  # fewer allowed tokens than candidates
    masked[1, ::2] = -math.inf
    masked[2, :-3] = -math.inf  # only the ragged tail allowed
    return torch.cat([smooth, coarse, masked, torch.ones(1, vocab)]).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("m", [1, 2, 40])
@pytest.mark.parametrize("vocab", [4096, 4099])  # a multiple of the block width, and a ragged tail
def test_prefiltered_top_values_equal_torch_topk_bit_for_bit(vocab, m, dtype, monkeypatch):
    x = _mixed_rows(vocab, dtype, seed=vocab + m)
    monkeypatch.setattr(kernel, "_CACHE_ELEMS", 11 * vocab)  # logsumexp row groups of 11 and 1
    monkeypatch.setattr(kernel, "_SELECT_ELEMS", 5 * vocab)  # selection row groups of 5, 5 and 2 (bf16: of 1)
    assert kernel._prefilter_applies(vocab, m)
    vals, idx, lse = kernel._top_values(x, m, with_lse=True)
    assert torch.equal(vals, torch.topk(x, m + 1, dim=-1).values)
    assert torch.equal(lse, torch.logsumexp(x.float(), -1))
    assert torch.equal(x.gather(1, idx), vals[:, :m])  # the indices point at those values
    assert all(len(set(row.tolist())) == m for row in idx)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "kw",
    [{"top_k": 2}, {"top_k": 5}, {"top_p": 0.5}, {"top_p": 0.99, "max_candidates": 40}, {"top_p": 0.9, "max_candidates": 40, "chunk_size": 3}],
    ids=["k2", "k5", "p0.5", "p0.99-m40", "p0.9-m40-chunk"],
)
def test_prefilter_changes_no_bit_of_values_or_gradients(kw, dtype, monkeypatch):
    # coarse rows put equal logits across the kept set's edge: those rows must keep torch.topk's tie order
    base = _mixed_rows(4099, dtype, seed=1)
    w = torch.randn(base.shape[0], generator=torch.Generator().manual_seed(2))

    def run():
        x = base.clone().requires_grad_(True)
        y = tre(x, **kw)
        (y * w).sum().backward()
        return y.detach(), x.grad

    fast = run()
    monkeypatch.setattr(kernel, "_prefilter_applies", lambda vocab, m: False)
    plain = run()
    assert torch.equal(fast[0], plain[0]) and torch.equal(fast[1], plain[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kw", [{}, {"top_k": 1}, {"top_k": 2}, {"top_p": 0.9}, {"top_p": 0.9, "chunk_size": 5}],
                         ids=["full", "k1", "k2", "p0.9", "p0.9-chunk"])
def test_huge_page_gradient_changes_no_bit(kw, dtype, monkeypatch):
    base = _mixed_rows(4099, dtype, seed=3)
    w = torch.randn(base.shape[0], generator=torch.Generator().manual_seed(5))

    def grad():
        x = base.clone().requires_grad_(True)
        (tre(x, **kw) * w).sum().backward()
        return x.grad

    monkeypatch.setattr(kernel, "_HUGE_ALLOC_MIN", 1 << 62)  # torch.zeros
    plain = grad()
    monkeypatch.setattr(kernel, "_HUGE_ALLOC_MIN", 0)  # every gradient on its own huge-page mapping
    huge = grad()
    assert huge.untyped_storage().data_ptr() % kernel._HUGE_PAGE == 0  # the mapping was used, aligned
    assert huge.dtype == plain.dtype and huge.shape == plain.shape and torch.equal(huge, plain)


@pytest.mark.parametrize("kw", [{"top_k": 2}, {"top_p": 0.9, "max_candidates": 40}])
def test_half_precision_backward_holds_no_full_size_temporary(kw):
    # torch's CPU scatter_ into a bf16 tensor converts the whole tensor to fp32 and back: an N x V fp32 temporary
    bench = _benchmark_module()
    base = _mixed_rows(4099, torch.bfloat16, seed=6).repeat(4, 1)
    x = base.clone().requires_grad_(True)
    out = tre(x, **kw).sum()
    peak, _, _ = bench._phase_peak(lambda: out.backward(), x.device)
    assert peak - base.numel() * 2 < base.numel() * 2, peak  # the bf16 gradient (torch.zeros here) and small change


def test_huge_page_zeros_are_zero_and_unmapped_when_freed():
    def mappings() -> int:
        return len(Path("/proc/self/maps").read_text().splitlines())

    if not Path("/proc/self/maps").exists():
        pytest.skip("needs /proc (Linux)")
    shape = torch.Size([64, 1 << 16])  # 16 MiB of fp32: above _HUGE_ALLOC_MIN
    first = kernel._zeros(shape, torch.float32, torch.device("cpu"))
    before = mappings()
    for _ in range(20):
        z = kernel._zeros(shape, torch.float32, torch.device("cpu"))
        assert z.shape == shape and z.is_contiguous() and not z.any()
        z.fill_(1.0)
        del z
    assert mappings() <= before  # each mapping went with its tensor
    assert not first.any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_logsumexp_rows_is_torch_logsumexp_bit_for_bit(dtype, monkeypatch):
    vocab = 40000  # above torch's grain size: a one-row torch.logsumexp would be split across threads
    g = torch.Generator().manual_seed(4)
    x = torch.randn(7, vocab, generator=g) * 5
    x[1, ::3] = -math.inf
    x[2] = -math.inf
    x[3, 17] = math.inf
    x = x.to(dtype)
    monkeypatch.setattr(kernel, "_CACHE_ELEMS", 3 * vocab)  # groups of 3, 3 and a last group of one row
    got = kernel._logsumexp_rows(x, x.float().amax(-1))
    expected = torch.logsumexp(x.float(), -1)  # a batch of rows: each row reduced whole
    assert torch.equal(got.isnan(), expected.isnan())
    assert torch.equal(got[~got.isnan()], expected[~expected.isnan()])


# ---------------------------------------------------------------------------------------------- benchmark
def _benchmark_module():
    spec = importlib.util.spec_from_file_location("kernel_benchmark", ROOT / "benchmarks" / "kernel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_memory_is_the_allocators_exact_and_repeatable_peak():
    bench = _benchmark_module()
    base = torch.randn(8, 3000)
    # forward keeps exp(z) (8 x 3000 fp32) for backward; backward allocates only the gradient it returns
    peaks = [bench.extra_peak_bytes(lambda z: z.exp().sum(-1), base) for _ in range(5)]
    assert len(set(peaks)) == 1
    assert 8 * 3000 * 4 <= peaks[0] <= 8 * 3000 * 4 + 1024


def test_kernel_benchmark_prints_its_table_and_nothing_else():
    cmd = [sys.executable, "benchmarks/kernel.py", "--device", "cpu", "--vocab", "1000", "--positions", "4,8",
           "--dtypes", "float32,bfloat16", "--reps", "1", "--mem-reps", "2", "--check-rows", "4", "--flat", "16,32", "--chunk", "8"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no profiler chatter
    lines = done.stdout.splitlines()
    assert lines[0].startswith("V=1000 device=cpu")
    assert lines[1].split() == ["dtype", "N", "method", "fwd+bwd", "ms", "extra", "MiB", "val", "err", "grad", "err"]
    methods = ["full", "authors_k", "authors_p", "ours_k", "ours_p", "ours_p_chunk", "floor"]
    body = lines[2:]
    assert len(body) == 2 * 2 * (len(methods) + 1) + 3
    for block, (dtype, n) in enumerate([(d, n) for d in ("float32", "bfloat16") for n in (4, 8)]):
        rows = body[block * 8 : block * 8 + 8]
        for method, row in zip(methods, rows):
            cells = row.split()
            assert cells[:3] == [dtype, str(n), method]
            assert len(cells) == (4 if method == "floor" else 7) and all(float(c) >= 0 for c in cells[3:])
            if method.startswith("ours_") and dtype == "float32":
                assert float(cells[5]) < 1e-5 and float(cells[6]) < 1e-4  # value and gradient error vs float64
        assert rows[7].startswith(f"{dtype:<9} {n:>6} ratios: ours_p/authors_p time ")
    assert body[-3].startswith("float32   chunked extra peak at N=16: ")
    assert re.fullmatch(r"float32   chunked extra peak N=32 / N=16: \d+\.\d{3} \(target ~1: flat\)", body[-1])


def test_trust_region_stats_unchanged_by_the_prefilter(monkeypatch):
    x = _mixed_rows(4099, torch.float32, seed=9)
    fast = trust_region_stats(x, top_k=2, top_p=0.9, max_candidates=40)
    monkeypatch.setattr(kernel, "_prefilter_applies", lambda vocab, m: False)
    plain = trust_region_stats(x, top_k=2, top_p=0.9, max_candidates=40)
    for key in plain:
        assert torch.equal(fast[key].isnan(), plain[key].isnan()), key
        assert torch.equal(fast[key].nan_to_num(), plain[key].nan_to_num()), key


def test_kernel_benchmark_thp_puts_every_allocation_on_huge_pages(capsys):
    cmd = [sys.executable, "benchmarks/kernel.py", "--thp", "--vocab", "1000", "--positions", "4", "--reps", "1",
           "--mem-reps", "1", "--check-rows", "4", "--flat", ""]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "THP_MEM_ALLOC_ENABLE": "0"})
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.splitlines()[0].endswith(" allocator=thp")
    if os.environ.get("THP_MEM_ALLOC_ENABLE") != "1":  # torch reads it at its first allocation: too late from main()
        with pytest.raises(SystemExit) as exc:
            _benchmark_module().main(["--thp", "--device", "cpu"])
        assert exc.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].endswith("--thp: give it on the command line "
                                                                         "(torch reads THP_MEM_ALLOC_ENABLE at its first allocation)")
