#!/usr/bin/env bash
# Create or update .venv with the pinned CPU stack and this project (editable). Idempotent: when nothing it
# depends on changed since the last successful run, it returns in well under a second.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="$root/.venv"
py="${PYTHON:-python3}"
stamp="$venv/.tre-setup-stamp"
want="$(cat pyproject.toml workflow/setup.sh | sha256sum | cut -d' ' -f1)"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
quiet() {  # pip's noise about absent local mirrors hides real errors; keep everything else
  "$@" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
  return "${PIPESTATUS[0]}"
}
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
quiet "${pip[@]}" --upgrade "pip>=24"
# torch first and on its own: the local CPU wheel. Letting pip pick torch pulls gigabytes of CUDA packages.
quiet "${pip[@]}" "torch==2.13.0"
quiet "${pip[@]}" -e ".[test]"
"$venv/bin/python" -m pip check --disable-pip-version-check
PYTHONWARNINGS=ignore "$venv/bin/python" - <<'PY'
import torch, verl, trl, lm_eval, math_verify, hydra  # noqa: F401  a real import, not only pip's metadata
from verl.trainer import main_ppo  # noqa: F401
import tre, baselines  # noqa: F401
assert hydra.__version__.startswith("1.3"), f"hydra-core {hydra.__version__}: verl needs 1.3 (antlr 4.9.3)"
PY
echo "$want" > "$stamp"
echo "setup: .venv ready ($(PYTHONWARNINGS=ignore "$venv/bin/python" -c 'import torch, verl; print(f"torch {torch.__version__}, verl {verl.__version__}")'))"
