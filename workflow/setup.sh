#!/usr/bin/env bash
# Create or update .venv with the pinned CPU stack and this project (editable). Idempotent: when nothing it
# depends on changed since the last successful run, it returns in well under a second.
#   --lm-eval-math   build .venv-lmeval instead: lm-eval[math] (antlr 4.11, which would break verl's hydra in .venv)
#                    for `python -m evaluation evaluate --lm-eval-task minerva_math500` (also next to a conda env)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-python3}"
lm_eval_math=0
for arg in "$@"; do
  case "$arg" in
    --lm-eval-math) lm_eval_math=1 ;;
    *) echo "setup.sh: unknown option $arg (allowed: --lm-eval-math)" >&2; exit 2 ;;
  esac
done
quiet() {  # pip's noise about absent local mirrors hides real errors; keep everything else
  "$@" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
  return "${PIPESTATUS[0]}"
}
fresh() {  # fresh VENV: true when VENV was built by this same setup.sh and pyproject.toml
  [ -x "$1/bin/python" ] && [ -f "$1/.tre-setup-stamp" ] && [ "$(cat "$1/.tre-setup-stamp")" = "$want" ]
}
want="$(cat pyproject.toml workflow/setup.sh | sha256sum | cut -d' ' -f1)"
stage() {  # one line per stage of a build, so a fresh machine's minutes of pip are not silent
  echo "setup: $*"
}
make_venv() {  # make_venv DIR PIP_ARGS...: the venv, torch, then PIP_ARGS, then pip's consistency check
  local name
  name="$(basename "$1")"
  if [ -x "$1/bin/python" ]; then stage "$name: updating (pyproject.toml or setup.sh changed)"; else
    stage "$name: creating the virtual environment"
    "$py" -m venv "$1"
  fi
  local pip=("$1/bin/python" -m pip install --disable-pip-version-check -q)
  stage "$name: pip"
  quiet "${pip[@]}" --upgrade "pip>=24"
  # torch first and on its own: the local CPU wheel. Letting pip pick torch pulls gigabytes of CUDA packages.
  stage "$name: torch 2.13.0 (CPU)"
  quiet "${pip[@]}" "torch==2.13.0"
  stage "$name: pip install ${*:2} (the longest stage: the pinned stack)"
  quiet "${pip[@]}" "${@:2}"
  stage "$name: pip check"
  "$1/bin/python" -m pip check --disable-pip-version-check
}

venv="$root/.venv"
if [ "$lm_eval_math" = 0 ] && ! fresh "$venv"; then
  make_venv "$venv" -e ".[test]"
  stage ".venv: import check (torch, verl, trl, lm_eval, math_verify, hydra, wandb, this project)"
  PYTHONWARNINGS=ignore "$venv/bin/python" - <<'PY'
import torch, verl, trl, lm_eval, math_verify, hydra, wandb  # noqa: F401  a real import, not only pip's metadata
from verl.trainer import main_ppo  # noqa: F401
import tre, baselines  # noqa: F401
assert hydra.__version__.startswith("1.3"), f"hydra-core {hydra.__version__}: verl needs 1.3 (antlr 4.9.3)"
PY
  echo "$want" > "$venv/.tre-setup-stamp"
  echo "setup: .venv ready ($(PYTHONWARNINGS=ignore "$venv/bin/python" -c 'import torch, verl; print(f"torch {torch.__version__}, verl {verl.__version__}")'))"
fi

lmeval="$root/.venv-lmeval"
if [ "$lm_eval_math" = 1 ] && ! fresh "$lmeval"; then
  make_venv "$lmeval" "lm-eval[hf,math]==0.4.13" "transformers>=4.56.2,<5"
  stage ".venv-lmeval: import check (lm_eval, math_verify, antlr 4.11)"
  PYTHONWARNINGS=ignore "$lmeval/bin/python" - <<'PY'
from importlib.metadata import version
import lm_eval, math_verify, torch, transformers  # noqa: F401
from sympy.parsing.latex import parse_latex
assert version("antlr4-python3-runtime").startswith("4.11"), "minerva_math needs antlr4-python3-runtime 4.11"
assert str(parse_latex(r"\frac{1}{2}")) == "1/2"
PY
  echo "$want" > "$lmeval/.tre-setup-stamp"
  echo "setup: .venv-lmeval ready (lm-eval $("$lmeval/bin/python" -c 'import importlib.metadata as m; print(m.version("lm-eval"))'), antlr 4.11)"
fi
