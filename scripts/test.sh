#!/usr/bin/env bash
# The test command: installs what the build needs, fetches the default model,
# builds everything (CUDA code too when nvcc is present), runs the unit and
# integration tests on the real model, then the GGUF fuzzer for a short budget.
#   FUZZ_SECONDS=60 (0 skips the fuzz run)   BUILD_DIR=build
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=${BUILD_DIR:-build}
"$root/scripts/setup.sh" --no-model
LONGCTX_MODEL=$("$root/scripts/fetch_model.sh" | tail -n 1)
export LONGCTX_MODEL

cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLONGCTX_TESTS=ON
cmake --build "$build" -j "$(nproc)"
ctest --test-dir "$build" --output-on-failure -j 2

scripts/check_deploy.sh

fuzz_seconds=${FUZZ_SECONDS:-60}
if [[ $fuzz_seconds -gt 0 && -x scripts/fuzz.sh ]]; then
  scripts/fuzz.sh "$fuzz_seconds"
fi
echo "test.sh: all tests passed"
