"""TRE kernel benchmark: forward+backward time, extra peak memory and error, side by side in one process.

Compared at the Qwen2.5 vocabulary (V = 151936 unless --vocab):
  full          verl's full-vocabulary entropy (softmax, logsumexp, sum p*z), autograd
  authors_k     the authors' TRE-K (topk on logits, restricted entropy), autograd
  authors_p     the authors' TRE-P (full softmax, top-256 on probs, nucleus, renormalise), autograd
  ours_k        tre.trust_region_entropy(top_k=2)
  ours_p        tre.trust_region_entropy(top_p=0.99)
  ours_p_chunk  the same with chunk_size (default 256)
  floor         one read of the logits (a row max) and one N x V gradient written on the pages the kernel uses:
                what every method must do at least
Time: the best of --reps runs, the methods interleaved so that load on a shared machine hits all alike.
Extra peak: the allocator's peak during forward+backward above the logits gradient every method must produce
(N x V in the logits dtype), forward and backward measured apart; CPU: summed from the profiler's allocation
events, CUDA: torch.cuda.max_memory_allocated; the median of --mem-reps measurements. On CPU the kernel writes
a large gradient on huge pages of its own mapping, which the profiler does not see: the gradient is subtracted
only where the profiler saw it allocated.
--thp puts every torch allocation on huge pages too (PyTorch's THP_MEM_ALLOC_ENABLE=1), the authors' included:
the comparison with the page-fault cost taken out of both sides.
val err / grad err: max |difference| from the method's semantics in float64 (the authors' code run on the same
logits upcast to float64) over the first --check-rows positions, gradient of the sum.
Targets (issue 16): ours_p time <= 0.5x authors_p; ours_p extra peak <= 0.25x authors_p; ours_k time <= 0.15x
full; ours_p_chunk extra peak flat in the number of positions (--flat).

    python benchmarks/kernel.py [--positions 256,1024] [--dtypes float32] [--device cpu|cuda] [--flat 1024,4096]
    python benchmarks/kernel.py --device cuda     # GPU: N = 4096,16384,65536 in float32 and bfloat16
    python benchmarks/kernel.py --thp             # CPU: every method's allocations on huge pages
"""

from __future__ import annotations

import os
import sys

if "--thp" in sys.argv[1:]:  # read by torch's CPU allocator once, at its first allocation: set before importing torch
    os.environ["THP_MEM_ALLOC_ENABLE"] = "1"

# The CPU memory measurement runs the profiler, and kineto logs every profiler start and stop as a `USDT:` line
# on stderr at a level above ERROR: only level 6 keeps the benchmark's output to its table.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")

import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Callable  # noqa: E402

import torch  # noqa: E402

from common.argtypes import Parser, int_at_least  # noqa: E402
from tre import trust_region_entropy  # noqa: E402
from tre.kernel import _zeros as kernel_zeros  # noqa: E402
from tre.grid import TRE_MAX_CANDIDATES, TRE_TOP_K, TRE_TOP_P  # noqa: E402

VOCAB = 151936
METHODS = ("full", "authors_k", "authors_p", "ours_k", "ours_p", "ours_p_chunk", "floor")
# the float64 semantics each method is checked against (floor computes nothing)
REFERENCE_OF = {"full": "full", "authors_k": "authors_k", "ours_k": "authors_k",
                "authors_p": "authors_p", "ours_p": "authors_p", "ours_p_chunk": "authors_p"}


def full_entropy(logits: torch.Tensor) -> torch.Tensor:
    """verl's entropy_from_logits."""
    pd = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - torch.sum(pd * logits, dim=-1)


def authors_tre_k(logits: torch.Tensor, k: int = 2) -> torch.Tensor:
    """The authors' TRE-K (K >= 2): entropy of the top-K logits times ln V / ln K."""
    top = torch.topk(logits, k, dim=-1).values
    return full_entropy(top) * (math.log(logits.shape[-1]) / math.log(k))


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """fp32 as under the actor's autocast, but float64 stays float64 (the reference)."""
    return t if t.dtype == torch.float64 else t.float()


