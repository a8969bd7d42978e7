"""Every CLI's contract on bad input: nonzero exit, one stderr line naming the input, no traceback, nothing lost.

Each case runs the CLI's main(argv) in-process inside a sandbox of small files (relative paths), and checks that
every file that was there before is byte-identical afterwards. `tre.backend train` cases run with Ray replaced by
a tripwire: they must fail before Ray starts.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
MATH_SOURCE = "DigitalLearningGmbH/MATH-lighteval"


def write_verl_parquet(path: Path, rows: int = 3) -> None:
    """A small MATH parquet in verl's RLHFDataset schema (what `evaluation.tasks prepare` writes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([
        {"data_source": MATH_SOURCE, "prompt": [{"role": "user", "content": f"What is {i} + 1?"}], "ability": "math",
         "reward_model": {"style": "rule", "ground_truth": str(i + 1)},
         "extra_info": {"split": "train", "index": i, "solution": f"${i} + 1 = \\boxed{{{i + 1}}}$."}}
        for i in range(rows)]), path)


def build_sandbox(root: Path) -> None:
    """The files every case may point at: good data, corrupt files, run dirs, archives, precious outputs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_verl_parquet(root / "data" / "train.parquet")
    write_verl_parquet(root / "data" / "test.parquet")
    (root / "model").mkdir()
    (root / "model" / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    bad = root / "bad"
    bad.mkdir()
    (bad / "garbage.parquet").write_bytes(b"this is not parquet\n" * 10)
    (bad / "empty.parquet").write_bytes(b"")
    (bad / "numbers.json").write_text("[1, 2, 3]")
    (bad / "numbers.jsonl").write_text("1\n2\n3\n4\n")
    (bad / "broken.json").write_text("{not json")
    (bad / "file.txt").write_text("a file\n")
    pq.write_table(pa.table({"x": [1, 2]}), bad / "nocols.parquet")
    pq.write_table(pa.table({"data_source": [MATH_SOURCE], "prompt": ["a bare string"],
                             "reward_model": [{"style": "rule", "ground_truth": "1"}]}), bad / "strprompt.parquet")
    (bad / "model").mkdir()
    (bad / "model" / "config.json").write_text("{not json")
    # run directories for `evaluation evaluate`: a checkpoint whose model files are missing, and broken configs
    for name, config in (("good", None), ("brokencfg", "{oops"), ("listcfg", "[1]")):
        run = root / "runs" / name
        hf = run / "checkpoints" / "global_step_1" / "actor" / "huggingface"
        hf.mkdir(parents=True)
        (hf / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
        (run / "config.json").write_text(config or json.dumps({
            "task": "math", "size": "tiny", "method": "ppo", "seed": 0,
            "resolved": {"data": {"val_files": str(bad / "garbage.parquet"), "train_files": str(root / "data" / "train.parquet"),
                                  "max_response_length": 4},
                         "actor_rollout_ref": {"model": {"path": str(root / "model")}}}}))
    # outputs written earlier, which a failing command must leave alone
    (root / "precious").mkdir()
    (root / "precious" / "keep.txt").write_text("precious\n")
    write_verl_parquet(root / "prev" / "train.parquet", rows=5)
    write_verl_parquet(root / "prev" / "test.parquet", rows=2)
    # results archives: a malformed metrics.parquet; tables missing columns; an empty table
    res = root / "results"
    res.mkdir()
    (res / "runs.csv").write_text("task,size,method,seed,val_metric\nmath,tiny,ppo,0,v\n")
    (res / "metrics.csv").write_text("task,size,method,seed,step,metric,value\nmath,tiny,ppo,0,1,v,0.5\n")
    (res / "metrics.parquet").write_bytes(b"PAR1garbagePAR1")
    nocol = root / "results_nocol"
    nocol.mkdir()
    (nocol / "runs.csv").write_text("task,size,method\nmath,tiny,ppo\n")
    (nocol / "metrics.csv").write_text("task,size\nmath,tiny\n")
    (nocol / "eval.csv").write_text("task\nmath\n")
    (root / "results_empty").mkdir()
    (root / "results_empty" / "runs.csv").write_text("")
    run = root / "rruns" / "math" / "tiny" / "ppo" / "seed0"  # one collectable run
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"task": "math", "size": "tiny", "method": "ppo", "seed": 0}))
    (run / "metrics.jsonl").write_text('{"step": 1, "val-core/math/reward/mean@1": 0.5}\n')


def collect_archive(root: Path, name: str) -> None:
    """A valid archive collected from the sandbox's one run."""
    from figures.collect import collect

    collect(root / "rruns", root / name)


