#!/usr/bin/env bash
# Create the virtual environment and install spikesearch into it.
# A machine whose python already has a CUDA torch keeps it (the venv sees system packages); anywhere
# else the CPU wheel torch==2.13.0 goes in first and is pinned, so pip never resolves a multi-GB
# CUDA build on a CPU-only machine.
set -euo pipefail
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-dev}

if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "install: keeping the system's CUDA torch $("$PY" -c 'import torch; print(torch.__version__)')"
  "$PY" -m venv --system-site-packages "$VENV"
else
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q "torch==2.13.0" numpy \
    || "$VENV/bin/python" -m pip install -q --index-url https://download.pytorch.org/whl/cpu torch numpy
fi
pin=$(mktemp)
trap 'rm -f "$pin"' EXIT
"$VENV/bin/python" -c 'import torch; print("torch==" + torch.__version__.split("+")[0])' > "$pin"
"$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]" -c "$pin"
echo "install: $("$VENV/bin/python" -c 'import torch, spikesearch; print(f"spikesearch {spikesearch.__version__}, torch {torch.__version__}")')"
