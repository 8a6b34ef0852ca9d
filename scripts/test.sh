#!/usr/bin/env bash
# The test command: installs what the build needs, fetches the default model,
# builds everything (CUDA code too when nvcc is present), runs the unit and
# integration tests on the real model, then the unit tests under ASan + UBSan
# (scripts/sanitize.sh --fast) and the fuzzers for a short budget each, both
# in one ASan build (build-asan).
#   FUZZ_SECONDS=60 (0 skips the fuzz run)   SANITIZE=1 (0 skips)   BUILD_DIR=build
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=${BUILD_DIR:-build}
"$root/scripts/setup.sh" --no-model
LONGCTX_MODEL=$("$root/scripts/fetch_model.sh" | tail -n 1)
export LONGCTX_MODEL

# Everything, CPU backend: unit and integration tests on the real model.
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLONGCTX_TESTS=ON -DLONGCTX_CUDA=OFF
cmake --build "$build" -j "$(nproc)"
ctest --test-dir "$build" --output-on-failure -j 2

# The CUDA code compiles and links wherever nvcc is; its GPU tests skip without a GPU.
if command -v nvcc > /dev/null || [[ -x /usr/local/cuda/bin/nvcc ]]; then
  cmake -S . -B "$build-cuda" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLONGCTX_TESTS=ON \
    -DLONGCTX_CUDA=ON
  cmake --build "$build-cuda" -j "$(nproc)" --target longctx_unit_tests longctxd longctx
  "$build-cuda/bin/longctx_unit_tests" --gtest_filter='Cuda*:*Nccl*'
  scripts/smoke_server.sh "$build-cuda" "$LONGCTX_MODEL"
fi

scripts/check_deploy.sh

# The full sanitizer run (integration tests, TSan) is scripts/sanitize.sh.
if [[ ${SANITIZE:-1} != 0 ]]; then
  scripts/sanitize.sh --fast
fi

fuzz_seconds=${FUZZ_SECONDS:-60}
if [[ $fuzz_seconds -gt 0 && -x scripts/fuzz.sh ]]; then
  scripts/fuzz.sh "$fuzz_seconds"
fi
echo "test.sh: all tests passed"
