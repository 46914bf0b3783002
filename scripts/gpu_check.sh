#!/usr/bin/env bash
# On a CUDA machine: the GPU tests and the GPU benchmarks of docs/performance.md in one run, one log.
#
#   bash scripts/gpu_check.sh [LOG]            # LOG defaults to artifacts/gpu_check.log
#   PYTHON=python3 STEP_TIMEOUT=300 bash scripts/gpu_check.sh
#
# Uses the Python that holds a CUDA build of PyTorch and the project's dependencies (PYTHON, default
# python3); the repository root goes on PYTHONPATH. Each step has its own time limit (STEP_TIMEOUT seconds,
# default 300) and a failed step does not stop the next: the log says which passed. Steps:
#   1. tests/test_cuda_graphs.py and tests/test_lm_sampling.py (CUDA-graph parity, compiled decode);
#   2. bench.lm_engine, fast decode (the served GPU path), 1/8/32 streams, --check, --pipeline (first audio, RTF),
#      --profile (kernels per frame, the costliest);
#   3. the same with the semantic head and --compile-decode (the benchmark-only lever).
# Exits non-zero when any step failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
LOG="${1:-artifacts/gpu_check.log}"
STEP_TIMEOUT="${STEP_TIMEOUT:-300}"
CHECKPOINT_DIR="${CHECKPOINT_DIR:-artifacts/bench/lm-full-random}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: $PYTHON's PyTorch sees no CUDA GPU; run this on a GPU machine" >&2
    exit 2
fi
mkdir -p "$(dirname "$LOG")"
: >"$LOG"
failed=()

step() {
    local name="$1"
    shift
    echo "=== $name ($(date -u +%H:%M:%S))" | tee -a "$LOG"
    timeout "$STEP_TIMEOUT" "$@" 2>&1 | tee -a "$LOG"
    local rc="${PIPESTATUS[0]}"
    echo "=== $name: exit $rc" | tee -a "$LOG"
    if [ "$rc" != 0 ]; then failed+=("$name"); fi
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$LOG"
"$PYTHON" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$LOG"
step tests "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_cuda_graphs.py tests/test_lm_sampling.py
BENCH=("$PYTHON" -m bench.lm_engine --device cuda --precision bf16 --frames 128 --fast-decode
    --concurrency 1 8 32 --pipeline --profile --checkpoint-dir "$CHECKPOINT_DIR")
step fast-decode "${BENCH[@]}" --check
step compiled-decode "${BENCH[@]}" --semantic-head-only --compile-decode

if [ "${#failed[@]}" -gt 0 ]; then
    echo "gpu_check: failed: ${failed[*]} (log: $LOG)" | tee -a "$LOG"
    exit 1
fi
echo "gpu_check: all steps passed (log: $LOG)" | tee -a "$LOG"
