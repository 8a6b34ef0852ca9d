#!/usr/bin/env bash
# Builds the model-file fuzzers with clang (libFuzzer + ASan/UBSan) in their own
# build directory and runs them from the committed seeds: the GGUF reader for
# SECONDS seconds, then the safetensors/JSON readers for a quarter of that
# (at least 10 s). Exits non-zero on any crash, sanitizer report, leak,
# timeout or out-of-memory.
#   scripts/fuzz.sh [SECONDS=60]      FUZZ_BUILD_DIR=build-fuzz
set -euo pipefail
seconds=${1:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=${FUZZ_BUILD_DIR:-build-fuzz}

CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DLONGCTX_FUZZ=ON -DLONGCTX_SERVER=OFF -DLONGCTX_CUDA=OFF -DLONGCTX_TESTS=ON >/dev/null
cmake --build "$build" --target gguf_fuzz safetensors_fuzz

# run TARGET SECONDS MAX_LEN SEED_DIR...: new inputs go to a working corpus in
# the build directory; the committed seeds are read only.
run() {
  local target=$1 secs=$2 max_len=$3
  shift 3
  local work="$build/fuzz-corpus/$target" artifacts="$build/fuzz-artifacts/$target"
  mkdir -p "$work" "$artifacts"
  # One OpenMP thread: the fuzzer drives one input at a time.
  OMP_NUM_THREADS=1 "$build/bin/$target" -max_total_time="$secs" -rss_limit_mb=2048 \
    -timeout=20 -max_len="$max_len" -print_final_stats=1 -artifact_prefix="$artifacts/" \
    "$work" "$@"
  echo "fuzz.sh: $target: no crash in ${secs}s"
}

run gguf_fuzz "$seconds" 16384 tests/fuzz/corpus
st_seconds=$((seconds / 4 > 10 ? seconds / 4 : 10))
run safetensors_fuzz "$st_seconds" 32768 tests/fixtures/loader/hf_tiny_llama \
  tests/fixtures/loader/hf_tiny_qwen2
