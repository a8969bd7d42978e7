"""The authors' entropy semantics in float64: the reference the kernel (`tre.kernel`) is proven against.

A plain autograd transcription of the fork's `verl/utils/torch_functional.py::entropy_from_logits` (docs/fidelity.md,
"Kernel"), slow and memory-hungry on purpose: it builds the full-vocabulary softmax that the kernel avoids.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from tre.grid import TRE_MAX_CANDIDATES


def authors_entropy(logits: torch.Tensor, top_k: Optional[int] = None, top_p: Optional[float] = None,
                    max_candidates: int = TRE_MAX_CANDIDATES) -> torch.Tensor:
    """Float64 per-position entropy of logits (..., V) as the authors define it: full, TRE-K or TRE-P; autograd-able."""
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