def authors_tre_p(logits: torch.Tensor, p: float = TRE_TOP_P, cap: int = TRE_MAX_CANDIDATES) -> torch.Tensor:
    """The authors' TRE-P: softmax over the full vocabulary, top-cap on probabilities, nucleus, renormalise."""
    probs = torch.softmax(_at_least_fp32(logits), dim=-1)
    sorted_probs, sorted_idx = torch.topk(probs, min(cap, logits.shape[-1]), dim=-1)
    keep = (torch.cumsum(sorted_probs, dim=-1) - sorted_probs) < p
    keep[..., 0] = True
    n = keep.sum(-1)
    cand = torch.where(keep, torch.gather(logits, -1, sorted_idx), torch.tensor(-1e10, dtype=logits.dtype, device=logits.device))
    ent = full_entropy(_at_least_fp32(cand)) * (math.log(logits.shape[-1]) / torch.log(n.clamp(min=2).float()))
    return torch.where(n == 1, torch.zeros_like(ent), ent)


def candidates(chunk: int) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The entropy functions compared, by name (floor is handled apart: it computes no entropy)."""
    return {
        "full": full_entropy,
        "authors_k": authors_tre_k,
        "authors_p": authors_tre_p,
        "ours_k": lambda z: trust_region_entropy(z, top_k=TRE_TOP_K),
        "ours_p": lambda z: trust_region_entropy(z, top_p=TRE_TOP_P),
        "ours_p_chunk": lambda z: trust_region_entropy(z, top_p=TRE_TOP_P, chunk_size=chunk),
    }


def make_logits(n: int, vocab: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    """LM-like logits: a Zipf-ish peaked head over Gaussian noise, varying sharpness per position.

    Generated on `device` in row blocks, so that 64k positions need neither a host copy nor a float32 double.
    """
    g = torch.Generator(device=device).manual_seed(0)
    out = torch.empty(n, vocab, device=device, dtype=dtype)
    log_rank = torch.log(torch.arange(1, vocab + 1, dtype=torch.float32, device=device))
    step = max(1, (1 << 26) // vocab)
    for s in range(0, n, step):
        k = min(step, n - s)
        z = torch.randn(k, vocab, generator=g, device=device)
        z += (-log_rank * (0.5 + 2.5 * torch.rand(k, 1, generator=g, device=device)))[:, torch.randperm(vocab, generator=g, device=device)]
        out[s : s + k] = z
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def fwd_bwd(fn, base: torch.Tensor) -> None:
    """One forward+backward of fn on a fresh leaf; `floor` reads the logits once and writes one gradient."""
    if fn is None:
        base.amax(-1), kernel_zeros(base.shape, base.dtype, base.device).fill_(0)
        return
    x = base.detach().requires_grad_(True)
    fn(x).sum().backward()


def time_all(fns: dict, base: torch.Tensor, reps: int) -> dict[str, float]:
    """Best-of-`reps` seconds of forward+backward per method, methods interleaved so load hits all alike."""
    for fn in fns.values():
        fwd_bwd(fn, base)  # warm-up
    best = {name: math.inf for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            _sync(base.device)
            t = time.perf_counter()
            fwd_bwd(fn, base)
            _sync(base.device)
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def _phase_peak(run: Callable[[], object], device: torch.device) -> tuple[int, int, object]:
    """(peak bytes allocated above the starting level while `run` executes, its largest allocation, its result)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        out = run()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start, math.inf, out  # the gradient is always the allocator's
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = run()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns())
    current = peak = largest = 0
    for e in events:
        current += e.nbytes()
        peak, largest = max(peak, current), max(largest, e.nbytes())
    return peak, largest, out


