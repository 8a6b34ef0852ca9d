#!/usr/bin/env bash
# End-to-end performance of the CUDA backend against Hugging Face transformers
# on one GPU (H200), in one run of at most ~9 minutes. Logs and tables go to
# OUTDIR; a summary is printed at the end. Each phase has its own time limit and
# a failing phase does not stop the others.
#
#   tools/bench/run_perf_h200.sh BUNDLE OUTDIR [MODEL]
#
# BUNDLE: binaries made here with
#   BUILD_DIR=build-cuda tools/dist/pack_bundle.sh .dev/bundle longctx-bench \
#       longctx_unit_tests
# MODEL: the default model (GGUF), /tmp/model.gguf unless given.
#
# Phases:
#   graphs   GPU tests of the decode-step CUDA graphs and the synthetic-weight
#            kernel (CudaStepGraphTest, CudaFillUniformTest, random-weights model)
#   default  longctx-bench, default model: prefill, decode of 1 and 32 sessions
#            at 8k/32k/128k, graphs off and on, bandwidth floor, KV per token
#   7b       longctx-bench, synthetic Llama-2-7B shape (random weights): the same
#            at 4k/8k/32k/128k (32 sessions fit only at 4k) and the longest
#            single-session context on this GPU
#   hf       tools/bench/hf_transformers_bench.py: transformers bf16 + sdpa,
#            batch 1, the default model (GGUF) and the Llama-2-7B shape
set -u
bundle=$1
out=$2
model=${3:-/tmp/model.gguf}
bench_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$out"
# shellcheck disable=SC1091
source "$bundle/env.sh"  # sets PATH and LD_LIBRARY_PATH (and its own `here`)
t_start=$(date +%s)

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
  python3 -c 'import gguf; print("gguf", gguf.__version__)' 2>&1 | tail -1
  ls -l "$model"
} > "$out/env.log" 2>&1

phase() {  # name seconds command...
  local name=$1 limit=$2
  shift 2
  local t0
  t0=$(date +%s)
  timeout "$limit" "$@" > "$out/$name.md" 2> "$out/$name.log"
  local rc=$?
  echo "$name: rc=$rc ($(( $(date +%s) - t0 )) s, limit $limit s)" | tee -a "$out/phases.log"
}

LONGCTX_MODEL=$model phase graphs 60 longctx_unit_tests \
  --gtest_filter='CudaStepGraphTest.*:CudaFillUniformTest.*:CudaModelTest.RandomWeights*'

phase default 100 longctx-bench --backend=cuda --model="$model" \
  --lengths=8192,32768,131072 --batch=1,32 --decode=64 --chunk=8192 --graphs=both

phase 7b 170 longctx-bench --backend=cuda --model=synthetic:llama2-7b \
  --lengths=4096,8192,32768,131072 --batch=1,32 --decode=32 --chunk=8192 --graphs=both \
  --max_context

phase hf 200 python3 "$bench_dir/hf_transformers_bench.py" --gguf "$model" \
  --models default,llama2-7b --lengths 8192,32768,131072 --decode 32 --time-budget 150

{
  echo "# Summary ($(date -u), $(( $(date +%s) - t_start )) s)"
  echo
  cat "$out/phases.log"
  echo
  echo "## Step graph tests"
  grep -E '^\[  (PASSED|FAILED)|^\[step graphs\]|^\[ +FAILED' "$out/graphs.md"
  for name in default 7b; do
    echo
    echo "## longctx-bench: $name"
    echo
    grep -vE '^$' "$out/$name.md" | grep -E '^(\||#|backend=|NOTE|attention|device-to-device|Longest|Theory)'
    grep -E 'graphs disabled|Error|error|RESOURCE|INTERNAL|FAILED' "$out/$name.log" | head -5
  done
  echo
  echo "## Hugging Face transformers"
  echo
  grep -E '^(\||- |device=)' "$out/hf.md"
  grep -E 'Error|error|Traceback' "$out/hf.log" | tail -5
  echo
  echo "## Ratios"
  echo
  python3 "$bench_dir/perf_ratios.py" "$out"
} 2>&1 | tee "$out/summary.md"
