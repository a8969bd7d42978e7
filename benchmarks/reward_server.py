"""Benchmark: reward-server throughput (pairs/s) at batch 1 vs batched requests, side by side in one process.

    python benchmarks/reward_server.py [--model DIR] [--pairs 256] [--batch 64] [--max-batch 16] [--json OUT]
    python benchmarks/reward_server.py --long-mib 20 [--model DIR]

--long-mib N instead starts `python -m evaluation.reward_model serve` as a child process and posts one pair whose
response is an N MiB string, then the same pair cut to 64k characters, printing each request's seconds and the
server's peak RSS (VmHWM) after each; run it with PYTHONPATH at two checkouts to compare them.

Without --model it builds the tiny 8k-vocab random reward model in a temporary directory. The server runs under
uvicorn in a thread on a free loopback port; the client posts the same pairs one per request, then in requests of
--batch pairs, and prints both rates and their ratio.
"""

import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from common.argtypes import Parser

WORDS = ("the model answers clearly and kindly with useful steps examples and a short summary of each idea "
         "so that readers can follow along easily without prior knowledge").split()


def make_pairs(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """n HH-like (prompt, response) pairs: ~20-word prompts, ~80-word responses."""
    rng = random.Random(seed)
    prompts = [f"Question {i}: " + " ".join(rng.choices(WORDS, k=20)) + "?" for i in range(n)]
    responses = [" ".join(rng.choices(WORDS, k=80)) + "." for _ in range(n)]
    return prompts, responses


def scorer_app(model: str, max_batch: int):
    """The reward server's app around `model` on the visible devices."""
    from evaluation.reward_model.server import Limits, RewardScorer, create_app, visible_devices

    return create_app(RewardScorer(model, visible_devices("auto"), max_batch=max_batch), Limits())


def rate(client: httpx.Client, url: str, prompts: list[str], responses: list[str], batch: int) -> float:
    """Pairs per second when posting the pairs in requests of `batch`."""
    started = time.perf_counter()
    for s in range(0, len(prompts), batch):
        resp = client.post(f"{url}/predict", json={"prompts": prompts[s : s + batch], "responses": responses[s : s + batch]})
        resp.raise_for_status()
    return len(prompts) / (time.perf_counter() - started)


def _vm(pid: int, field: str) -> float:
    """A /proc/PID/status memory field (VmHWM: peak RSS, VmRSS) in GiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024**2
    raise KeyError(field)


def long_string(model: str, mib: int, log_path: Path) -> dict:
    """Seconds and server peak RSS for one pair with an `mib` MiB response, then for that pair cut to 64k chars."""
    from evaluation.reward_model.lifecycle import ServerNotReady, running_server

    try:
        with running_server(model, log_path, args=["--log-level", "warning", "--max-body-mb", "64"],
                            ready_timeout_s=300) as running:
            pid = running.proc.pid
            text = ("All work and no play makes Jack a dull boy. " * (mib * 1024 * 1024 // 44 + 1))[: mib * 1024 * 1024]
            out = {"idle_rss_gib": round(_vm(pid, "VmRSS"), 3)}
            with httpx.Client(timeout=600) as client:
                for name, response in (("cut_64k", text[:65536]), (f"{mib}MiB", text), ("cut_64k_again", text[:65536])):
                    started = time.perf_counter()
                    reply = client.post(running.url, json={"prompts": ["Summarise this."], "responses": [response]})
                    reply.raise_for_status()
                    out[name] = {"seconds": round(time.perf_counter() - started, 3), "reward": reply.json()["rewards"][0],
                                 "peak_rss_gib": round(_vm(pid, "VmHWM"), 3)}
            return out
    except ServerNotReady as e:
        raise SystemExit(f"the server did not come up: {e}") from None


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print pairs/s."""
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="reward model directory (default: build the tiny one)")
    parser.add_argument("--pairs", type=int, default=128, help="pairs scored per measurement (default 128)")
    parser.add_argument("--batch", type=int, default=64, help="pairs per request in the batched run (default 64)")
    parser.add_argument("--max-batch", type=int, default=16, help="server micro-batch (default 16)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="alternating measurements per mode; the median is reported (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, as the server CLI)")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    parser.add_argument("--long-mib", type=int, default=None,
                        help="instead: time one pair with an N MiB response and the server's peak RSS")
    args = parser.parse_args(argv)
    for name in ("pairs", "batch", "max_batch", "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")

    if args.long_mib is not None:
        if not 1 <= args.long_mib <= 60:
            parser.error(f"--long-mib must be between 1 and 60 (the body limit is 64 MiB), got {args.long_mib}")
        with tempfile.TemporaryDirectory() as tmp:
            model = args.model
            if model is None:
                from miniature.tiny_model import build

                model = str(build(Path(tmp) / "rm", vocab_size=8192, seed=0, kind="reward"))
            result = long_string(model, args.long_mib, Path(tmp) / "serve.log")
        print(json.dumps(result, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        return 0

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from miniature.tiny_model import build

            model = str(build(Path(tmp) / "rm", vocab_size=8192, seed=0, kind="reward"))
        from evaluation.reward_model.server import serving_in_thread

        prompts, responses = make_pairs(args.pairs)
        with serving_in_thread(scorer_app(model, args.max_batch)) as url, httpx.Client(timeout=600) as client:
            rate(client, url, prompts[:8], responses[:8], 1)  # warm-up
            singles, batches = [], []
            for _ in range(args.repeats):  # alternate, so drifting load from other processes hits both modes alike
                singles.append(rate(client, url, prompts, responses, 1))
                batches.append(rate(client, url, prompts, responses, args.batch))
            health = client.get(f"{url}/health").json()

    single, batched = statistics.median(singles), statistics.median(batches)
    result = {"model": "tiny-8k (random)" if args.model is None else args.model, "devices": health["devices"],
              "torch_threads": torch.get_num_threads(), "pairs": args.pairs, "server_max_batch": args.max_batch,
              "batch1_pairs_per_s": round(single, 2), f"batch{args.batch}_pairs_per_s": round(batched, 2),
              "ratio": round(batched / single, 2), "repeats": args.repeats,
              "load_average_1min": round(os.getloadavg()[0], 2), "cpu_count": os.cpu_count()}
    print(f"reward server on {', '.join(health['devices'])} ({args.threads} torch threads): {args.pairs} pairs, "
          f"server micro-batch {args.max_batch}, median of {args.repeats}; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")
    print(f"  batch 1 : {single:8.1f} pairs/s")
    print(f"  batch {args.batch:<2}: {batched:8.1f} pairs/s")
    print(f"  ratio   : {batched / single:8.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