def extra_peak_bytes(fn, base: torch.Tensor) -> int:
    """Extra peak memory of forward+backward: max(forward peak, backward peak - the logits gradient).

    Phases are measured apart because a forward temporary (the authors' full softmax) can be freed before the
    gradient is allocated; one combined peak would hide it behind the gradient every method must produce. The
    gradient is subtracted where the allocator was seen allocating it (the kernel's own huge-page mapping is not).
    """
    x = base.detach().requires_grad_(True)
    fwd, _, out = _phase_peak(lambda: fn(x).sum(), base.device)
    bwd, largest, _ = _phase_peak(lambda: out.backward(), base.device)
    grad = base.numel() * base.element_size()
    return max(fwd, bwd - grad if largest >= grad else bwd)


def median_extra_peak(fn, base: torch.Tensor, reps: int) -> float:
    """Median over `reps` measurements of extra_peak_bytes, so one disturbed measurement cannot move the figure."""
    return statistics.median(extra_peak_bytes(fn, base) for _ in range(reps))


def errors(fn, ref: tuple[torch.Tensor, torch.Tensor], rows: torch.Tensor) -> tuple[float, float]:
    """Max |value - reference| and max |gradient - reference gradient| of fn on `rows`."""
    x = rows.detach().requires_grad_(True)
    out = fn(x)
    out.sum().backward()
    return (out.detach().double() - ref[0]).abs().max().item(), (x.grad.double() - ref[1]).abs().max().item()


