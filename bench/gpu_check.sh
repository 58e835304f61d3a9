#!/usr/bin/env bash
# GPU check of xscreen, in one go (< 5 minutes once the packages are installed):
#   1. environment: a Python that has torch with CUDA and onnxruntime-gpu (the CUDA execution provider);
#      if the current one lacks them, a venv is made and they are installed from PyPI;
#   2. a short AMP training run on CUDA (timed), export to FP32 and FP16 packages (parity gate included);
#   3. ONNX Runtime CUDA EP vs CPU EP on the same images: agreement and ms/img; PyTorch eager on CUDA.
#
#   bash bench/gpu_check.sh                      # from the repository root, on the GPU machine
#   XS_PYTHON=python3.11 XS_VENV=/tmp/v bash bench/gpu_check.sh --steps 100
#   XS_GPU_CHECK_OUT=/somewhere bash bench/gpu_check.sh   # where gpu_check.json goes (default: $OUT or .)
#
# Arguments are passed to bench/gpu_check.py (--size, --input, --batch, --steps, --runs, --allow-cpu).
# Note: the CPU package `onnxruntime` has no CUDA EP; `onnxruntime-gpu` does, and the two must not be
# installed side by side (both provide the `onnxruntime` module).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY="${XS_PYTHON:-python3}"
VENV="${XS_VENV:-/tmp/xscreen-gpu-venv}"
OUT_DIR="${XS_GPU_CHECK_OUT:-${OUT:-$REPO}}"
START=$(date +%s)

section() { printf '\n=== %s %s\n' "$1" "$(printf '=%.0s' $(seq 1 $((72 - ${#1}))))"; }
elapsed() { echo "$(( $(date +%s) - START )) s"; }

section "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader || echo "nvidia-smi not available"
"$PY" --version

# The pure-Python dependencies of the repo's code paths used here (training, export, synthesiser, engine).
BASE_DEPS=(numpy opencv-python-headless pillow "pydantic>=2.6" pyyaml "typer>=0.12" rich onnx "onnxslim>=0.1.30"
           faster-coco-eval xraydb "spekpy>=2.0.11" sympy)

have_stack() {  # torch sees CUDA, onnxruntime has the CUDA EP, the rest imports
  "$1" - <<'EOF' 2>/dev/null
import importlib, sys
import torch, onnxruntime as ort
for m in ("onnx", "onnxslim", "cv2", "pydantic", "typer", "rich", "faster_coco_eval", "xraydb", "spekpy", "yaml"):
    importlib.import_module(m)
ok = torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()
sys.exit(0 if ok else 1)
EOF
}

section "python environment"
if have_stack "$PY"; then
  echo "using $PY: torch with CUDA and onnxruntime-gpu already installed"
  RUN_PY="$PY"
else
  echo "setting up $VENV (reusing system packages where they fit)"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv --system-site-packages "$VENV"
  RUN_PY="$VENV/bin/python"
  PIP=("$RUN_PY" -m pip install --disable-pip-version-check --quiet)
  "$RUN_PY" -m pip install --disable-pip-version-check --quiet --upgrade pip
  if ! "$RUN_PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "installing torch (CUDA build from PyPI)…"; "${PIP[@]}" "torch==2.14.1"
  fi
  # onnxruntime-gpu from PyPI is built for CUDA 12 + cuDNN 9; the [cuda,cudnn] extras bring those libraries
  # as nvidia-* wheels, which onnxruntime.preload_dlls() loads (torch's own copies are used when they fit).
  if "$RUN_PY" -m pip show onnxruntime >/dev/null 2>&1; then
    echo "removing the CPU-only onnxruntime from the venv"; "$RUN_PY" -m pip uninstall --yes --quiet onnxruntime || true
  fi
  echo "installing onnxruntime-gpu and the base dependencies…"
  "${PIP[@]}" "onnxruntime-gpu[cuda,cudnn]" "${BASE_DEPS[@]}" || "${PIP[@]}" onnxruntime-gpu "${BASE_DEPS[@]}"
  if ! have_stack "$RUN_PY"; then
    "$RUN_PY" - <<'EOF' || true
import torch, onnxruntime as ort
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
print("onnxruntime", ort.__version__, ort.get_available_providers())
EOF
    echo "FAIL: the environment still lacks torch+CUDA or the onnxruntime CUDA EP (see above)"; exit 1
  fi
fi
echo "environment ready after $(elapsed)"

section "checks"
mkdir -p "$OUT_DIR"
# timeout: the whole check is meant to take minutes; a hang (driver, autotuning) must not eat the session.
PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" timeout 600 "$RUN_PY" "$REPO/bench/gpu_check.py" --json "$OUT_DIR/gpu_check.json" "$@"
echo "total $(elapsed)"
