#!/usr/bin/env bash
# GPU check of clnscl on a CUDA machine (written for an H200 with torch 2.11, triton 3.6, nvcc, no network).
# Installs nothing and needs no `pip install`: the repository goes on PYTHONPATH and the C++/CUDA ops compile
# on first use (clnscl/extension.py, cached under ~/.cache/clnscl or $CLNSCL_BUILD_DIR).
#
#   bash scripts/gpu_check.sh            # from anywhere; about 4-7 minutes, never more than GPU_CHECK_BUDGET
#   bash scripts/gpu_check.sh --dry-run  # every step on the CPU at tiny sizes (the tests collected, not run):
#                                        # what CI runs so that this script cannot rot; the default without a GPU
#
# Steps, each under `timeout` within one overall budget, and a final summary table printed whatever fails:
#   1. versions, GPU, `python -m clnscl.info` (this compiles the CPU and CUDA ops), and a hard load check;
#   2. the GPU tests: pytest -k "gpu or cuda or triton" over tests/ (tests/loss/test_triton.py runs its kernels
#      on the GPU: TRITON_INTERPRET is unset) and benchmarks/loss/test_gpu.py (smoke size);
#   3. benchmarks.metrics.gpu_metrics: the CUDA pairwise engine and streaming metrics at N = 200,000, d = 512,
#      the engine against the CPU engine at N = 20,000 and its time projected to 1.28M rows on 1 and 8 GPUs;
#   4. benchmarks.loss.gpu_bench: correctness of triton (both schedules) and cuda vs the float64 reference at
#      N = 4096 (fp32); forward, backward and both at N = 65,536, d = 128, bf16 and fp32: time, TFLOP/s counted
#      as the bar counts (8N²d for both) and as the work done, peak memory, for triton symmetric and general,
#      cuda, the reference and the reference under torch.compile; the bars checked.
# Environment: PYTHON (default python3), GPU_CHECK_BUDGET (seconds, default 540), GPU_CHECK_LOGS (folder for
# the logs and gpu_bench.md; default $OUT when set, else a new temporary folder).
# Python packages the GPU machine may lack (it has no network): prepare them here and carry the folder,
#   pip install --target .gpu_deps pytest pytest-benchmark tqdm pyyaml     # then run with carry [".gpu_deps"]
# .gpu_deps goes on PYTHONPATH after the machine's own packages; step 0 lists what is still missing.
set -u -o pipefail
FORCE_DRY=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) FORCE_DRY=1 ;;
        *) echo "gpu_check.sh: unknown argument $arg (only --dry-run)" >&2; exit 2 ;;
    esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
ROOT=$PWD
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [ -d "$ROOT/.gpu_deps" ]; then export PYTHONPATH="$PYTHONPATH:$ROOT/.gpu_deps"; fi
unset TRITON_INTERPRET
export PYTHONUNBUFFERED=1

PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if command -v python3 >/dev/null 2>&1; then PY=python3; else PY=python; fi
fi
BUDGET=${GPU_CHECK_BUDGET:-540}
LOGS=${GPU_CHECK_LOGS:-${OUT:-}}
if [ -z "$LOGS" ]; then LOGS=$(mktemp -d); fi
mkdir -p "$LOGS"
START=$SECONDS
SUMMARY=()

left() { echo $((BUDGET - (SECONDS - START))); }

# run_step NAME CAP RESERVE CMD...: run CMD under timeout min(CAP, time left - RESERVE), log to $LOGS/NAME.log
run_step() {
    local name=$1 cap=$2 reserve=$3
    shift 3
    local avail=$(($(left) - reserve))
    local t=$((cap < avail ? cap : avail))
    if [ "$t" -lt 15 ]; then
        SUMMARY+=("| $name | skipped: out of time budget | 0 s | |")
        return
    fi
    echo
    echo "=== $name (timeout ${t} s) ==="
    local t0=$SECONDS
    timeout -k 10 "$t" "$@" 2>&1 | tee "$LOGS/$name.log"
    local rc=${PIPESTATUS[0]}
    local status
    if [ "$rc" -eq 0 ]; then
        status=ok
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        status="TIMEOUT after ${t} s"
    else
        status="FAILED (exit $rc)"
    fi
    local detail=""
    if [ "$name" = gpu_tests ]; then
        detail=$(grep -E "(passed|failed|error|skipped|deselected|collected|no tests ran)" "$LOGS/$name.log" | tail -1)
    fi
    SUMMARY+=("| $name | $status | $((SECONDS - t0)) s | $detail |")
}

