#!/usr/bin/env bash
# Builds the GGUF fuzzer with clang (libFuzzer + ASan/UBSan) in its own build
# directory and runs it for SECONDS seconds from the committed seed corpus.
# Exits non-zero on any crash, sanitizer report, leak, timeout or OOM.
#   scripts/fuzz.sh [SECONDS=60]      FUZZ_BUILD_DIR=build-fuzz
set -euo pipefail
seconds=${1:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=${FUZZ_BUILD_DIR:-build-fuzz}

CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DLONGCTX_FUZZ=ON -DLONGCTX_SERVER=OFF -DLONGCTX_CUDA=OFF -DLONGCTX_TESTS=ON >/dev/null
cmake --build "$build" --target gguf_fuzz

# New inputs go to a working corpus inside the build directory; the committed
# seeds (tools/gen_gguf_seeds.py) are read only.
work="$build/fuzz-corpus"
artifacts="$build/fuzz-artifacts"
mkdir -p "$work" "$artifacts"
# One OpenMP thread: the fuzzer drives one input at a time.
OMP_NUM_THREADS=1 "$build/bin/gguf_fuzz" -max_total_time="$seconds" -rss_limit_mb=2048 \
  -timeout=20 -max_len=16384 -print_final_stats=1 -artifact_prefix="$artifacts/" \
  "$work" tests/fuzz/corpus
echo "fuzz.sh: no crash in ${seconds}s"
