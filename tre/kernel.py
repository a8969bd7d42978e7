"""Trust-region entropy (TRE): entropy restricted to the plausible tokens, as in the authors' verl fork.

Semantics (the authors' `entropy_from_logits`, verl/utils/torch_functional.py of their fork; docs/fidelity.md), per
position with logits z over a vocabulary of size V (the modes of `entropy_mode`):
  * FULL_ENTROPY (neither top_k nor top_p): Shannon entropy H(softmax(z)).
  * TOP_K_ENTROPY (TRE-K, K >= 2): H(softmax(z_S)) * ln V / ln K, S = the K largest logits.
  * MIN_ENTROPY (TRE-K, K == 1): -ln p_max = logsumexp(z) - max(z), over the full vocabulary, unscaled.
  * NUCLEUS_ENTROPY (TRE-P): S = the smallest prefix of the `max_candidates` most probable tokens whose preceding
    mass is < p (the top token always kept); H(softmax(z_S)) * ln V / ln |S|, and exactly 0 where |S| == 1.
`tre.reference.authors_entropy` is the float64 transcription of these semantics that the tests hold the kernel to.

Implementation: one autograd Function walks the positions in chunks. Forward needs, per chunk, only the
top candidates (and, for TRE-P, a row-wise logsumexp), so no full-vocabulary probability tensor is ever held.
Backward is analytic: for a restricted softmax q over a set S, dH/dz_j = -q_j (ln q_j + H) for j in S and 0
elsewhere, so the gradient is scattered from the small candidate tensor. The full- and min-entropy (K == 1)
modes, and every mode when chunked, recompute their chunk in backward instead of saving per-position activations.
All arithmetic is fp32 whatever the input dtype; the gradient has the input's dtype.

On CPU, where a whole-row torch.topk dominated the time, the candidates come from a two-level block pre-filter
(_select: the blocks with the largest maxima, their sub-blocks with the largest maxima, then a top-k over
those) and the logsumexp from one pass through a cache-sized scratch (_logsumexp_rows). Both give torch.topk's
and torch.logsumexp's values bit for bit; where equal logits straddle the kept set's edge, the row is redone
with torch.topk so that the gradient reaches the same tied tokens. Values and gradients are therefore exactly
those of the plain torch.topk path, which other devices keep. A large CPU gradient is written on huge pages
(_zeros), which takes most of the page-fault cost out of backward.
"""

from __future__ import annotations

import math
import mmap
from typing import Optional

import torch

from tre.grid import TRE_MAX_CANDIDATES, TRE_TOP_K, TRE_TOP_P  # the paper's K, p and TRE-P candidate cap

__all__ = ["trust_region_entropy", "trust_region_stats"]

# Elements of fp32 scratch allowed per block when a mode must touch the whole vocabulary (logsumexp for
# TRE-P's mass, full entropy, K == 1). Bounds the transient memory of an unchunked call as well.
_BLOCK_ELEMS = 1 << 22
# Elements per row group of the CPU logsumexp: small enough that the exp and the sum read the group from cache.
_CACHE_ELEMS = 1 << 20
# The CPU top-k selection (_select): entries per block and per sub-block whose maxima pre-filter it (32 and 4
# measured fastest at V = 151936), and logits per row group (a quarter of it for 2-byte floats, whose groups are
# selected in an fp32 copy: 16 MiB, which stays in cache).
_SELECT_BLOCK = 32
_SELECT_SUB = 4
_SELECT_ELEMS = 1 << 24
# 2-byte floats: selected in fp32 (torch reduces a short innermost axis of these slowly) and scattered as int16.
_HALF = (torch.bfloat16, torch.float16)
# CPU gradients of at least this many bytes are allocated on transparent huge pages of this size (_zeros).
_HUGE_ALLOC_MIN = 1 << 22
_HUGE_PAGE = 1 << 21