echo "=== machine ==="
echo "repo: $ROOT ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo 'no git'))"
echo "python: $(command -v "$PY") ($($PY --version 2>&1))"
timeout 20 nvidia-smi -L 2>&1 || echo "nvidia-smi: not available"
command -v nvcc >/dev/null 2>&1 && nvcc --version | tail -2 || echo "nvcc: not on PATH"
echo "logs: $LOGS"

echo "python packages missing here: $("$PY" -c "
import importlib.util as u
need = ['torch', 'triton', 'numpy', 'pytest', 'pytest_benchmark', 'tqdm', 'yaml', 'sklearn', 'scipy', 'PIL',
        'torchvision', 'matplotlib', 'ninja']
print(', '.join(m for m in need if u.find_spec(m) is None) or 'none')" 2>&1)"

HAVE_CUDA=$(timeout 60 "$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
DRY=""
COLLECT=""
if [ "$HAVE_CUDA" != 1 ] || [ "$FORCE_DRY" = 1 ]; then
    echo "DRY RUN: tiny sizes on the CPU, the GPU tests only collected (torch sees a CUDA device: $HAVE_CUDA)"
    DRY="--dry-run"
    COLLECT="--collect-only"
fi

# 1. versions, backends, first-use compilation of the ops (the CUDA one takes about a minute)
run_step info 200 240 "$PY" -m clnscl.info
run_step ops_load 60 230 "$PY" -c "
from clnscl import extension
import torch
extension.load('cpu'); print('C++ CPU ops: loaded')
if torch.cuda.is_available():
    extension.load('cuda'); print('CUDA ops: loaded')
"

# 2. the GPU tests (kernels on the GPU), and the GPU benchmark module at its smoke size
run_step gpu_tests 200 150 "$PY" -m pytest -q -rs -p no:cacheprovider --durations=5 --continue-on-collection-errors \
    $COLLECT tests benchmarks/loss/test_gpu.py -k "gpu or cuda or triton"

# 3. the metrics on the GPU (pairwise engine and streaming Gram statistics), at most 150 s
run_step gpu_metrics 150 100 "$PY" -m benchmarks.metrics.gpu_metrics $DRY --budget 120

# 4. the compact loss benchmark, with its own budget inside the step's timeout
BENCH_T=$(($(left) - 5))
run_step gpu_bench "$BENCH_T" 5 "$PY" -m benchmarks.loss.gpu_bench $DRY --budget $((BENCH_T > 40 ? BENCH_T - 25 : 15)) \
    --out "$LOGS/gpu_bench.md"

echo
echo "================================ summary ================================"
echo "clnscl GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), total $((SECONDS - START)) s (budget ${BUDGET} s)"
echo
echo "| step | status | time | detail |"
echo "| --- | --- | --- | --- |"
for row in "${SUMMARY[@]}"; do echo "$row"; done
echo
grep -A 16 "^## clnscl metrics" "$LOGS/gpu_metrics.log" 2>/dev/null
echo
if [ -s "$LOGS/gpu_bench.md" ]; then
    cat "$LOGS/gpu_bench.md"
else
    echo "(no benchmark table: see $LOGS/gpu_bench.log)"
fi
# exit status: 0 only if every step was ok
for row in "${SUMMARY[@]}"; do
    case "$row" in *"| ok |"*) ;; *) exit 1 ;; esac
done
exit 0
