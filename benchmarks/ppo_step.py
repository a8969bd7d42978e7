"""Seconds per PPO actor update and peak memory for each method, side by side, on the tiny model (CPU or GPU).

    python benchmarks/ppo_step.py [--methods ppo,entropy,kl_cov,forking_tokens,tre_k,tre_p] [--vocab 8192|full]
                                  [--updates 20] [--responses 8] [--prompt-len 128] [--response-len 32]
                                  [--full-steps RUN_DIR ...] [--json OUT]

What is timed: verl 0.4.1's own `DataParallelPPOActor.update_policy` (forward, loss, backward, optimizer step over
the micro-batches), patched by `tre.backend.plugin` exactly as in a training run, with the trust-region
diagnostics on for every method. That is the only part of a PPO step the methods change; rollout, critic and
old-log-prob passes are identical across methods. Timing: every method's actor lives in one process and the
updates are interleaved round-robin, so load drifts on a shared machine hit every method alike; min and median
are reported. Peak memory: each method alone in a fresh process.
`--full-steps` adds the median `timing_s/step` of finished runs (metrics.jsonl), to express the update-time
difference as a share of a whole PPO step.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common.argtypes import Parser, int_at_least
from tre.backend.rundir import RunDir
from tre.grid import PAPER_METHODS


def _actor(model_dir: str, method: str, micro: int, device: str):
    """A verl DataParallelPPOActor for `method` (config from verl's yaml + our method overrides)."""
    import torch
    import verl.trainer
    import yaml
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM
    from verl.workers.actor.dp_actor import DataParallelPPOActor

    import tre.backend.plugin  # noqa: F401  (what external_lib does in a run)
    from baselines import get_method
    from tre.backend.profiles import method_overrides

    config = OmegaConf.load(Path(verl.trainer.__file__).parent / "config" / "ppo_trainer.yaml").actor_rollout_ref.actor
    OmegaConf.set_struct(config, False)
    for key, value in method_overrides(get_method(method)):
        OmegaConf.update(config, key.removeprefix("actor_rollout_ref.actor."), yaml.safe_load(value), force_add=True)
    OmegaConf.update(config, "tre_diagnostics", True, force_add=True)
    config.ppo_micro_batch_size_per_gpu, config.use_torch_compile = micro, False
    module = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa").to(device)
    return DataParallelPPOActor(config, module, torch.optim.AdamW(module.parameters(), lr=1e-6))


def _batch(vocab: int, responses: int, prompt_len: int, response_len: int, device: str, seed: int = 0) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    seq = prompt_len + response_len
    input_ids = torch.randint(0, vocab, (responses, seq), generator=g)
    attention = torch.ones(responses, seq, dtype=torch.long)
    for i in range(responses):
        cut = (i * 3) % max(1, response_len // 2)  # ragged response lengths (right padding)
        if cut:
            attention[i, seq - cut:] = 0
    position_ids = torch.clamp(torch.cumsum(attention, -1) - 1, min=0)
    return {k: v.to(device) for k, v in {
        "input_ids": input_ids, "attention_mask": attention, "position_ids": position_ids,
        "responses": input_ids[:, prompt_len:], "advantages": torch.randn(responses, response_len, generator=g),
        "old_log_probs": torch.randn(responses, response_len, generator=g).clamp(max=0) - 5.0}.items()}


def _setup(device: str) -> None:
    import torch.distributed as dist

    from tre.backend.cpu import _shim_torch_cpu

    if device == "cpu":
        _shim_torch_cpu()  # verl's memory logger calls torch.cuda-only functions on torch.cpu
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(20000 + os.getpid() % 20000))
        dist.init_process_group("gloo" if device == "cpu" else "nccl", rank=0, world_size=1)


def _prepared(model_dir: str, method: str, responses: int, prompt_len: int, response_len: int, micro: int, device: str):
    from verl import DataProto

    actor = _actor(model_dir, method, micro, device)
    actor.config.ppo_mini_batch_size = responses
    vocab = actor.actor_module.config.vocab_size
    data = DataProto.from_dict(tensors=_batch(vocab, responses, prompt_len, response_len, device), meta_info={"temperature": 1.0})
    return actor, data, vocab


def _timed_update(actor, data, device: str) -> float:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    actor.update_policy(data)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def measure_times(model_dir: str, methods: list[str], updates: int, responses: int, prompt_len: int, response_len: int, micro: int) -> dict:
    """All methods' actors in one process, updates interleaved round-robin (A B C .. A B C ..): seconds per update."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    _setup(device)
    torch.manual_seed(0)
    prepared = {m: _prepared(model_dir, m, responses, prompt_len, response_len, micro, device) for m in methods}
    for actor, data, _ in prepared.values():
        actor.update_policy(data)  # warm-up
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(updates):
        for m in methods:
            times[m].append(_timed_update(prepared[m][0], prepared[m][1], device))
    return {"times_s": times, "vocab": next(iter(prepared.values()))[2], "device": device}


def measure_memory(model_dir: str, method: str, responses: int, prompt_len: int, response_len: int, micro: int) -> dict:
    """Peak memory of one method alone in this process (CUDA: max allocated; CPU: peak RSS) over 2 updates."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    _setup(device)
    torch.manual_seed(0)
    actor, data, _ = _prepared(model_dir, method, responses, prompt_len, response_len, micro, device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        actor.update_policy(data)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_mem_gib": peak / 2**30, "peak_kind": "cuda max_memory_allocated" if device == "cuda" else "process peak RSS"}


def _model(vocab: str, cache: Path) -> Path:
    """The project's tiny Qwen2 policy (miniature.tiny_model) with the given vocabulary, built once."""
    from miniature.tiny_model import build

    out = cache / f"tiny_policy_{vocab}"
    if not (out / "config.json").exists():
        build(out, vocab_size=None if vocab == "full" else int(vocab), seed=0, kind="policy")
    return out


def _full_step_seconds(run_dirs: list[str]) -> dict[str, float]:
    """Median timing_s/step (steps >= 2, past warm-up) of finished runs, by method."""
    out = {}
    for run_dir in run_dirs:
        run = RunDir(run_dir)
        steps = [r["timing_s/step"] for r in run.metrics() if r["step"] >= 2 and "timing_s/step" in r]
        if steps:
            out[run.config["method"]] = statistics.median(steps)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the timing and memory children and print the side-by-side table."""
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(PAPER_METHODS))
    p.add_argument("--vocab", default="8192", help="BPE ranks of the tiny model's tokenizer, or 'full' (151,936 logits, Qwen2.5's)")
    p.add_argument("--updates", type=int_at_least(1), default=20, help="timed updates per method (interleaved)")
    p.add_argument("--responses", type=int_at_least(1), default=8)
    p.add_argument("--micro", type=int_at_least(1), default=4)
    p.add_argument("--prompt-len", type=int_at_least(1), default=128)
    p.add_argument("--response-len", type=int_at_least(1), default=32)
    p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "tre_bench"))
    p.add_argument("--full-steps", nargs="*", default=[], metavar="RUN_DIR")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    shape = (args.responses, args.prompt_len, args.response_len, args.micro)
    if args.child:
        kind, model, methods = args.child.split("::")
        out = (measure_times(model, methods.split(","), args.updates, *shape) if kind == "time"
               else measure_memory(model, methods, *shape))
        print(json.dumps(out))
        return 0
    methods = args.methods.split(",")
    from baselines import METHODS

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        print(f"error: --methods: must be names from {', '.join(METHODS)}, got {unknown}", file=sys.stderr)
        return 2
    model = _model(args.vocab, Path(args.cache))
    child = [sys.executable, __file__, "--updates", str(args.updates), "--responses", str(args.responses), "--micro",
             str(args.micro), "--prompt-len", str(args.prompt_len), "--response-len", str(args.response_len)]

    def run_child(spec: str) -> dict:
        proc = subprocess.run([*child, "--child", spec], capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"benchmark child {spec} failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    timing = run_child(f"time::{model}::{','.join(methods)}")
    memory = {m: run_child(f"mem::{model}::{m}") for m in methods}
    base = methods[0]
    full = _full_step_seconds(args.full_steps)
    base_min, base_med = min(timing["times_s"][base]), statistics.median(timing["times_s"][base])
    table = []
    for m in methods:
        t = timing["times_s"][m]
        row = {"method": m, "update_min_s": round(min(t), 4), "update_median_s": round(statistics.median(t), 4),
               f"overhead_min_vs_{base}": round(min(t) / base_min - 1, 4),
               f"overhead_median_vs_{base}": round(statistics.median(t) / base_med - 1, 4),
               "peak_mem_gib": round(memory[m]["peak_mem_gib"], 3)}
        if base in full:
            row["share_of_full_step"] = round((statistics.median(t) - base_med) / full[base], 4)
        table.append(row)
    print(f"{timing['device']}: tiny Qwen2 policy, {timing['vocab']} logits; {args.responses} responses x ({args.prompt_len} prompt + "
          f"{args.response_len} response) tokens, micro-batch {args.micro}; {args.updates} interleaved updates per method; "
          f"peak = {memory[base]['peak_kind']}" + (f"; full PPO step ({base}, median) {full[base]:.2f} s" if base in full else ""))
    keys = list(table[0])
    print("  ".join(f"{k:>24}" if i else f"{k:<16}" for i, k in enumerate(keys)))
    for row in table:
        print("  ".join(f"{row[k]!s:>24}" if i else f"{row[k]!s:<16}" for i, k in enumerate(keys)))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "table": table, "timing": timing, "memory": memory,
                                               "full_step_s": full}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
