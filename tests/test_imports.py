"""common.imports: transformers loads a model class without importing scikit-learn and SciPy."""
from __future__ import annotations

import subprocess
import sys

LOADS_A_MODEL_CLASS = ("from transformers import Qwen2ForCausalLM\nimport transformers.generation.utils\nimport sys\n"
                       "print(sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'scipy'}))\n")


def _loaded(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return eval(out.stdout.strip().splitlines()[-1])


def test_transformers_imports_scikit_learn_and_scipy_unless_told_they_are_absent():
    assert _loaded(LOADS_A_MODEL_CLASS) == ["scipy", "sklearn"]  # installed (by lm-eval), so transformers imports them
    skip = "from common.imports import skip_unused_optional_imports\nskip_unused_optional_imports()\n"
    assert _loaded(skip + LOADS_A_MODEL_CLASS) == []
