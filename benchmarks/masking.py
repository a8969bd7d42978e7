"""transformers' vmapped SDPA causal mask against common.masking's (the same mask), side by side in one process.

    python benchmarks/masking.py [--batch 32] [--prompt 142] [--new-tokens 40] [--vocab 8192] [--reps 5] [--threads 1]

Two lines: one mask call while decoding (one query over prompt + 20 keys, left padding), and a whole sampled
`generate()` of a tiny Qwen2 of the miniature's shape (hidden 64, 2 layers, the miniature's vocabulary) on
left-padded prompts, as a Countdown rollout (32 x 142-token prompts, 40 new tokens, T = 1). For each: the median
time with transformers' mask and with ours, and their ratio. The masks and the sampled tokens are compared, and the
script exits 1 if one differs.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import timeit

import torch
from transformers.masking_utils import AttentionMaskInterface, causal_mask_function

from common import masking
from common.argtypes import Parser, int_at_least


def _median_ms(fn, reps: int) -> float:
    fn()  # warm-up
    return statistics.median(timeit.repeat(fn, number=1, repeat=reps)) * 1e3


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = Parser(prog="python benchmarks/masking.py", description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int_at_least(1), default=32, help="sequences (default 32, a tiny rollout)")
    parser.add_argument("--prompt", type=int_at_least(2), default=142, help="padded prompt length (default 142, Countdown's)")
    parser.add_argument("--new-tokens", type=int_at_least(1), default=40, help="tokens generated (default 40)")
    parser.add_argument("--vocab", type=int_at_least(16), default=8192, help="tiny model vocabulary (default 8192)")
    parser.add_argument("--reps", type=int_at_least(1), default=5, help="timed generate() calls per mask (default 5)")
    parser.add_argument("--threads", type=int_at_least(1), default=1, help="torch threads (default 1, as a run's step)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    from miniature.tiny_model import build

    g = torch.Generator().manual_seed(0)
    starts = torch.randint(0, args.prompt // 2, (args.batch,), generator=g)  # left padding, as verl's rollout
    attention_mask = (torch.arange(args.prompt).unsqueeze(0) >= starts.unsqueeze(1)).long()
    masking.install()
    ours = AttentionMaskInterface._global_mapping["sdpa"]
    transformers_own = ours.__wrapped__

    kv = args.prompt + 20
    call = dict(batch_size=args.batch, cache_position=torch.tensor([kv - 1]), kv_length=kv, kv_offset=0,
                mask_function=causal_mask_function,
                attention_mask=torch.cat([attention_mask, torch.ones(args.batch, 20, dtype=torch.long)], 1).bool())
    differs = not torch.equal(transformers_own(**call), ours(**call))
    rows = [("one mask call (decoding)", _median_ms(lambda: transformers_own(**call), 50 * args.reps),
             _median_ms(lambda: ours(**call), 50 * args.reps))]

    with tempfile.TemporaryDirectory() as tmp:
        model = AutoModelForCausalLM.from_pretrained(build(f"{tmp}/m", vocab_size=args.vocab, seed=0, kind="policy"),
                                                     attn_implementation="sdpa").eval()
        ids = torch.randint(0, args.vocab, (args.batch, args.prompt), generator=g) * attention_mask

        def generate():
            torch.manual_seed(0)
            with torch.no_grad():
                return model.generate(input_ids=ids, attention_mask=attention_mask, do_sample=True, top_p=1.0, top_k=0,
                                      temperature=1.0, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                      pad_token_id=0)

        times = {}
        tokens = {}
        for name, fn in (("transformers", transformers_own), ("ours", ours)):
            AttentionMaskInterface.register("sdpa", fn)
            tokens[name] = generate()
            times[name] = _median_ms(generate, args.reps)
        differs |= not torch.equal(tokens["transformers"], tokens["ours"])
        rows.append((f"generate {args.batch} x {args.prompt} + {args.new_tokens}", times["transformers"], times["ours"]))

    print(f"{args.threads} thread(s); median of {args.reps} generate() calls, {50 * args.reps} mask calls")
    print(f"{'':<34}{'transformers ms':>16}{'ours ms':>10}{'ratio':>7}")
    for name, ref, fast in rows:
        print(f"{name:<34}{ref:>16.2f}{fast:>10.2f}{fast / ref:>7.3f}")
    if differs:
        print("error: a mask or the sampled tokens differ from transformers'", file=sys.stderr)
        return 1
    print("masks and sampled tokens: identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
