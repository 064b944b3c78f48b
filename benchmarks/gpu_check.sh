#!/usr/bin/env bash
# The whole CUDA benchmark in one go: every section of benchmarks.run on the GPU, its JSON, log and
# RESULTS.md entry written into the folder given as argument. Further arguments go to
# benchmarks.run (--compile adds the torch.compile row: about 2 more minutes, mostly compiling).
# Without a CUDA device it says so and runs the CPU sections with --quick.
#
#   benchmarks/gpu_check.sh OUT_DIR [--compile]
#
# PYTHON picks the interpreter (default python3). On a machine without a package index, set
# VQCLIP_WHEELS to a folder of wheels for what that Python lacks (open_clip_torch,
# taming-transformers-rom1504, pydantic-settings...); they are installed into a private folder first.
set -euo pipefail
out=${1:?usage: benchmarks/gpu_check.sh OUT_DIR}
python=${PYTHON:-python3}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."

if [[ -n "${VQCLIP_WHEELS:-}" ]]; then
  site=$(mktemp -d)
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$VQCLIP_WHEELS"/*.whl
  export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 VQCLIP_OFFLINE=1 VQCLIP_CACHE_DIR=$(mktemp -d)
export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false

started=$SECONDS
if ! "$python" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  # Without a GPU the script still checks the harness: the CPU sections at the tiny preset; every CUDA
  # section (engine variants, FLOP share, 512 px memory, cold load onto the GPU, compile) is skipped.
  echo "gpu_check: no CUDA device here; CUDA sections skipped, running the CPU sections with --quick instead"
  "$python" -m benchmarks.run --device cpu --quick --json "$out/cpu.json" --markdown "$out/cpu.md" 2>&1 | tee "$out/cpu.log"
  echo "gpu_check: CPU fallback took $((SECONDS - started)) s; results in $out"
  exit 0
fi
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv | tee "$out/gpu.csv"
"$python" -m benchmarks.run --device cuda --json "$out/cuda.json" --markdown "$out/cuda.md" "${@:2}" 2>&1 | tee "$out/cuda.log"
echo "gpu_check: benchmark took $((SECONDS - started)) s; results in $out"