def reference(fn, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Values and gradient of the sum of fn on `rows` upcast to float64."""
    x = rows.detach().double().requires_grad_(True)
    out = fn(x)
    out.sum().backward()
    return out.detach(), x.grad


def _guard(run: Callable[[], object]):
    """run(), or None where the device ran out of memory (64k positions of fp32 logits fill most of a GPU)."""
    try:
        return run()
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None


def _fmt(value, spec: str, width: int) -> str:
    return f"{'OOM':>{width}}" if value is None else f"{value:>{width}{spec}}"


def _ratio(a, b) -> str:
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.3f}"


def _ints(text: str, flag: str, ap: Parser) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x]
    except ValueError:
        values = [0]
    if any(v < 1 for v in values):
        ap.error(f"{flag}: comma-separated positive integers, e.g. 256,1024; got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    ap = Parser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--positions", help="position counts for the side-by-side table (default: 256,1024 on CPU, 4096,16384,65536 on CUDA)")
    ap.add_argument("--dtypes", help="logits dtypes, comma-separated from float32,bfloat16 (default: float32 on CPU, both on CUDA)")
    ap.add_argument("--flat", help="position counts for the chunked memory-flatness check, '' to skip (default: 1024,4096 on CPU, 4096,16384 on CUDA)")
    ap.add_argument("--vocab", type=int_at_least(1), default=VOCAB, help=f"vocabulary size V (default {VOCAB}, Qwen2.5's)")
    ap.add_argument("--chunk", type=int_at_least(1), default=256, help="chunk_size of ours_p_chunk")
    ap.add_argument("--reps", type=int_at_least(1), default=5, help="timed repetitions per method (best is kept)")
    ap.add_argument("--mem-reps", type=int_at_least(1), default=3, help="extra-peak measurements per method (median is kept)")
    ap.add_argument("--check-rows", type=int_at_least(1), default=256, help="positions compared with the float64 reference")
    ap.add_argument("--thp", action="store_true", help="put every torch CPU allocation on huge pages (THP_MEM_ALLOC_ENABLE=1), the authors' included")
    args = ap.parse_args(argv)
    if args.thp and os.environ.get("THP_MEM_ALLOC_ENABLE") != "1":
        ap.error("--thp: give it on the command line (torch reads THP_MEM_ALLOC_ENABLE at its first allocation)")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device: cuda is not available here; use --device cpu")
    gpu = args.device == "cuda"
    positions = _ints(args.positions or ("4096,16384,65536" if gpu else "256,1024"), "--positions", ap)
    flat = _ints(args.flat if args.flat is not None else ("4096,16384" if gpu else "1024,4096"), "--flat", ap)
    dtypes = (args.dtypes or ("float32,bfloat16" if gpu else "float32")).split(",")
    if not dtypes or any(d not in ("float32", "bfloat16") for d in dtypes):
        ap.error(f"--dtypes: comma-separated from float32,bfloat16; got {args.dtypes!r}")
    for flag, value in (("--vocab", args.vocab), ("--chunk", args.chunk), ("--reps", args.reps), ("--mem-reps", args.mem_reps), ("--check-rows", args.check_rows)):
        if value < 1:
            ap.error(f"{flag}: must be a positive integer, got {value}")
    if args.vocab <= TRE_MAX_CANDIDATES:
        ap.error(f"--vocab: must be at least {TRE_MAX_CANDIDATES + 1} (the TRE-P cap of {TRE_MAX_CANDIDATES} plus one), got {args.vocab}")

    fns = candidates(args.chunk)
    device_name = torch.cuda.get_device_name() if gpu else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    print(f"V={args.vocab} device={device_name} torch={torch.__version__}" + (" allocator=thp" if args.thp else ""))
    print(f"{'dtype':<9} {'N':>6} {'method':<13} {'fwd+bwd ms':>11} {'extra MiB':>10} {'val err':>9} {'grad err':>9}", flush=True)
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        for n in positions:
            base = make_logits(n, args.vocab, args.device, dtype)
            check = base[: args.check_rows]
            refs = {name: reference(fns[name], check) for name in set(REFERENCE_OF.values())}
            timed = {name: fns.get(name) for name in METHODS}
            t = {name: _guard(lambda: time_all({name: fn}, base, args.reps)[name]) for name, fn in timed.items()} if gpu \
                else time_all(timed, base, args.reps)  # CPU: interleaved; CUDA: one by one, so one OOM spares the rest
            m, err = {}, {}
            for name in METHODS:
                fn = fns.get(name)
                m[name] = None if fn is None else _guard(lambda: median_extra_peak(fn, base, args.mem_reps))
                err[name] = (None, None) if fn is None else errors(fn, refs[REFERENCE_OF[name]], check)
            for name in METHODS:
                ms = None if t[name] is None else t[name] * 1e3
                mib = "" if name == "floor" else _fmt(None if m[name] is None else m[name] / 2**20, ".1f", 10)
                ve, ge = ("", "") if err[name][0] is None else (f"{err[name][0]:.1e}", f"{err[name][1]:.1e}")
                print(f"{dtype_name:<9} {n:>6} {name:<13} {_fmt(ms, '.1f', 11)} {mib:>10} {ve:>9} {ge:>9}", flush=True)
            print(f"{dtype_name:<9} {n:>6} ratios: ours_p/authors_p time {_ratio(t['ours_p'], t['authors_p'])} (target <= 0.5), "
                  f"extra mem {_ratio(m['ours_p'], m['authors_p'])} (target <= 0.25); "
                  f"ours_k/full time {_ratio(t['ours_k'], t['full'])} (target <= 0.15); "
                  f"ours_p/floor time {_ratio(t['ours_p'], t['floor'])}; ours_p_chunk/ours_p time {_ratio(t['ours_p_chunk'], t['ours_p'])}", flush=True)
            del base, check, refs
    if flat:
        peaks = []
        for n in flat:
            base = make_logits(n, args.vocab, args.device, getattr(torch, dtypes[0]))
            peaks.append(_guard(lambda: median_extra_peak(fns["ours_p_chunk"], base, args.mem_reps)))
            print(f"{dtypes[0]:<9} chunked extra peak at N={n}: {_fmt(None if peaks[-1] is None else peaks[-1] / 2**20, '.1f', 0)} MiB", flush=True)
            del base
        print(f"{dtypes[0]:<9} chunked extra peak N={flat[-1]} / N={flat[0]}: {_ratio(peaks[-1], peaks[0])} (target ~1: flat)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
