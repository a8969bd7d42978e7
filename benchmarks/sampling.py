"""transformers' top-p filter against common.sampling's (the same output), side by side in one process.

    python benchmarks/sampling.py [--rows 32,126] [--vocab 8214,151936] [--scales 3,10] [--top-p 0.7] [--reps 20]
                                  [--threads 1]

For each shape and logit scale (rows of N(0, scale^2) logits: 3 is a flat policy, 10 a peaked one), the median time
of one call of each filter, their ratio, and the share of rows common.sampling decides without transformers' sort.
Every output is compared with transformers' and the script exits 1 if one differs. The miniature's validation calls
the filter with 126 x 8,214 scores (one thread), its evaluation with 32 x 8,214.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from transformers.generation.logits_process import TopPLogitsWarper

from common import sampling
from common.argtypes import Parser, int_at_least, open_fraction

TRANSFORMERS = getattr(TopPLogitsWarper.__call__, "__wrapped__", TopPLogitsWarper.__call__)


def _ints(text: str) -> list[int]:
    return [int_at_least(1)(t) for t in text.split(",")]


def _scales(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",")]
    except ValueError:
        values = []
    if not values or not all(v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"must be comma-separated numbers > 0, got {text!r}")
    return values


def _median_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = Parser(prog="python benchmarks/sampling.py", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=_ints, default=[32, 126], help="rows per call (default 32,126)")
    parser.add_argument("--vocab", type=_ints, default=[8214, 151936], help="vocabulary sizes (default 8214,151936)")
    parser.add_argument("--scales", type=_scales, default=[3.0, 10.0], help="logit standard deviations (default 3,10)")
    parser.add_argument("--top-p", type=open_fraction, default=0.7, help="the nucleus (default 0.7, the validation's)")
    parser.add_argument("--reps", type=int_at_least(1), default=20, help="timed calls per filter (default 20)")
    parser.add_argument("--threads", type=int_at_least(1), default=1, help="torch threads (default 1, as a run's step)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warper = TopPLogitsWarper(args.top_p)
    print(f"top-p {args.top_p}, {args.threads} thread(s), median of {args.reps} calls")
    print(f"{'rows':>6}{'vocab':>8}{'scale':>7}{'transformers ms':>17}{'ours ms':>9}{'ratio':>7}{'decided':>9}")
    differs = False
    for vocab in args.vocab:
        for rows in args.rows:
            for scale in args.scales:
                scores = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(0)) * scale
                handed = []

                def ours(scores=scores, handed=handed):
                    handed.clear()
                    return sampling.top_p_filter(scores, args.top_p, warper.filter_value, 1,
                                                 lambda r: handed.append(r.shape[0]) or TRANSFORMERS(warper, None, r))

                ref = TRANSFORMERS(warper, None, scores)
                differs |= not torch.equal(ours(), ref)
                t_ref = _median_ms(lambda: TRANSFORMERS(warper, None, scores), args.reps)
                t_ours = _median_ms(ours, args.reps)
                decided = 1 - sum(handed) / rows
                print(f"{rows:>6}{vocab:>8}{scale:>7g}{t_ref:>17.2f}{t_ours:>9.2f}{t_ours / t_ref:>7.3f}{decided:>9.2f}")
    if differs:
        print("error: an output differs from transformers'", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
