"""TRE kernel benchmark: forward+backward time and extra peak memory, side by side in one process.

Compared at the Qwen2.5 vocabulary (V = 151936):
  full        verl's full-vocabulary entropy (softmax, logsumexp, sum p*z), autograd
  authors_p   a straightforward re-implementation of the authors' TRE-P (full softmax, top-256 on probs)
  authors_k   the authors' TRE-K (topk on logits, restricted entropy), autograd
  ours_k      tre.trust_region_entropy(top_k=2)
  ours_p      tre.trust_region_entropy(top_p=0.99)
  ours_p_chunk  the same with chunk_size (default 256)
"Extra peak" is the allocator's peak during forward+backward minus the logits gradient every method must
produce (N x V in the logits dtype), with forward and backward measured apart. CPU: from the profiler's
allocation events; CUDA: from torch.cuda.max_memory_allocated. Times are the best of --reps interleaved runs. Targets (issue 2): ours_p time <= authors_p and extra peak <= 0.25x authors_p;
ours_k time <= 0.15x full; ours_p_chunk extra peak flat from 1k to 8k positions.

    python benchmarks/kernel.py [--positions 256,1024] [--flat 1024,8192] [--device cpu|cuda] [--dtype float32]
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Callable

import torch

from evaluation.argtypes import Parser, int_at_least
from tre import trust_region_entropy

VOCAB = 151936


def full_entropy(logits: torch.Tensor) -> torch.Tensor:
    """verl's entropy_from_logits."""
    pd = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - torch.sum(pd * logits, dim=-1)


def authors_tre_k(logits: torch.Tensor, k: int = 2) -> torch.Tensor:
    """The authors' TRE-K (K >= 2): entropy of the top-K logits times ln V / ln K."""
    top = torch.topk(logits, k, dim=-1).values
    return full_entropy(top) * (math.log(logits.shape[-1]) / math.log(k))


def authors_tre_p(logits: torch.Tensor, p: float = 0.99, cap: int = 256) -> torch.Tensor:
    """The authors' TRE-P: softmax over the full vocabulary, top-256 on probabilities, nucleus, renormalise."""
    probs = torch.softmax(logits.float(), dim=-1)
    sorted_probs, sorted_idx = torch.topk(probs, min(cap, logits.shape[-1]), dim=-1)
    keep = (torch.cumsum(sorted_probs, dim=-1) - sorted_probs) < p
    keep[..., 0] = True
    n = keep.sum(-1)
    cand = torch.where(keep, torch.gather(logits, -1, sorted_idx), torch.tensor(-1e10, dtype=logits.dtype, device=logits.device))
    ent = full_entropy(cand.float()) * (math.log(logits.shape[-1]) / torch.log(n.clamp(min=2).float()))
    return torch.where(n == 1, torch.zeros_like(ent), ent)


def candidates(chunk: int) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    return {
        "full": full_entropy,
        "authors_k": authors_tre_k,
        "authors_p": authors_tre_p,
        "ours_k": lambda z: trust_region_entropy(z, top_k=2),
        "ours_p": lambda z: trust_region_entropy(z, top_p=0.99),
        "ours_p_chunk": lambda z: trust_region_entropy(z, top_p=0.99, chunk_size=chunk),
    }


def make_logits(n: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    """LM-like logits: a Zipf-ish peaked head over Gaussian noise, varying sharpness per position."""
    g = torch.Generator(device="cpu").manual_seed(0)
    z = torch.randn(n, VOCAB, generator=g)
    ranks = torch.arange(1, VOCAB + 1, dtype=torch.float32)
    z += (-torch.log(ranks) * (0.5 + 2.5 * torch.rand(n, 1, generator=g)))[:, torch.randperm(VOCAB, generator=g)]
    return z.to(device=device, dtype=dtype)


def fwd_bwd(fn, base: torch.Tensor) -> None:
    x = base.detach().requires_grad_(True)
    fn(x).sum().backward()


def time_all(fns: dict, base: torch.Tensor, reps: int) -> dict[str, float]:
    """Best-of-`reps` seconds of forward+backward per method, methods interleaved so load hits all alike."""
    for fn in fns.values():
        fwd_bwd(fn, base)  # warm-up
    best = {name: math.inf for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            if base.is_cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            fwd_bwd(fn, base)
            if base.is_cuda:
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def _phase_peak(run: Callable[[], object], device: torch.device) -> tuple[int, object]:
    """(peak bytes allocated above the starting level while `run` executes, its result)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        out = run()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start, out
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = run()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak, out


def extra_peak_bytes(fn, base: torch.Tensor) -> int:
    """Extra peak memory of forward+backward: max(forward peak, backward peak - the logits gradient).

    Phases are measured apart because a forward temporary (the authors' full softmax) can be freed before the
    gradient is allocated; one combined peak would hide it behind the gradient every method must produce.
    """
    x = base.detach().requires_grad_(True)
    fwd, out = _phase_peak(lambda: fn(x).sum(), base.device)
    bwd, _ = _phase_peak(lambda: out.backward(), base.device)
    return max(fwd, bwd - base.numel() * base.element_size())


def main(argv: list[str] | None = None) -> int:
    ap = Parser(description=__doc__.split("\n")[0])
    ap.add_argument("--positions", default="256,1024", help="position counts for the side-by-side table")
    ap.add_argument("--flat", default="1024,8192", help="position counts for the chunked memory-flatness check ('' to skip)")
    ap.add_argument("--chunk", type=int_at_least(1), default=256, help="chunk_size of ours_p_chunk")
    ap.add_argument("--reps", type=int_at_least(1), default=5, help="timed repetitions per method (best is kept)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args(argv)
    try:
        positions = [int(x) for x in args.positions.split(",") if x]
        flat = [int(x) for x in args.flat.split(",") if x]
    except ValueError:
        ap.error("--positions/--flat: comma-separated integers, e.g. 256,1024")
    dtype = getattr(torch, args.dtype)
    fns = candidates(args.chunk)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    print(f"V={VOCAB} dtype={args.dtype} device={device_name} torch={torch.__version__}")
    print(f"{'N':>6} {'method':<13} {'fwd+bwd ms':>11} {'extra MiB':>10}")
    for n in positions:
        base = make_logits(n, args.device, dtype)
        t = time_all(fns, base, args.reps)
        m = {name: extra_peak_bytes(fn, base) for name, fn in fns.items()}
        for name in fns:
            print(f"{n:>6} {name:<13} {t[name] * 1e3:>11.1f} {m[name] / 2**20:>10.1f}", flush=True)
        print(f"{n:>6} ratios: ours_p/authors_p time {t['ours_p'] / t['authors_p']:.3f} (target <= 1), "
              f"extra mem {m['ours_p'] / m['authors_p']:.3f} (target <= 0.25); "
              f"ours_k/full time {t['ours_k'] / t['full']:.3f} (target <= 0.15); "
              f"ours_k/authors_k time {t['ours_k'] / t['authors_k']:.3f}; ours_p_chunk/ours_p time {t['ours_p_chunk'] / t['ours_p']:.3f}")
        del base
    if flat:
        peaks = []
        for n in flat:
            base = make_logits(n, args.device, dtype)
            peaks.append(extra_peak_bytes(fns["ours_p_chunk"], base))
            print(f"chunked extra peak at N={n}: {peaks[-1] / 2**20:.1f} MiB", flush=True)
            del base
        print(f"chunked extra peak N={flat[-1]} / N={flat[0]}: {peaks[-1] / peaks[0]:.3f} (target ~1: flat)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
