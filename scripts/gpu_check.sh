#!/usr/bin/env bash
# Strata's CUDA checks, on a host with an NVIDIA GPU: the gpu-marked tests, the engine's
# exactness tests on the GPU in float32 and bfloat16, and bench.cuda's figures.
#
#   scripts/gpu_check.sh [OUT_DIR]        (default: bench/results/gpu)
#
# Logs and JSON land in OUT_DIR; the script goes on after a failing step and exits
# non-zero if any step failed. Python packages: the project's, already importable (a
# venv, or wheels unpacked on PYTHONPATH); Redis-backed tests are left out (no
# redis-server is assumed on a GPU host). STRATA_GPU_QUICK=1 runs the benches' --quick
# configurations; STRATA_GPU_BUDGET_S (default 540) bounds the whole run: each step's time
# limit is cut to what is left, and a step with under 20 s left is skipped (and fails).
set -u
cd "$(dirname "$0")/.."
out=${1:-bench/results/gpu}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
py=${PYTHON:-python3}
quick=${STRATA_GPU_QUICK:+--quick}
budget=${STRATA_GPU_BUDGET_S:-540}
failed=()

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to OUT/NAME.log
  local name=$1 limit=$2
  shift 2
  local left=$((budget - SECONDS))
  [ "$limit" -le "$left" ] || limit=$left
  if [ "$limit" -lt 20 ]; then
    echo "$name: skipped, the run's time budget is spent"
    failed+=("$name")
    return
  fi
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  printf '%-28s rc=%-3s %4ss  %s\n' "$name" "$rc" "$((SECONDS - start))" "$(tail -n 1 "$out/$name.log")"
  [ "$rc" -eq 0 ] || failed+=("$name")
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
  df -h /dev/shm /tmp | tail -n 2
} >"$out/host.txt" 2>&1
cat "$out/host.txt"

# The DRAM arena lives in /dev/shm: the engine bench's embedded node takes 16 GiB.
shm_gib=$(df --output=avail -BG /dev/shm | tail -n 1 | tr -dc 0-9)
if [ "${shm_gib:-0}" -lt 40 ]; then
  mount -o remount,size=48G /dev/shm 2>/dev/null || echo "/dev/shm is ${shm_gib}G and stays so"
fi

# plugins named, not autoloaded: a GPU image may carry plugins that do not fit this pytest
export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
pytest=("$py" -m pytest -q -rfEs -p no:cacheprovider -p pytest_asyncio.plugin -p pytest_timeout --timeout 300)
step tests-gpu-marked 90 "${pytest[@]}" -m gpu tests/kvstore/tiers/test_hbm.py
for dtype in float32 bfloat16; do
  step "tests-engine-cuda-$dtype" 150 env STRATA_TEST_DEVICE=cuda STRATA_TEST_DTYPE="$dtype" \
    "${pytest[@]}" tests/engine/test_llm.py tests/engine/test_disaggregated.py \
    -k "(reuse or corrupted or unreachable or separate_processes) and not another_store_node"
done
step tests-reference-cuda 150 env STRATA_TEST_DEVICE=cuda "${pytest[@]}" -s \
  tests/engine/test_reference.py
for part in tiers attention profile; do
  step "bench-cuda-$part" 90 "$py" -m bench.cuda --part "$part" $quick --json "$out/cuda_$part.json"
done
step bench-cuda-engine 240 "$py" -m bench.cuda --part engine $quick \
  --json "$out/cuda_engine.json" --tiers-json "$out/cuda_tiers.json" \
  --cost-model "$out/cost_model.json"

if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}"
  exit 1
fi
echo "all CUDA checks passed"
