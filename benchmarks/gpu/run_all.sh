#!/usr/bin/env bash
# Every GPU benchmark in benchmarks/gpu/ at full size, each under its own timeout, all of them
# within 8 minutes. Stops at once without a CUDA device; exits 1 if any script failed or timed out.
#
#   benchmarks/gpu/run_all.sh [OUT_DIR]     # JSON results go to OUT_DIR (default benchmarks/results/)
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=${1:-benchmarks/results}
TOTAL_S=450  # 8 minutes less the device checks and the kill grace
# Seconds per script (their sum stays under TOTAL_S); a script not named here gets DEFAULT_S.
declare -A LIMIT_S=([attention]=125 [norm]=60 [model_prefill]=80 [linear_attention]=55 [int8_gemm]=50 [moe]=55 [decode_attention]=25)
DEFAULT_S=60

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    || { echo "run_all.sh: no NVIDIA GPU (nvidia-smi failed)" >&2; exit 1; }
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
    || { echo "run_all.sh: torch sees no CUDA device" >&2; exit 1; }
unset TRITON_INTERPRET  # compiled kernels on the GPU, never the interpreter

deadline=$((SECONDS + TOTAL_S))
failed=()
for script in benchmarks/gpu/[!_]*.py; do  # _*.py are helper modules (_bench.py)
    name=$(basename "$script" .py)
    limit=${LIMIT_S[$name]:-$DEFAULT_S}
    left=$((deadline - SECONDS))
    ((left < limit)) && limit=$left
    if ((limit < 10)); then echo "== $name: skipped, the 8-minute budget is spent"; failed+=("$name"); continue; fi
    echo "== $name (timeout ${limit}s)"
    timeout --kill-after=5 "$limit" "$PY" "$script" --out "$OUT"
    rc=$?
    if ((rc == 124 || rc == 137)); then echo "== $name: TIMED OUT after ${limit}s"; failed+=("$name")
    elif ((rc != 0)); then echo "== $name: FAILED (exit $rc)"; failed+=("$name"); fi
done

if ((${#failed[@]})); then echo "run_all.sh: failed: ${failed[*]}" >&2; exit 1; fi
echo "run_all.sh: all GPU benchmarks done in ${SECONDS}s; results in $OUT"