def archive_with_broken(name: str, text: str) -> Callable[[Path], None]:
    """An archive collected from the run, then one of its files broken and the run grown by a step: collecting again
    would rewrite the other tables, and must not, since this file makes the archive unusable."""

    def setup(root: Path) -> None:
        collect_archive(root, "archive")
        (root / "archive" / name).write_text(text)
        with (root / "rruns" / "math" / "tiny" / "ppo" / "seed0" / "metrics.jsonl").open("a") as f:
            f.write('{"step": 2, "val-core/math/reward/mean@1": 0.75}\n')

    return setup


def _broken_entropy_run(root: Path) -> None:
    """runs/math/tiny/{entropy,tre_p}/seed0 with checkpoints, the entropy run's config.json not JSON."""
    for method in ("entropy", "tre_p"):
        hf = root / "runs" / "math" / "tiny" / method / "seed0" / "checkpoints" / "global_step_1" / "actor" / "huggingface"
        hf.mkdir(parents=True)
        (hf / "config.json").write_text("{}")
    (root / "runs" / "math" / "tiny" / "entropy" / "seed0" / "config.json").write_text("{oops")


def train_argv(*extra: str, data: str = "data", model: str = "model", run_dir: str = "run") -> list[str]:
    return ["train", "--task", "math", "--size", "tiny", "--method", "ppo", "--model-path", model, "--data-dir", data,
            "--run-dir", run_dir, *extra]


@dataclass(frozen=True)
class Case:
    """One bad command: the CLI's module, its argv, what its error line must contain, and extra setup."""

    id: str
    module: str
    argv: list[str]
    names: str  # the input the error line must name
    setup: Optional[Callable[[Path], None]] = None
    # argv's {model} is a real tiny policy, and runs/real a run whose checkpoint it is (the old code gets further)
    needs_model: bool = field(default=False)
    needs_cpu_only: bool = field(default=False)  # the input is bad only on a machine without a GPU


def _copy(src: str, dst: str) -> Callable[[Path], None]:
    return lambda root: (root / dst).write_bytes((root / src).read_bytes())


def _replace_with_dir(rel: str) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        (root / rel).unlink()
        (root / rel).mkdir()
    return setup


