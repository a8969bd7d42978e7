"""Checkpoint evaluation: sample with the authors' validation settings, score, pass@k / mean@n, lm-eval cross-check.

Writes <run>/eval/<step>/samples.jsonl (prompt, response, score) and <run>/eval/<step>/scores.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from common.argtypes import output_dir
from common.files import BadFile, atomic_write_text, read_parquet
from tre.backend.rundir import BASE_MODEL_FIELD, CONFIG, DATA_FIELDS, RunDir
from tre.grid import VALIDATION_TEMPERATURE, VALIDATION_TOP_P

NO_TOP_K = 0  # HF's "no top-k" (verl's -1): validation samples from the whole nucleus
LM_EVAL_TASK = "tre_math_local"  # ours: in-process, offline, on the run's own test split
MINERVA_TASK = "minerva_math500"  # the community's: lm-eval[math] in its own interpreter (antlr 4.11 breaks verl)
LM_EVAL_TASKS = (LM_EVAL_TASK, MINERVA_TASK)
LM_EVAL_DIR = Path(__file__).parent / "lm_eval_tasks"
LM_EVAL_PYTHON = Path(__file__).resolve().parent.parent / ".venv-lmeval" / "bin" / "python"  # setup.sh --lm-eval-math
_BUILD_LM_EVAL = "build .venv-lmeval with `bash workflow/setup.sh --lm-eval-math`"
# data_sources, responses, ground_truths, extra_infos -> one score per response
Scorer = Callable[[Sequence[str], Sequence[str], Sequence[Any], Sequence[Any]], list[float]]


class EvalError(ValueError):
    """Bad evaluation input (run dir, step, split, data); the message names the field and what is allowed."""


@dataclass(frozen=True)
class Example:
    """One evaluation prompt in verl's RLHFDataset schema."""

    messages: list[dict[str, str]]
    ground_truth: Any
    data_source: str
    extra_info: Any = None


# ------------------------------------------------------------------------------------------------ metrics (pure)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k) for c correct out of n samples."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # Product form of the binomial ratio: exact enough and never overflows for large n.
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def ks_for(n: int) -> list[int]:
    """The k reported for n samples: powers of two below n, and n itself."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def summarise(scores: Sequence[Sequence[float]], binary: bool, threshold: float = 1.0) -> dict[str, float]:
    """mean@n over all samples; for binary tasks also pass@k (a sample is correct when its score >= threshold)."""
    if not scores or any(len(s) != len(scores[0]) or not s for s in scores):
        raise ValueError("scores: need the same positive number of samples for every prompt")
    n = len(scores[0])
    out = {f"mean@{n}": math.fsum(math.fsum(s) for s in scores) / (n * len(scores))}
    if binary:
        for k in ks_for(n):
            out[f"pass@{k}"] = math.fsum(pass_at_k(n, sum(x >= threshold for x in s), k) for s in scores) / len(scores)
    return out


# ------------------------------------------------------------------------------------------------ inputs


def load_examples(path: Path, limit: Optional[int] = None) -> list[Example]:
    """Prompts, ground truths and data sources of a verl parquet (prompt, data_source, reward_model.ground_truth)."""
    try:
        rows = read_parquet(path, "data").to_pylist()
    except BadFile as exc:
        raise EvalError(str(exc)) from None
    out = []
    for i, row in enumerate(rows[:limit] if limit else rows):
        try:
            out.append(Example(list(row["prompt"]), row["reward_model"]["ground_truth"], row["data_source"], row.get("extra_info")))
        except (KeyError, TypeError):
            raise EvalError(f"data: row {i} of {path} lacks prompt / data_source / reward_model.ground_truth") from None
        if not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                   for m in out[-1].messages):
            raise EvalError(f"data: row {i} of {path}: prompt must be a list of {{role, content}} chat messages")
    if not out:
        raise EvalError(f"data: {path} has no rows")
    return out


def open_run(run_dir: Path) -> RunDir:
    """The run directory RUN_DIR with its config.json read; EvalError when it is not one."""
    run = RunDir(run_dir, what="RUN_DIR")
    if not (run.path / CONFIG).is_file():
        raise EvalError(f"RUN_DIR: {run_dir} is not a run directory (no config.json)")
    try:
        run.config
    except BadFile as exc:
        raise EvalError(str(exc)) from None
    return run


def resolve_model(run: RunDir, step: Optional[int]) -> tuple[int, str]:
    """(step, model dir): the given step's checkpoint (the last one by default); step 0 is the initial model."""
    steps = run.checkpoints()
    if step == 0:
        if not run.base_model:
            raise EvalError(f"--step: 0 needs {BASE_MODEL_FIELD} in {run.path}/config.json")
        return 0, str(run.base_model)
    if step is None:
        if not steps:
            raise EvalError(f"--step: {run.path}/checkpoints has no global_step_<N>/actor/huggingface; use --step 0 for the initial model")
        step = max(steps)
    if step not in steps:
        raise EvalError(f"--step: must be 0 or one of {', '.join(map(str, steps)) or '(no checkpoints)'}, got {step}")
    return step, str(steps[step])


