"""transformers' top-p (nucleus) sampling filter without sorting the vocabulary: the same output, bit for bit.

`TopPLogitsWarper.__call__` sorts every row of the scores (B x V) to find the nucleus. On a CPU that sort is most of
what sampling costs: 52 ms a call at 126 x 8,214 on one thread, 20 times a validation (`benchmarks/sampling.py`).
`install()` replaces it, for float32 CPU scores, with a filter that looks only at the top CANDIDATES tokens and
returns exactly what transformers would, proven row by row; a row it cannot prove goes through transformers' own code.

What transformers computes (4.57, `TopPLogitsWarper.__call__`): the ascending sort of a row, the float32 softmax
of it, its cumulative sum, and `cumulative <= 1 - top_p` marks a token removed, except the `min_tokens_to_keep` largest.
Written from the top, the token of descending rank r has cumulative c(r) = 1 - (mass of ranks 0..r-1), which falls
as r grows, so the kept tokens are the ranks 0..b-1, and b is the first rank r >= min_tokens_to_keep with c(r) <= 1 - p.

How `top_p_filter` decides b without the sort: the top CANDIDATES values and their exact float64 probabilities against
the row's float64 sum of exponentials give an estimate of every c(r). Transformers' float32 softmax and cumulative sum
differ from the exact values by at most about 2.1 V float32 roundings (its exponentials, their sum in any order, the
division; the cumulative sum is accumulated in double), the estimate by at most 0.4 V, so `margin` = 4 (V + 8) 2^-24
bounds both. A row is decided when its boundary lies among the candidates with the estimate more than `margin` from
1 - p on both sides of it, and the two tokens beside the boundary differ in value (equal values would be ordered by
the sort's tie rule). Every other row (a boundary beyond the candidates, a near tie with the threshold, a NaN or an
infinity) is filtered by transformers' code on that row alone, which gives the same bits as in the whole batch.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

CANDIDATES = 64  # the top tokens examined per row; a larger nucleus takes transformers' sort
_U = 2.0**-24  # float32's unit roundoff


def margin(vocab: int) -> float:
    """The bound on |estimate - transformers' float32 cumulative| for a vocabulary of `vocab` tokens (module doc)."""
    return 4.0 * (vocab + 8) * _U


def _decided(scores: torch.Tensor, top_p: float, min_keep: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each row of float32 scores (B, V): whether it is decided, its kept count b, and the top-k values/indices."""
    vals, idx = torch.topk(scores, k, dim=-1)  # descending; NaN and +inf come first
    top = vals[:, :1]
    finite = torch.isfinite(top[:, 0])
    safe_top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = torch.exp(scores - safe_top).sum(dim=-1, dtype=torch.float64)  # >= 1 where the row is finite
    above = torch.exp(vals.double() - safe_top.double()).cumsum(dim=-1) / total.unsqueeze(-1)  # mass of ranks 0..r
    # c(r) = 1 - mass of ranks 0..r-1; c(0) = 1
    cum = torch.cat([torch.ones_like(above[:, :1]), 1.0 - above[:, :-1]], dim=-1)
    threshold, tol = 1.0 - top_p, margin(scores.shape[-1])
    ranks = torch.arange(k, device=scores.device)
    kept_sure = (ranks < min_keep) | (cum > threshold + tol)
    removed_sure = (ranks >= min_keep) & (cum < threshold - tol)
    b = kept_sure.sum(dim=-1)  # kept_sure is a prefix: cum never rises with the rank
    inside = b < k
    at = b.clamp(max=k - 1).unsqueeze(-1)
    boundary_removed = removed_sure.gather(1, at).squeeze(-1)
    distinct = vals.gather(1, at).squeeze(-1) != vals.gather(1, (at - 1).clamp(min=0)).squeeze(-1)
    ok = finite & inside & boundary_removed & distinct & (b >= 1)
    return ok, b, vals, idx


def top_p_filter(scores: torch.Tensor, top_p: float, filter_value: float, min_tokens_to_keep: int,
                 exact: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """`scores` with every token outside the nucleus set to filter_value, as transformers' TopPLogitsWarper does.

    `exact(rows)` is transformers' own filter, used for rows this function does not prove and for inputs it does not
    handle (not a 2-D float32 CPU tensor, or a vocabulary no larger than CANDIDATES)."""
    k = max(CANDIDATES, min_tokens_to_keep + 1)
    if scores.dim() != 2 or scores.dtype != torch.float32 or scores.device.type != "cpu" or scores.shape[-1] <= k:
        return exact(scores)
    ok, b, vals, idx = _decided(scores, float(top_p), int(min_tokens_to_keep), k)
    keep = torch.arange(k, device=scores.device) < b.unsqueeze(-1)
    out = torch.full_like(scores, filter_value)
    out.scatter_(1, idx, torch.where(keep, vals, torch.full_like(vals, filter_value)))
    if not bool(ok.all()):
        rows = (~ok).nonzero().squeeze(-1)
        out[rows] = exact(scores[rows])
    return out


def install() -> None:
    """Route transformers' TopPLogitsWarper through `top_p_filter` in this process (idempotent)."""
    from transformers.generation.logits_process import TopPLogitsWarper

    original = TopPLogitsWarper.__call__
    if getattr(original, "_tre_shim", False):
        return

    @functools.wraps(original)
    def __call__(self, input_ids, scores):
        return top_p_filter(scores, self.top_p, self.filter_value, self.min_tokens_to_keep,
                            lambda rows: original(self, input_ids, rows))

    __call__._tre_shim = True
    TopPLogitsWarper.__call__ = __call__
