#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan, in the ASan build that
# scripts/sanitize.sh also uses) and runs each from its seeds:
#   gguf_fuzz         the GGUF reader and model load        SECONDS
#   safetensors_fuzz  the safetensors and JSON readers      SECONDS / 4 (at least 10)
#   session_fuzz      the session codec and Engine::Import  SECONDS
#   request_fuzz      request parsing, conversion and the engine's calls,
#                     Ingest streams included, on a tiny model  SECONDS
# Exits non-zero on any crash, sanitizer report, leak, timeout or
# out-of-memory; the input that caused it is in $build/fuzz-artifacts/TARGET/.
#   scripts/fuzz.sh [SECONDS=60] [TARGET...]      FUZZ_BUILD_DIR=build-asan
set -euo pipefail
seconds=${1:-60}
shift || true
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=${FUZZ_BUILD_DIR:-build-asan}
targets=("$@")
((${#targets[@]})) || targets=(gguf_fuzz safetensors_fuzz session_fuzz request_fuzz)

# shellcheck source=scripts/sanitize.sh
source scripts/sanitize.sh
configure_asan "$build"
cmake --build "$build" -j "${JOBS:-$(nproc)}" --target "${targets[@]}"

# run TARGET SECONDS MAX_LEN [SEED_DIR | -FLAG]...: new inputs go to a working corpus in
# the build directory; the seeds are read only. Inputs that once crashed a
# target (tests/fuzz/regressions/TARGET/, kept after the fix) are seeds too,
# so they run first, every time.
run() {
  local target=$1 secs=$2 max_len=$3
  shift 3
  local work="$build/fuzz-corpus/$target" artifacts="$build/fuzz-artifacts/$target"
  mkdir -p "$work" "$artifacts"
  [[ -d tests/fuzz/regressions/$target ]] && set -- "$@" "tests/fuzz/regressions/$target"
  # One OpenMP thread: the fuzzer drives one input at a time.
  OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "$build/bin/$target" -max_total_time="$secs" \
    -rss_limit_mb=2048 -timeout=20 -max_len="$max_len" -print_final_stats=1 \
    -artifact_prefix="$artifacts/" "$work" "$@"
  echo "fuzz.sh: $target: no crash in ${secs}s"
}

for target in "${targets[@]}"; do
  case $target in
    gguf_fuzz) run gguf_fuzz "$seconds" 16384 tests/fuzz/corpus ;;
    safetensors_fuzz)
      run safetensors_fuzz $((seconds / 4 > 10 ? seconds / 4 : 10)) 32768 \
        tests/fixtures/loader/hf_tiny_llama tests/fixtures/loader/hf_tiny_qwen2 ;;
    session_fuzz)
      # Seeds: sessions the current code exports (RAW, CHAT, SLIDE, COMPRESS).
      seeds="$build/fuzz-seeds/session_fuzz"
      rm -rf "$seeds"
      OMP_NUM_THREADS=1 LONGCTX_FUZZ_WRITE_SEEDS="$seeds" "$build/bin/session_fuzz"
      run session_fuzz "$seconds" 65536 "$seeds" ;;
    # A script of calls needs room: longer inputs sooner than libFuzzer's default.
    request_fuzz) run request_fuzz "$seconds" 16384 -len_control=10 ;;
    *) echo "fuzz.sh: unknown target $target" >&2; exit 2 ;;
  esac
done