def resolve_data(run: RunDir, split: str, data: Optional[Path]) -> Path:
    """The parquet to evaluate: --data, else the run's one data file of `split` (test: verl's val_files)."""
    if data is not None:
        return Path(data)
    if split not in DATA_FIELDS:
        raise EvalError(f"--split: must be one of {', '.join(DATA_FIELDS)}, got {split!r}")
    files = run.data_files(split)
    if len(files) != 1:
        raise EvalError(f"--data: the run's config names no single {DATA_FIELDS[split]}; pass --data PARQUET")
    return Path(files[0])


def default_scorer(task: str) -> Scorer:
    """The task's reward as verl computes it: evaluation.tasks.compute_score, or the HH reward-model batch scorer."""
    if task == "hh":
        from evaluation.tasks.hh import compute_score_batch

        return lambda ds, rs, gts, eis: list(compute_score_batch(list(ds), list(rs), list(gts), list(eis)))
    from evaluation.tasks import compute_score

    return lambda ds, rs, gts, eis: [float(compute_score(d, r, g, e)) for d, r, g, e in zip(ds, rs, gts, eis)]


# ------------------------------------------------------------------------------------------------ generation


def generate(model_dir: str, examples: Sequence[Example], n: int, max_new_tokens: int, *, seed: int = 0,
             batch_size: int = 8, device: str = "cpu") -> list[list[str]]:
    """n sampled responses per prompt (chat template + assistant header, T = 1.0, top-p 0.7, no top-k)."""
    from common.imports import skip_unused_optional_imports

    skip_unused_optional_imports()  # before transformers loads its generation code
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from common.masking import install as broadcast_sdpa_mask
    from common.sampling import install as exact_fast_top_p

    exact_fast_top_p()
    broadcast_sdpa_mask()
    try:
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
    except (OSError, ValueError, TypeError, KeyError) as exc:  # transformers' ways of saying "not a loadable model"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise EvalError(f"model: {model_dir} is not a loadable model directory ({type(exc).__name__}: {first[:200]})") from None
    tok.padding_side = "left"  # decoder-only batch generation continues from the right edge
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = model.to(device).eval()
    torch.manual_seed(seed)
    texts = [tok.apply_chat_template(e.messages, add_generation_prompt=True, tokenize=False) for e in examples]
    out: list[list[str]] = []
    for i in tqdm(range(0, len(texts), batch_size), desc="generate", unit="batch", disable=None):
        enc = tok(texts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        with torch.no_grad():
            gen = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], do_sample=True, temperature=VALIDATION_TEMPERATURE, top_p=VALIDATION_TOP_P, top_k=NO_TOP_K,
                                 max_new_tokens=max_new_tokens, num_return_sequences=n, pad_token_id=tok.pad_token_id)
        resp = tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        out += [resp[j * n : (j + 1) * n] for j in range(len(resp) // n)]
    return out


# ------------------------------------------------------------------------------------------------ lm-eval


def lm_eval_docs(examples: Sequence[Example]) -> list[dict[str, str]]:
    """MATH examples as tre_math_local docs: the bare problem (instruction stripped) and \\boxed{answer} as solution."""
    from evaluation.tasks.math_lighteval import INSTRUCTION

    docs = []
    for e in examples:
        problem = next(m["content"] for m in e.messages if m["role"] == "user").removesuffix(" " + INSTRUCTION)
        docs.append({"problem": problem, "solution": "\\boxed{" + str(e.ground_truth) + "}", "answer": str(e.ground_truth)})
    return docs


def run_lm_eval(model_dir: str, docs_path: Path, max_gen_toks: int, *, device: str = "cpu", batch_size: int = 8) -> dict[str, Any]:
    """lm-eval's harness on the tre_math_local task over docs_path (greedy, as minerva): its metrics and raw results."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml  # lm-eval is pinned (0.4.13); its YAML loader resolves !function

    cfg = load_yaml(LM_EVAL_DIR / f"{LM_EVAL_TASK}.yaml")
    cfg["dataset_kwargs"] = {"data_files": {"test": str(Path(docs_path).resolve())}}
    cfg["generation_kwargs"] = {**cfg["generation_kwargs"], "max_gen_toks": max_gen_toks}
    res = simple_evaluate(model="hf", model_args={"pretrained": model_dir, "device": device}, tasks=[cfg],
                          task_manager=TaskManager(include_path=str(LM_EVAL_DIR)), batch_size=batch_size,
                          random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
    found = res["results"][LM_EVAL_TASK]
    metrics = {m: float(found[f"{m},none"]) for m in ("exact_match", "math_verify")}
    return {"task": LM_EVAL_TASK, "harness": "lm-eval", "lm_eval_version": res.get("lm_eval_version"), "decoding": "greedy",
            "max_gen_toks": max_gen_toks, "n_docs": len(docs_path.read_text().splitlines()), "metrics": metrics}


def _lm_eval_package_dir(python: Path) -> Path:
    """Where `python` finds the lm_eval package (without importing its task modules)."""
    import subprocess

    probe = "import importlib.util as u; print(list(u.find_spec('lm_eval').submodule_search_locations)[0])"
    proc = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise EvalError(f"--lm-eval-python: {python} cannot import lm_eval; {_BUILD_LM_EVAL}")
    return Path(proc.stdout.strip())


def run_minerva(model_dir: str, out_dir: Path, *, python: Path = LM_EVAL_PYTHON, data: Optional[Path] = None,
                limit: Optional[int] = None, device: str = "cpu", batch_size: int = 8) -> dict[str, Any]:
    """lm-eval's own minerva_math500 (4-shot, its prompt, its graders) through its CLI in `python`.

    `data`: a local MATH-500 JSONL (problem, solution, answer, ...) instead of the hub's HuggingFaceH4/MATH-500, for
    offline clusters; the task is then lm-eval's minerva_math500 YAML included as is, with only the data replaced.
    The harness's log goes to <out_dir>/lm_eval/lm_eval.log, its results and samples under <out_dir>/lm_eval/.
    """
    import shutil
    import subprocess

    python = Path(python)
    work = Path(out_dir) / "lm_eval"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    task, extra = MINERVA_TASK, []
    if data is not None:
        data = Path(data).resolve()
        upstream = _lm_eval_package_dir(python) / "tasks" / "minerva_math" / f"{MINERVA_TASK}.yaml"
        task = f"{MINERVA_TASK}_local"
        (work / "tasks").mkdir()
        atomic_write_text(work / "tasks" / f"{task}.yaml", json.dumps({
            "include": str(upstream), "task": task, "dataset_path": "json", "dataset_name": None,
            "dataset_kwargs": {"data_files": {"test": str(data)}}}, indent=1) + "\n")  # JSON is YAML
        extra += ["--include_path", str(work / "tasks")]
    if limit is not None:
        extra += ["--limit", str(limit)]
    cmd = [str(python), "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={model_dir}", "--device", device,
           "--tasks", task, "--batch_size", str(batch_size), "--seed", "0", "--output_path", str(work / "results"),
           "--log_samples", *extra]
    log = work / "lm_eval.log"
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        last = next((line for line in reversed(log.read_text(errors="replace").splitlines()) if line.strip()), "")
        raise RuntimeError(f"lm-eval {task} exited {proc.returncode}: {last.strip()} (log: {log})")
    found = sorted((work / "results").rglob("results_*.json"))
    if not found:
        raise RuntimeError(f"lm-eval {task}: no results_*.json under {work / 'results'} (log: {log})")
    res = json.loads(found[-1].read_text())
    metrics = {m: float(res["results"][task][f"{m},none"]) for m in ("exact_match", "math_verify")}
    return {"task": task, "harness": "lm-eval", "lm_eval_version": res.get("lm_eval_version"), "python": str(python),
            "data": str(data) if data else "HuggingFaceH4/MATH-500", "num_fewshot": res.get("n-shot", {}).get(task),
            "n_docs": res.get("n-samples", {}).get(task, {}).get("effective"), "metrics": metrics,
            "results_file": str(found[-1])}


# ------------------------------------------------------------------------------------------------ the whole evaluation


def score_samples(examples: Sequence[Example], responses: Sequence[Sequence[str]], scorer: Scorer) -> list[list[float]]:
    """Scores of every response, scored in one batch (so the HH reward server sees one request stream)."""
    flat = [(e, r) for e, rs in zip(examples, responses) for r in rs]
    scores = scorer([e.data_source for e, _ in flat], [r for _, r in flat], [e.ground_truth for e, _ in flat],
                    [e.extra_info for e, _ in flat])
    if len(scores) != len(flat):
        raise ValueError(f"scorer: returned {len(scores)} scores for {len(flat)} responses")
    n = len(responses[0]) if responses else 0
    return [list(map(float, scores[i * n : (i + 1) * n])) for i in range(len(examples))]


def evaluate(run_dir: Path, *, step: Optional[int] = None, n: int = 1, split: str = "test", data: Optional[Path] = None,
             limit: Optional[int] = None, max_new_tokens: Optional[int] = None, batch_size: int = 8, seed: int = 0,
             device: str = "cpu", lm_eval: Optional[bool] = None, scorer: Optional[Scorer] = None,
             lm_eval_task: str = LM_EVAL_TASK, lm_eval_python: Optional[Path] = None,
             lm_eval_data: Optional[Path] = None) -> dict[str, Any]:
    """Evaluate one checkpoint of a run; writes eval/<step>/samples.jsonl and scores.json and returns the scores.

    The lm-eval cross-check (math) runs `lm_eval_task`: tre_math_local in-process on the run's own test split, or
    lm-eval's minerva_math500 in `lm_eval_python` (default .venv-lmeval) on MATH-500 (or `lm_eval_data`).
    """
    run_dir = Path(run_dir)
    if n < 1:
        raise EvalError(f"--n: must be >= 1, got {n}")
    if lm_eval_task not in LM_EVAL_TASKS:
        raise EvalError(f"--lm-eval-task: must be one of {', '.join(LM_EVAL_TASKS)}, got {lm_eval_task!r}")
    if lm_eval_task != MINERVA_TASK and (lm_eval_python is not None or lm_eval_data is not None):
        raise EvalError(f"--lm-eval-python/--lm-eval-data: only with --lm-eval-task {MINERVA_TASK}")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise EvalError(f"--device: {device} is not available on this machine (no CUDA GPU); use cpu")
        if ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
            raise EvalError(f"--device: must be cpu or cuda:0..{torch.cuda.device_count() - 1}, got {device}")
    run = open_run(run_dir)
    config = run.config
    task = config.get("task")
    run_lm_eval_check = lm_eval if lm_eval is not None else task == "math"
    if run_lm_eval_check and task != "math":
        raise EvalError(f"--lm-eval: the lm-eval cross-check is for task math, got {task!r}")
    lm_eval_python = Path(lm_eval_python or LM_EVAL_PYTHON)
    if run_lm_eval_check and lm_eval_task == MINERVA_TASK:  # checked before the sampling, not after it
        if not os.access(lm_eval_python, os.X_OK):
            raise EvalError(f"--lm-eval-python: {lm_eval_python} is not an executable interpreter; {_BUILD_LM_EVAL}")
        if lm_eval_data is not None and not Path(lm_eval_data).is_file():
            raise EvalError(f"--lm-eval-data: no such file {str(lm_eval_data)!r}")
    step, model_dir = resolve_model(run, step)
    data_path = resolve_data(run, split, data)
    examples = load_examples(data_path, limit)
    if max_new_tokens is None:
        max_new_tokens = run.max_response_length
        if max_new_tokens is None:
            from evaluation.tasks import get_task

            max_new_tokens = get_task(task).MAX_RESPONSE_LENGTH
    out_dir = run_dir / "eval" / str(step)
    try:  # checked before the sampling, not after it
        output_dir(str(out_dir))
    except argparse.ArgumentTypeError as exc:
        raise EvalError(f"RUN_DIR: the output {out_dir} {exc}") from None
    t0 = time.perf_counter()
    responses = generate(model_dir, examples, n, int(max_new_tokens), seed=seed, batch_size=batch_size, device=device)
    scores = score_samples(examples, responses, scorer or default_scorer(task))
    atomic_write_text(out_dir / "samples.jsonl", "".join(
        json.dumps({"index": i, "sample": j, "prompt": e.messages, "response": r, "score": s, "ground_truth": e.ground_truth},
                   ensure_ascii=False, default=str) + "\n"
        for i, (e, rs, ss) in enumerate(zip(examples, responses, scores)) for j, (r, s) in enumerate(zip(rs, ss))))
    result: dict[str, Any] = {
        "task": task, "size": config.get("size"), "method": config.get("method"), "seed": config.get("seed"),
        "step": step, "model": model_dir, "split": split, "data": str(data_path), "n": n, "num_prompts": len(examples),
        "sampling": {"temperature": VALIDATION_TEMPERATURE, "top_p": VALIDATION_TOP_P, "top_k": NO_TOP_K, "max_new_tokens": int(max_new_tokens), "seed": seed},
        "metrics": summarise(scores, binary=task != "hh"),
        "lm_eval": None,
    }
    if run_lm_eval_check:
        if lm_eval_task == MINERVA_TASK:
            result["lm_eval"] = run_minerva(model_dir, out_dir, python=lm_eval_python, data=lm_eval_data,
                                            limit=limit, device=device, batch_size=batch_size)
        else:
            docs = out_dir / "lm_eval_docs.jsonl"
            atomic_write_text(docs, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in lm_eval_docs(examples)))
            result["lm_eval"] = run_lm_eval(model_dir, docs, int(max_new_tokens), device=device, batch_size=batch_size)
    result["wall_time_s"] = round(time.perf_counter() - t0, 3)
    atomic_write_text(out_dir / "scores.json", json.dumps(result, indent=2, default=str) + "\n")
    return result