EV = ("evaluation.__main__", "evaluate")
CASES = [
    # tre.backend train: corrupt inputs fail before Ray starts (the old code failed deep inside a Ray worker)
    Case("train-corrupt-train-parquet", "tre.backend.__main__", train_argv(), "data.train_files",
         _copy("bad/garbage.parquet", "data/train.parquet")),
    Case("train-empty-train-parquet", "tre.backend.__main__", train_argv(), "data.train_files",
         _copy("bad/empty.parquet", "data/train.parquet")),
    Case("train-train-parquet-is-a-directory", "tre.backend.__main__", train_argv(), "data.train_files",
         _replace_with_dir("data/train.parquet")),
    Case("train-val-parquet-without-prompt", "tre.backend.__main__", train_argv(), "data.val_files",
         _copy("bad/nocols.parquet", "data/test.parquet")),
    Case("train-resume-corrupt-metrics", "tre.backend.__main__", train_argv(), "run/metrics.jsonl",
         lambda root: (root / "run").mkdir() or (root / "run" / "metrics.jsonl").write_text('{"step": 0}\nnot json\n')),
    Case("train-model-dir-without-config", "tre.backend.__main__", train_argv(model="bad"), "model_path"),
    Case("train-run-dir-is-a-file", "tre.backend.__main__", train_argv(run_dir="bad/file.txt"), "run_dir"),
    # evaluation evaluate
    Case("evaluate-corrupt-data", EV[0], [EV[1], "runs/good", "--data", "bad/garbage.parquet"], "bad/garbage.parquet"),
    Case("evaluate-empty-data", EV[0], [EV[1], "runs/good", "--data", "bad/empty.parquet"], "bad/empty.parquet"),
    Case("evaluate-corrupt-val-files", EV[0], [EV[1], "runs/good"], "garbage.parquet"),
    Case("evaluate-prompt-not-messages", EV[0], [EV[1], "runs/good", "--data", "bad/strprompt.parquet"], "prompt"),
    Case("evaluate-broken-config-json", EV[0], [EV[1], "runs/brokencfg", "--data", "data/test.parquet"], "config.json"),
    Case("evaluate-config-json-a-list", EV[0], [EV[1], "runs/listcfg", "--data", "data/test.parquet"], "config.json"),
    Case("evaluate-device-foo", EV[0], [EV[1], "runs/real", "--device", "foo"], "--device", needs_model=True),
    Case("evaluate-device-cuda-without-gpu", EV[0], [EV[1], "runs/real", "--device", "cuda"], "--device",
         needs_model=True, needs_cpu_only=True),
    Case("evaluate-output-dir-is-a-file", EV[0], [EV[1], "runs/real"], "eval", needs_model=True,
         setup=lambda root: (root / "runs" / "real").mkdir(parents=True) or (root / "runs" / "real" / "eval").write_text("a file\n")),
    Case("evaluate-checkpoint-without-weights", EV[0], [EV[1], "runs/good", "--data", "data/test.parquet"], "global_step_1"),
    Case("evaluate-unknown-flag", EV[0], [EV[1], "runs/good", "--bogus"], "--bogus"),
    # evaluation.tasks prepare
    Case("prepare-json-list-of-numbers", "evaluation.tasks.__main__",
         ["prepare", "math", "--source", "bad/numbers.json", "--train-size", "1", "--test-size", "1", "--out", "out"], "numbers.json"),
    Case("prepare-jsonl-of-numbers", "evaluation.tasks.__main__",
         ["prepare", "math", "--source", "bad/numbers.jsonl", "--train-size", "1", "--test-size", "1", "--out", "out"], "numbers.jsonl"),
    Case("prepare-broken-json", "evaluation.tasks.__main__",
         ["prepare", "math", "--source", "bad/broken.json", "--train-size", "1", "--test-size", "1", "--out", "out"], "broken.json"),
    Case("prepare-test-size-0-into-existing", "evaluation.tasks.__main__",
         ["prepare", "math", "--generate", "--train-size", "3", "--test-size", "0", "--out", "prev"], "--test-size"),
    Case("prepare-out-is-a-file", "evaluation.tasks.__main__",
         ["prepare", "math", "--generate", "--train-size", "3", "--test-size", "2", "--out", "bad/file.txt"], "--out"),
    # miniature.warm_start
    Case("warm-start-out-existing-dir", "miniature.warm_start",
         ["--model", "{model}", "--data", "data/train.parquet", "--out", "precious", "--steps", "1", "--batch-size", "2"],
         "--out", needs_model=True),
    Case("warm-start-out-cwd", "miniature.warm_start",
         ["--model", "{model}", "--data", "data/train.parquet", "--out", ".", "--steps", "1", "--batch-size", "2"],
         "--out", needs_model=True),
    Case("warm-start-corrupt-data", "miniature.warm_start",
         ["--model", "model", "--data", "bad/garbage.parquet", "--out", "ws", "--steps", "1"], "garbage.parquet"),
    Case("warm-start-broken-model-config", "miniature.warm_start",
         ["--model", "bad/model", "--data", "data/train.parquet", "--out", "ws", "--steps", "1"], "bad/model"),
    Case("warm-start-rows-without-demonstrations", "miniature.warm_start",
         ["--model", "model", "--data", "bad/strprompt.parquet", "--out", "ws", "--steps", "1"], "strprompt.parquet"),
    Case("warm-start-out-is-a-file", "miniature.warm_start",
         ["--model", "model", "--data", "data/train.parquet", "--out", "bad/file.txt", "--steps", "1"], "--out"),
    # miniature.tiny_model
    Case("tiny-model-out-is-a-file", "miniature.tiny_model", ["--out", "bad/file.txt", "--vocab-size", "256"], "--out"),
    # evaluation.reward_model train
    Case("rm-train-broken-json", "evaluation.reward_model.__main__",
         ["train", "--base", "model", "--data", "bad/broken.json", "--out", "rm"], "broken.json"),
    Case("rm-train-base-without-weights", "evaluation.reward_model.__main__",
         ["train", "--base", "{model}-noweights", "--data", "prefs.jsonl", "--out", "rm", "--max-steps", "1"], "--base",
         lambda root: (root / "prefs.jsonl").write_text("".join(json.dumps(
             {"chosen": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "good"}],
              "rejected": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "bad"}]}) + "\n"
             for i in range(8))), needs_model=True),
    Case("rm-train-out-is-a-file", "evaluation.reward_model.__main__",
         ["train", "--base", "model", "--data", "data/train.parquet", "--out", "bad/file.txt"], "--out"),
    # figures
    Case("figures-malformed-metrics-parquet", "figures.__main__", ["curves", "--results", "results", "--out", "figs"],
         "metrics.parquet"),
    Case("figures-collect-into-archive-missing-column", "figures.__main__", ["collect", "rruns", "--results", "results_nocol"],
         "runs.csv"),
    Case("figures-collect-into-archive-with-bad-eval-table", "figures.__main__",
         ["collect", "rruns", "--results", "archive"], "eval.csv", archive_with_broken("eval.csv", "task\nmath\n")),
    Case("figures-collect-into-archive-with-broken-provenance", "figures.__main__",
         ["collect", "rruns", "--results", "archive"], "provenance.json", archive_with_broken("provenance.json", "{oops")),
    Case("figures-collect-into-empty-table", "figures.__main__", ["collect", "rruns", "--results", "results_empty"], "runs.csv"),
    Case("figures-table-from-empty-table", "figures.__main__", ["table_final", "--results", "results_empty", "--out", "t"],
         "runs.csv"),
    Case("figures-out-is-a-file", "figures.__main__", ["table_final", "--results", "results_ok", "--out", "bad/file.txt"],
         "--out", lambda root: collect_archive(root, "results_ok")),
    Case("figures-collect-results-is-a-file", "figures.__main__", ["collect", "rruns", "--results", "bad/file.txt"], "--results"),
    Case("figures-dists-prompt-index-out-of-range", "figures.__main__",
         ["dists", "--base", "model", "--entropy", "model", "--tre", "model", "--prompt-file", "data/test.parquet",
          "--prompt-index", "99", "--results", "figs"], "--prompt-index"),
    Case("figures-dists-runs-broken-config", "figures.__main__", ["dists", "--runs", "runs", "--task", "math", "--size", "tiny",
         "--results", "figs"], "config.json", lambda root: _broken_entropy_run(root)),
    Case("figures-dists-keep-not-a-number", "figures.__main__", ["dists", "--keep", "abc"], "--keep"),
    # the workflow's launcher
    Case("launcher-resources-against-the-schema", "workflow.launcher.cli",
         ["run", "--name", "x", "--log-dir", "logs", "--resources", '{"nodes": 0}', "--", "true"], "resources.nodes"),
    Case("launcher-status-without-a-job", "workflow.launcher.cli", ["status", "--log-dir", "logs"], "--log-dir"),
]


