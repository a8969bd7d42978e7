"""Project plumbing: README quick start <-> CI, environment.yml, pyproject extras, idempotent setup."""

import re
import subprocess
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1]
    block = re.search(r"```[a-z]*\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_quick_start_is_two_commands_main_job_then_tests():
    main, tests = quick_start_commands()
    assert main.startswith("bash workflow/setup.sh && ") and "snakemake" in main
    assert tests.startswith("bash workflow/setup.sh && ") and "pytest" in tests


def test_ci_runs_exactly_the_readme_test_command():
    ci_lines = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci_lines[-1] == quick_start_commands()[1]


def test_environment_yml_is_python311_cuda_torch_and_delegates_to_extras():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    assert any(line.startswith("torch==") for line in pip)
    assert any("download.pytorch.org/whl/cu" in line for line in pip)
    assert "-e .[gpu,test]" in pip
    # no pin list repeated: every other pip line is an index option
    assert all(line.startswith(("torch==", "-e ", "--")) for line in pip)


def test_pyproject_pins_and_extras():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = meta["dependencies"]
    for pin in ("verl==0.4.1", "trl==1.16.0", "lm-eval==0.4.13", "setuptools<81", "transformers>=4.56.2,<5"):
        assert pin in deps
    assert "math-verify[antlr4_9_3]" in deps and not any(d.startswith("lm-eval[") for d in deps)
    assert "verl[vllm]==0.4.1" in meta["optional-dependencies"]["gpu"]
    assert any(d.startswith("pytest") for d in meta["optional-dependencies"]["test"])


def test_setup_is_idempotent_and_fast_path_prints_nothing():
    # the suite runs inside the .venv that workflow/setup.sh built, so its stamp is current
    done = subprocess.run(["bash", str(ROOT / "workflow/setup.sh")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""