# The entropy modes, named after what they compute (docs/fidelity.md, "Kernel").
FULL_ENTROPY = "full_entropy"  # neither top_k nor top_p: H(softmax(z)) over the vocabulary
MIN_ENTROPY = "min_entropy"  # top_k == 1: -ln p_max (the Renyi min-entropy), unscaled
TOP_K_ENTROPY = "top_k_entropy"  # TRE-K, K >= 2: scaled entropy of the K largest logits
NUCLEUS_ENTROPY = "nucleus_entropy"  # TRE-P: scaled entropy of the top-p nucleus among the first max_candidates


def entropy_mode(top_k: Optional[int], top_p: Optional[float]) -> str:
    """Which of the four entropies trust_region_entropy computes for these (validated) arguments."""
    if top_k is None and top_p is None:
        return FULL_ENTROPY
    if top_k == 1:
        return MIN_ENTROPY
    return TOP_K_ENTROPY if top_k else NUCLEUS_ENTROPY


def _validate(logits: torch.Tensor, top_k, top_p, max_candidates, chunk_size) -> None:
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        got = logits.dtype if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits: must be a floating-point tensor, got {got}")
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(f"logits: must have a non-empty last (vocabulary) dimension, got shape {tuple(logits.shape)}")
    vocab = logits.shape[-1]
    if top_k is not None and top_p is not None:
        raise ValueError("top_k/top_p: give at most one of them (TRE-K or TRE-P), got both")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= vocab):
        raise ValueError(f"top_k: must be an integer in [1, {vocab}] (the vocabulary size), got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0.0 < top_p < 1.0):
        raise ValueError(f"top_p: must be a number in the open interval (0, 1), got {top_p!r}")
    if isinstance(max_candidates, bool) or not isinstance(max_candidates, int) or max_candidates < 1:
        raise ValueError(f"max_candidates: must be an integer >= 1, got {max_candidates!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size: must be None or an integer >= 1, got {chunk_size!r}")


def _restricted_entropy(z: torch.Tensor, keep: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Entropy of softmax over the kept entries of fp32 z (N, M); returns (H, q, log q) with q = 0 off the set."""
    if keep is None:
        keep = torch.isfinite(z)
    else:
        keep = keep & torch.isfinite(z)
    z_in = torch.where(keep, z, torch.zeros((), dtype=z.dtype, device=z.device))
    lse = torch.logsumexp(torch.where(keep, z, torch.full((), -math.inf, dtype=z.dtype, device=z.device)), dim=-1, keepdim=True)
    log_q = torch.where(keep, z_in - lse, torch.zeros((), dtype=z.dtype, device=z.device))
    q = torch.where(keep, log_q.exp(), torch.zeros((), dtype=z.dtype, device=z.device))
    h = -(q * log_q).sum(-1)
    return h, q, log_q


def _blockwise(rows: torch.Tensor, fn) -> torch.Tensor:
    """Apply a row-wise fn to fp32 copies of `rows` in blocks of bounded size; concatenates the results."""
    n, v = rows.shape
    step = max(1, _BLOCK_ELEMS // max(v, 1))
    if n <= step:
        return fn(rows.float())
    return torch.cat([fn(rows[i : i + step].float()) for i in range(0, n, step)])


def _full_entropy_rows(z: torch.Tensor) -> torch.Tensor:
    return _restricted_entropy(z)[0]


def _neg_log_pmax_rows(z: torch.Tensor) -> torch.Tensor:
    finite = torch.where(torch.isfinite(z), z, torch.full((), -math.inf, dtype=z.dtype, device=z.device))
    return torch.logsumexp(finite, -1) - finite.amax(-1)


def _full_grad_rows(z: torch.Tensor) -> torch.Tensor:
    """d H(softmax(z)) / dz for fp32 rows z."""
    h, q, log_q = _restricted_entropy(z)
    return -q * (log_q + h.unsqueeze(-1))


def _neg_log_pmax_grad_rows(z: torch.Tensor) -> torch.Tensor:
    """d(logsumexp(z) - max z)/dz = softmax(z) - onehot(argmax z)."""
    p = torch.softmax(torch.where(torch.isfinite(z), z, torch.full((), -math.inf, dtype=z.dtype, device=z.device)), -1)
    return p.scatter_add(-1, z.argmax(-1, keepdim=True), torch.full((z.shape[0], 1), -1.0, dtype=z.dtype, device=z.device))


def _logsumexp_rows(x: torch.Tensor, row_max: torch.Tensor) -> torch.Tensor:
    """torch.logsumexp(x.float(), -1) bit for bit, given each row's maximum, through a cache-sized fp32 scratch."""
    rows, vocab = x.shape
    # rows per cache-sized group, and never a one-row sum: that one is split across threads and rounds differently
    group = max(2, _CACHE_ELEMS // vocab)
    shift = row_max.float().masked_fill(row_max.abs() == math.inf, 0.0).unsqueeze(-1)  # torch.logsumexp's shift
    scratch = torch.zeros(min(group, max(rows, 2)), vocab, dtype=torch.float32, device=x.device)
    total = torch.empty(rows, dtype=torch.float32, device=x.device)
    for s in range(0, rows, group):
        k = min(group, rows - s)
        if x.dtype == torch.float32:
            torch.sub(x[s : s + k], shift[s : s + k], out=scratch[:k])
        else:
            scratch[:k].copy_(x[s : s + k]).sub_(shift[s : s + k])
        scratch[:k].exp_()
        total[s : s + k] = scratch[: max(k, 2)].sum(-1)[:k]
    return total.log_().add_(shift.squeeze(-1))


def _prefilter_applies(vocab: int, m: int) -> bool:
    """Whether the block pre-filter of _top_values pays off: the m + 1 gathered blocks are a small part of the row."""
    return (m + 1) * _SELECT_BLOCK * 2 <= vocab


def _select(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of the k largest entries of rows x (r, V), values sorted descending and equal to
    torch.topk(x, k)'s bit for bit; only the order of equal values may differ. Requires _prefilter_applies(V, k - 1).

    A row is cut into contiguous blocks of _SELECT_BLOCK entries (the last V % _SELECT_BLOCK entries, the tail,
    stay apart). Level 1 keeps the k blocks with the largest maxima: every entry outside them is matched or
    exceeded by those k maxima, so the row's k largest values are among the kept blocks and the tail. Level 2
    does the same with the kept blocks' sub-blocks of _SELECT_SUB entries, and one torch.topk over the k kept
    sub-blocks and the tail gives the values. Each level reads contiguous memory (a block maximum is one
    reduction over the innermost axis, a kept block one row copy), which torch does at memory speed.
    """
    r, vocab = x.shape
    b, sub = _SELECT_BLOCK, _SELECT_SUB
    nb, ns = vocab // b, _SELECT_BLOCK // _SELECT_SUB
    half = x.dtype in _HALF
    main = x[:, : nb * b]
    blocks = (main.float() if half else main).reshape(r, nb, b)  # a copy only for 2-byte floats or a ragged tail
    first = torch.arange(r, device=x.device).unsqueeze(1)  # each row's first block / sub-block, in block units
    kept = torch.topk(blocks.amax(-1), k, dim=-1, sorted=False).indices  # (r, k) block numbers
    kept_rows = blocks.reshape(r * nb, b).index_select(0, (kept + first * nb).flatten())  # (r * k, b)
    subs = kept_rows.view(r, k * ns, sub)
    kept_sub = torch.topk(subs.amax(-1), k, dim=-1, sorted=False).indices  # (r, k) sub-blocks of the kept blocks
    cand = subs.reshape(r * k * ns, sub).index_select(0, (kept_sub + first * (k * ns)).flatten()).view(r, k * sub)
    tail = vocab - nb * b
    if tail:
        cand = torch.cat([cand, x[:, nb * b :].to(cand.dtype)], 1)
    vals, pos = torch.topk(cand, k, dim=-1, sorted=True)
    which = kept_sub.gather(1, (pos // sub).clamp(max=k - 1))  # the sub-block each value came from
    idx = kept.gather(1, which // ns) * b + (which % ns) * sub + pos % sub
    if tail:
        idx = torch.where(pos < k * sub, idx, pos - k * sub + nb * b)
    return vals.to(x.dtype), idx  # exact: every 2-byte float is an fp32


def _top_values(x: torch.Tensor, m: int, with_lse: bool = False):
    """The m + 1 largest entries of rows x (r, V), sorted descending (values, indices of the first m, and
    torch.logsumexp(x.float(), -1) when with_lse, else None), through _select in row groups of bounded size.
    Values equal torch.topk(x, m + 1)'s bit for bit. Requires _prefilter_applies(V, m).
    """
    rows, vocab = x.shape
    vals = torch.empty(rows, m + 1, dtype=x.dtype, device=x.device)
    idx = torch.empty(rows, m + 1, dtype=torch.long, device=x.device)
    step = max(1, (_SELECT_ELEMS // 4 if x.dtype in _HALF else _SELECT_ELEMS) // vocab)
    for s in range(0, rows, step):
        vals[s : s + step], idx[s : s + step] = _select(x[s : s + step], m + 1)
    return vals, idx[:, :m], _logsumexp_rows(x, vals[:, 0]) if with_lse else None


def _largest(x: torch.Tensor, m: int) -> torch.Tensor:
    """torch.topk(x, m, sorted=True).values of rows x (r, V), through the block pre-filter where it applies."""
    if not (x.is_cpu and _prefilter_applies(x.shape[-1], m)):
        return torch.topk(x, m, dim=-1, sorted=True).values
    return _top_values(x, m)[0][:, :m]


def _group_terms(x: torch.Tensor, mode: str, top_k, top_p, m: int, need_grad: bool, plain: bool):
    """_candidate_terms on one row group; `plain` selects with torch.topk over the whole rows."""
    vocab = x.shape[-1]
    log_v = math.log(vocab)
    if plain:
        vals, idx = torch.topk(x, m, dim=-1, sorted=True)
        ext = lse = None
    else:
        ext, idx, lse = _top_values(x, m, with_lse=mode == NUCLEUS_ENTROPY)
        vals = ext[:, :m]
    z = vals.float()
    if mode == TOP_K_ENTROPY:
        h, q, log_q = _restricted_entropy(z)
        scale = torch.full_like(h, log_v / math.log(top_k))
        count = None
    else:
        if lse is None:
            lse = _logsumexp_rows(x, z[:, 0]) if x.is_cpu else _blockwise(x, lambda r: torch.logsumexp(r, -1))
        probs = torch.exp(z - lse.unsqueeze(-1))
        keep = (torch.cumsum(probs, -1) - probs) < top_p  # exclusive cumulative mass, sorted descending
        keep[:, 0] = True
        count = keep.sum(-1)
        h, q, log_q = _restricted_entropy(z, keep)
        scale = torch.where(count >= 2, log_v / torch.log(count.clamp(min=2).float()), torch.zeros_like(h))
    dz = -q * (log_q + h.unsqueeze(-1)) * scale.unsqueeze(-1) if need_grad else None
    h = h * scale
    if need_grad and ext is not None:
        # Which of several equal logits is a candidate only matters where equal values straddle the kept set's
        # edge (and for non-finite rows): redo those rows with torch.topk so gradients keep its tie order.
        edge = torch.full_like(h, m, dtype=torch.long) if count is None else count
        redo = (ext.gather(1, (edge - 1).unsqueeze(-1)) == ext.gather(1, edge.unsqueeze(-1))).squeeze(-1)
        redo |= ~torch.isfinite(ext[:, 0])
        if redo.any():
            r = redo.nonzero().squeeze(-1)
            h[r], idx[r], dz[r] = _group_terms(x[r], mode, top_k, top_p, m, need_grad, plain=True)
    return h, idx, dz


def _candidate_terms(x: torch.Tensor, mode: str, top_k, top_p, max_candidates: int, need_grad: bool):
    """For TOP_K_ENTROPY / NUCLEUS_ENTROPY rows x: (entropy, candidate indices, d entropy / d candidate logit or None).

    One call for all rows: the full-vocabulary work already goes in cache-sized row groups (_top_values,
    _logsumexp_rows), and what is left is O(rows x M). The pre-filter and the row groups are tuned on CPU;
    elsewhere the candidates come from one torch.topk.
    """
    m = top_k if mode == TOP_K_ENTROPY else min(max_candidates, x.shape[-1])
    plain = not (x.is_cpu and _prefilter_applies(x.shape[-1], m))
    return _group_terms(x, mode, top_k, top_p, m, need_grad, plain)


def _scatter(dst: torch.Tensor, idx: torch.Tensor, src: torch.Tensor) -> None:
    """dst.scatter_(-1, idx, src.to(dst.dtype)) bit for bit. A 2-byte float destination is written through an int16
    view: torch's CPU scatter_ converts a whole bf16/fp16 destination to fp32 and back (an N x V fp32 temporary,
    120 ms at 512 x 151,936), where only the copied entries change."""
    src = src.to(dst.dtype)
    if dst.dtype in _HALF:
        dst.view(torch.int16).scatter_(-1, idx, src.view(torch.int16))
    else:
        dst.scatter_(-1, idx, src)


def _zeros(shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """torch.zeros(shape, dtype, device); on Linux CPU a large one comes from a fresh anonymous mapping advised
    for transparent huge pages.

    Writing a fresh N x V gradient is most of a backward pass on CPU, and most of that is page faults: torch's
    allocator hands out 4 KiB pages, each faulted in and zeroed by the kernel, then zeroed again by torch.zeros.
    The mapping's pages come zeroed from the kernel 2 MiB at a time (512x fewer faults) and are not written
    again. Values are torch.zeros'; the tensor frees its mapping when it dies. Where huge pages are off, the
    mapping still skips the second zeroing.
    """
    nbytes = math.prod(shape) * dtype.itemsize
    if device.type != "cpu" or nbytes < _HUGE_ALLOC_MIN or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.zeros(shape, dtype=dtype, device=device)
    buf = mmap.mmap(-1, nbytes + _HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    start = -torch.frombuffer(buf, dtype=torch.uint8, count=1).data_ptr() % _HUGE_PAGE  # the first 2 MiB boundary
    try:
        buf.madvise(mmap.MADV_HUGEPAGE, start, nbytes)
    except OSError:  # a kernel without transparent huge pages: plain pages, still zeroed once
        pass
    return torch.frombuffer(buf, dtype=dtype, count=math.prod(shape), offset=start).view(shape)


class _TRE(torch.autograd.Function):
    """Chunked forward / analytic backward of every entropy mode on 2-D logits (N, V).

    Unchunked TRE-K/TRE-P keep each position's candidate indices and derivatives (N x M) for backward;
    chunked calls keep nothing per position and recompute them chunk by chunk, so extra memory stays
    O(chunk x V) however many positions there are.
    """

    @staticmethod
    def forward(ctx, logits, top_k, top_p, max_candidates, chunk):
        n = logits.shape[0]
        mode = entropy_mode(top_k, top_p)
        keep_terms = mode in (TOP_K_ENTROPY, NUCLEUS_ENTROPY) and chunk >= n and ctx.needs_input_grad[0]
        out = torch.empty(n, dtype=torch.float32, device=logits.device)
        for s in range(0, n, chunk):
            x = logits[s : s + chunk]
            if mode == FULL_ENTROPY:
                out[s : s + chunk] = _blockwise(x, _full_entropy_rows)
            elif mode == MIN_ENTROPY:
                out[s : s + chunk] = _blockwise(x, _neg_log_pmax_rows)
            else:
                out[s : s + chunk], idx, dz = _candidate_terms(x, mode, top_k, top_p, max_candidates, keep_terms)
        ctx.mode, ctx.chunk, ctx.params = mode, chunk, (top_k, top_p, max_candidates)
        if keep_terms:
            ctx.save_for_backward(idx, dz)
            ctx.shape, ctx.in_dtype = logits.shape, logits.dtype
        else:
            ctx.save_for_backward(logits)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        g = grad_out.float().unsqueeze(-1)
        saved = ctx.saved_tensors  # unpack once: non-reentrant checkpointing allows a single unpack
        if len(saved) == 2:
            idx, dz = saved
            grad = _zeros(ctx.shape, ctx.in_dtype, idx.device)
            _scatter(grad, idx, dz * g)
            return grad, None, None, None, None
        (logits,) = saved
        if ctx.mode in (FULL_ENTROPY, MIN_ENTROPY):
            row_grad = _full_grad_rows if ctx.mode == FULL_ENTROPY else _neg_log_pmax_grad_rows
            grad = _zeros(logits.shape, logits.dtype, logits.device)
            for s in range(0, logits.shape[0], ctx.chunk):
                grad[s : s + ctx.chunk] = _blockwise(logits[s : s + ctx.chunk], row_grad).mul_(g[s : s + ctx.chunk]).to(logits.dtype)
            return grad, None, None, None, None
        grad = _zeros(logits.shape, logits.dtype, logits.device)
        for s in range(0, logits.shape[0], ctx.chunk):
            _, idx, dz = _candidate_terms(logits[s : s + ctx.chunk], ctx.mode, *ctx.params, need_grad=True)
            _scatter(grad[s : s + ctx.chunk], idx, dz * g[s : s + ctx.chunk])
        return grad, None, None, None, None


def trust_region_entropy(
    logits: torch.Tensor,
    *,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    max_candidates: int = TRE_MAX_CANDIDATES,
    chunk_size: Optional[int] = None,
) -> torch.Tensor:
    """Per-position (trust-region) entropy of `logits` (..., V): fp32, shape logits.shape[:-1], differentiable."""
    _validate(logits, top_k, top_p, max_candidates, chunk_size)
    lead = logits.shape[:-1]
    flat = logits.reshape(-1, logits.shape[-1])
    n = flat.shape[0]
    if n == 0:
        return logits.float().sum(-1)  # empty: keeps shape, dtype and the autograd graph
    chunk = n if chunk_size is None else min(chunk_size, n)
    return _TRE.apply(flat, top_k, None if top_p is None else float(top_p), max_candidates, chunk).reshape(lead)


@torch.no_grad()
def trust_region_stats(
    logits: torch.Tensor, *, top_k: int = TRE_TOP_K, top_p: float = TRE_TOP_P, max_candidates: int = TRE_MAX_CANDIDATES
) -> dict[str, torch.Tensor]:
    """Per-row trust-region statistics of logits (N, V) from one top-k and one logsumexp pass (no grad).

    Keys: top1_prob, tre_k_entropy and tre_p_entropy (equal to trust_region_entropy's), tre_p_size (nucleus
    size), tail_mass_k / tail_mass_p (probability outside the top-K / the nucleus), full_entropy.
    """
    for k, p in ((top_k, None), (None, top_p)):  # the same one-line errors as trust_region_entropy
        _validate(logits, k, p, max_candidates, None)
    vocab = logits.shape[-1]
    log_v = math.log(vocab)
    m_p = min(max_candidates, vocab)
    z = _largest(logits, max(m_p, top_k)).float()
    lse = _logsumexp_rows(logits, z[:, 0]) if logits.is_cpu else _blockwise(logits, lambda r: torch.logsumexp(r, -1))
    probs = torch.exp(z - lse.unsqueeze(-1))
    keep = (torch.cumsum(probs[:, :m_p], -1) - probs[:, :m_p]) < top_p
    keep[:, 0] = True
    count = keep.sum(-1)
    h_p = _restricted_entropy(z[:, :m_p], keep)[0]
    h_p = torch.where(count >= 2, h_p * log_v / torch.log(count.clamp(min=2).float()), torch.zeros_like(h_p))
    h_k = _restricted_entropy(z[:, :top_k])[0] * (log_v / math.log(top_k)) if top_k >= 2 else lse - z[:, 0]
    return {
        "top1_prob": probs[:, 0],
        "tre_k_entropy": h_k,
        "tre_p_entropy": h_p,
        "tre_p_size": count.float(),
        "tail_mass_k": (1.0 - probs[:, :top_k].sum(-1)).clamp(min=0.0),
        "tail_mass_p": (1.0 - (probs[:, :m_p] * keep).sum(-1)).clamp(min=0.0),
        "full_entropy": _blockwise(logits, _full_entropy_rows),
    }