def snapshot(root: Path) -> dict[str, str]:
    """SHA-256 of every file under root."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory) -> Path:
    """A real tiny policy, outside the sandbox (with it the old warm start trains, then deletes --out), and next to it
    `<policy>-noweights`: its config and tokenizer without the weights."""
    import shutil

    from miniature.tiny_model import build

    policy = build(tmp_path_factory.mktemp("tiny") / "policy", vocab_size=256, seed=0, kind="policy", hidden_size=16,
                   layers=1, heads=2, kv_heads=1)
    shutil.copytree(policy, f"{policy}-noweights", ignore=shutil.ignore_patterns("*.safetensors"))
    return policy


@pytest.fixture
def ray_tripwire(monkeypatch):
    """Ray's session replaced by an error: a `train` case that reaches it failed too late."""
    import tre.backend.cpu

    def started(*args, **kwargs):
        raise AssertionError("Ray was started: the bad input was not detected before the expensive work")

    monkeypatch.setattr(tre.backend.cpu, "ray_session", started)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_loses_nothing(case: Case, tmp_path, monkeypatch, capsys, request):
    if case.needs_cpu_only:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    root = tmp_path / "sandbox"
    root.mkdir()
    build_sandbox(root)
    if case.setup:
        case.setup(root)
    argv = case.argv
    if case.needs_model:
        model = request.getfixturevalue("tiny_policy")
        argv = [a.replace("{model}", str(model)) for a in argv]
        real = root / "runs" / "real"
        (real / "checkpoints" / "global_step_1" / "actor").mkdir(parents=True)
        (real / "checkpoints" / "global_step_1" / "actor" / "huggingface").symlink_to(model)
        (real / "config.json").write_text(json.dumps({
            "task": "math", "size": "tiny", "method": "ppo", "seed": 0,
            "resolved": {"data": {"val_files": str(root / "data" / "test.parquet"), "max_response_length": 2}}}))
    if case.module.startswith("tre.backend"):
        request.getfixturevalue("ray_tripwire")
    monkeypatch.chdir(root)
    before = snapshot(root)
    capsys.readouterr()
    main = importlib.import_module(case.module).main
    raised = None
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    except Exception as exc:  # a traceback is what the contract forbids
        raised = f"{case.module} raised {type(exc).__name__}: {exc}"
    err = capsys.readouterr().err
    after = snapshot(root) if root.is_dir() else {}
    changed = sorted(k for k in before if after.get(k) != before[k])
    lines = [line for line in err.splitlines() if line.strip()]
    assert changed == [], f"files changed or lost: {changed}" + (f"; and {raised}" if raised else "")
    assert raised is None, raised
    assert rc not in (0, None), f"exit code {rc} for bad input; stderr: {err!r}"
    assert len(lines) == 1, f"stderr must be one line, got {len(lines)}: {err!r}"
    assert "Traceback" not in err
    assert case.names in lines[0], f"the error line does not name {case.names!r}: {lines[0]!r}"


