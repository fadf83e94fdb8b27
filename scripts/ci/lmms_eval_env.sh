#!/usr/bin/env bash
# Build (once) the virtual environment in which lmms-eval 0.7.3 runs the `llava_m3` plugin on CPU.
#
#   bash scripts/ci/lmms_eval_env.sh        # prints the environment's python when it is ready
#
# lmms-eval is not a dependency of `llava`, and its dependencies (datasets, wandb, sentence-transformers,
# ...) do not belong in the main environment, so it gets its own: .venv-lmms (LMMS_VENV to move it).
# Three things make the install work on CPU:
# - torch is installed first, pinned, and a constraint keeps it pinned while lmms-eval's requirements
#   resolve, so no resolve can replace the CPU wheel by a multi-GB CUDA build;
# - the torchvision wheel that lmms-eval pulls from PyPI is built against CUDA torch and fails at import
#   ("operator torchvision::nms does not exist"); it is uninstalled, and transformers then uses its PIL
#   image processors, which is all `llava_m3` needs;
# - filelock 4 removed a module lmms-eval 0.7.3 imports, so filelock stays below 4.
# The environment is rebuilt only when this script or pyproject.toml changes (a stamp named after both).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

PYTHON=${PYTHON:-python3}
VENV=${LMMS_VENV:-.venv-lmms}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
LMMS_EVAL_SPEC="lmms-eval==0.7.3"
STAMP="$VENV/.installed-$(cat scripts/ci/lmms_eval_env.sh pyproject.toml | sha256sum | cut -c1-16)"

# Everything the installs print goes to stderr: stdout carries only the python's path.
if [ ! -f "$STAMP" ]; then
    test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV" >&2
    "$VENV/bin/python" -m pip install --quiet "$TORCH_SPEC" >&2
    constraint="$VENV/torch-constraint.txt"
    "$VENV/bin/python" -c "from importlib.metadata import version; print('torch==' + version('torch'))" >"$constraint"
    "$VENV/bin/python" -m pip install --quiet -c "$constraint" \
        "$LMMS_EVAL_SPEC" "filelock<4" -e ".[eval]" pytest pytest-timeout >&2
    "$VENV/bin/python" -m pip uninstall --quiet --yes torchvision >&2
    rm -f "$VENV"/.installed-*
    touch "$STAMP"
fi
# The checks that the three fixes above hold, every time: a CPU torch, no torchvision, lmms-eval importable.
"$VENV/bin/python" - <<'PY' >&2
import importlib.util

import torch

assert torch.version.cuda is None, f"torch {torch.__version__} is a CUDA build; the CPU wheel is needed"
assert importlib.util.find_spec("torchvision") is None, "torchvision is installed; it fails against CPU torch"
import lmms_eval.evaluator  # noqa: F401  (imports filelock's removed module when filelock is 4.x)
PY
echo "$VENV/bin/python"
