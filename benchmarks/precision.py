"""Precision of the TRE bonus for bf16 logits: the kernel (fp32 arithmetic) against the authors' function.

The authors' actor (their fork's `dp_actor._forward_micro_batch`, verl 0.4.0) calls `entropy_from_logits` on the
model's bf16 logits *inside* `torch.autocast(device_type="cuda", dtype=torch.bfloat16)`. On CUDA, autocast runs
softmax, logsumexp, sum and cumsum in fp32 (torch's CUDA autocast fp32 list; see
`torch/testing/_internal/autocast_test_lists.py`), `pd * logits` promotes to fp32, and topk/gather/where only
select or copy bf16 values exactly. Their actor therefore computes in fp32 on bf16-rounded logits, which is
`authors(logits.float())` here; this machine has no CUDA, and CPU autocast keeps softmax in bf16, so the CUDA
semantics are reproduced by that upcast. `authors(logits)` without autocast is the eager bf16 path (every op in
bf16), which no training path of theirs takes.

Columns, per mode (full entropy, TRE-K K=2, TRE-P p=0.99) on N positions of V = 151,936 logits in bf16:
  value: max |H - H64| and the share of rows with |H - H64| > 1e-2, H64 the float64 reference on the same bf16
         values; grad: max |dH/dz - ref| / max |ref| over all logits (before the gradient's final bf16 rounding,
         which every path shares); bonus: |mean H - mean H64| / mean H64, the relative change of the loss's
         entropy term coeff * token-mean(H) (coeff cancels).

    python benchmarks/precision.py [--positions 256] [--seed 0] [--threads 2]
"""

from __future__ import annotations

import argparse
import math

import torch

from tre import trust_region_entropy
from tre.grid import TRE_MAX_CANDIDATES, TRE_TOP_K, TRE_TOP_P

VOCAB = 151936  # Qwen2.5-1.5B's padded output size, the V of the authors' scaling


def authors_entropy(logits: torch.Tensor, top_k=None, top_p=None) -> torch.Tensor:
    """The authors' entropy_from_logits (fork, verl/utils/torch_functional.py) op by op, in the input's dtype."""
    if top_k is not None:
        top = torch.topk(logits, k=top_k, dim=-1).values
        pd = torch.softmax(top, dim=-1)
        return (torch.logsumexp(top, dim=-1) - torch.sum(pd * top, dim=-1)) * (math.log(logits.shape[-1]) / math.log(top_k))
    if top_p is not None:
        probs = torch.softmax(logits, dim=-1)
        top_probs, top_idx = torch.topk(probs, k=min(TRE_MAX_CANDIDATES, logits.shape[-1]), dim=-1)
        cumsum = torch.cumsum(top_probs, dim=-1)
        keep = torch.cat([torch.zeros_like(cumsum[..., :1]), cumsum[..., :-1]], dim=-1) < top_p
        keep[..., 0] = True
        count = keep.sum(-1)
        sel = torch.where(keep, torch.gather(logits, -1, top_idx), torch.full_like(top_probs, -1e10, dtype=logits.dtype))
        pd = torch.softmax(sel, dim=-1)
        ent = (torch.logsumexp(sel, dim=-1) - torch.sum(pd * sel, dim=-1)) * (math.log(logits.shape[-1]) / torch.log(count.float().clamp(min=2.0)))
        return torch.where(count == 1, torch.zeros_like(ent), ent)
    pd = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - torch.sum(pd * logits, dim=-1)


def realistic_logits(n: int, vocab: int, seed: int) -> torch.Tensor:
    """bf16 logits shaped like an instruct LLM's: a Gaussian tail, eight leading tokens, top logit 15-35.

    The top token's lead over the second (0-10 nats) and over the tail's logsumexp (0-14 nats) are drawn per row,
    so the rows cover confident tokens (most of a response), forks between two or three candidates, and flat
    positions.
    """
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, vocab, generator=g) * 2.0
    tail_lse = math.log(vocab) + 2.0  # logsumexp of N(0, 2^2) logits over the vocabulary
    top = tail_lse + torch.rand(n, 1, generator=g) * 14.0
    lead = torch.rand(n, 1, generator=g) * 10.0
    gaps = -torch.log(torch.rand(n, 6, generator=g)) / 1.5  # Exp(1.5) steps below the second token
    heads = torch.cat([top, top - lead, top - lead - torch.cumsum(gaps, dim=-1)], dim=-1)
    cols = torch.stack([torch.randperm(vocab, generator=g)[:8] for _ in range(n)])
    z.scatter_(-1, cols, heads)
    shift = torch.rand(n, 1, generator=g) * 20.0 + 15.0 - z.max(-1, keepdim=True).values  # top logit in [15, 35]
    return (z + shift).to(torch.bfloat16)


def value_and_grad(fn, leaf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fn(leaf) per row and d(sum of rows)/d leaf, both as float64."""
    x = leaf.detach().clone().requires_grad_(True)
    out = fn(x)
    out.sum().backward()
    return out.detach().double(), x.grad.double()


def measure(logits: torch.Tensor) -> list[tuple[str, str, float, float, float, float]]:
    """Rows (mode, path, max |dH|, share |dH| > 1e-2, relative grad error, relative error of the mean H)."""
    modes = {"full": {}, f"tre_k (K={TRE_TOP_K})": {"top_k": TRE_TOP_K}, f"tre_p (p={TRE_TOP_P})": {"top_p": TRE_TOP_P}}
    # The fp32 paths get an fp32 leaf holding the bf16 values, so that their gradients are compared before the
    # final rounding to bf16 that the actor's gradient gets on every path alike.
    leaves = {"ref": logits.double(), "fp32": logits.float(), "bf16": logits}
    rows = []
    for mode, kw in modes.items():
        ref_v, ref_g = value_and_grad(lambda x: authors_entropy(x, **kw), leaves["ref"])
        paths = {
            "kernel (fp32)": (lambda x: trust_region_entropy(x, **kw), "fp32"),
            "authors, actor (CUDA autocast)": (lambda x: authors_entropy(x, **kw), "fp32"),
            "authors, eager bf16": (lambda x: authors_entropy(x, **kw), "bf16"),
        }
        for path, (fn, leaf) in paths.items():
            v, grad = value_and_grad(fn, leaves[leaf])
            dv = (v - ref_v).abs()
            rel_g = ((grad - ref_g).abs().max() / ref_g.abs().max().clamp(min=1e-300)).item()
            rows.append((mode, path, dv.max().item(), (dv > 1e-2).double().mean().item(), rel_g,
                         abs((v.mean() - ref_v.mean()) / ref_v.mean()).item()))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logits = realistic_logits(args.positions, VOCAB, args.seed)
    p_max = torch.softmax(logits.double(), -1).max(-1).values
    print(f"{args.positions} positions x V={VOCAB}, bf16; p_max quartiles "
          + " / ".join(f"{q:.3f}" for q in torch.quantile(p_max, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()))
    print(f"{'mode':<16}{'path':<33}{'max |dH|':>10}{'rows >1e-2':>12}{'grad rel err':>14}{'bonus rel err':>15}")
    for mode, path, dmax, share, rel_g, dbonus in measure(logits):
        print(f"{mode:<16}{path:<33}{dmax:>10.2e}{share:>12.1%}{rel_g:>14.2e}{dbonus:>15.2e}")


if __name__ == "__main__":
    main()