def test_prepare_keeps_an_existing_pair_when_a_split_is_empty(tmp_path):
    """The library call behind the CLI: a bad split writes neither file (the old code replaced train.parquet first)."""
    from evaluation.tasks import math_lighteval

    out = tmp_path / "data"
    write_verl_parquet(out / "train.parquet", rows=5)
    write_verl_parquet(out / "test.parquet", rows=2)
    before = snapshot(out)
    with pytest.raises(ValueError, match="test-size: must be >= 1"):
        math_lighteval.prepare(out, generated=True, train_size=3, test_size=0)
    assert snapshot(out) == before


@pytest.mark.parametrize("argv, names", [
    (["-m", "evaluation.tasks", "prepare", "math", "--source", "bad/numbers.json", "--train-size", "1", "--test-size", "1",
      "--out", "out"], "numbers.json"),
    (["-m", "figures", "curves", "--results", "results", "--out", "figs"], "metrics.parquet"),
    ([str(REPO / "benchmarks" / "figures.py"), "--repeat", "0"], "--repeat"),
    ([str(REPO / "benchmarks" / "kernel.py"), "--positions", "abc"], "--positions"),
    ([str(REPO / "benchmarks" / "sampling.py"), "--scales", "3,abc"], "--scales"),
    ([str(REPO / "benchmarks" / "masking.py"), "--prompt", "1"], "--prompt"),
], ids=["evaluation.tasks", "figures", "benchmarks-figures", "benchmarks-kernel", "benchmarks-sampling",
        "benchmarks-masking"])
def test_the_real_entry_point_prints_one_line(argv, names, tmp_path):
    """The command as a user runs it: one stderr line, nonzero exit (the in-process cases cover the rest)."""
    build_sandbox(tmp_path)
    proc = subprocess.run([sys.executable, *argv], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO))}, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and len(lines) == 1 and names in lines[0], proc.stderr
