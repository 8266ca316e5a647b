#!/usr/bin/env bash
# One-GPU check, under 8 minutes on one GPU (scripts/gpu_check.py): LightGCN and XSimGCL epochs on a synthetic
# ML-1M-sized graph on CUDA vs CPU (same validation metrics per epoch), and the reranker's scoring throughput.
#   scripts/gpu_check.sh [OUT_DIR]        (default results/gpu_check; extra arguments go to gpu_check.py)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-results/gpu_check}"
shift || true
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY="${PY:-.venv/bin/python}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "gpu_check: nvidia-smi not found"
timeout 480 env PYTHONPATH="$PWD" "$PY" -m scripts.gpu_check --out "$OUT" "$@"
