#!/usr/bin/env bash
# The test command: installs what the build needs, fetches the default model,
# builds everything (CUDA code too when nvcc is present), runs the unit and
# integration tests on the real model and the Python client's tests against
# the real server, then the unit tests under ASan + UBSan
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
# The benchmark output parsers (tools/bench/test_*.py; standard library only).
python3 -m unittest discover -s tools/bench -p 'test_*.py'

# ---- OpenAI compatibility (tests/openai): the official openai package, in its
# own venv, against the real longctxd's HTTP door ----
openai_venv="$build/openai-venv"
[[ -x $openai_venv/bin/python ]] || python3 -m venv "$openai_venv"
"$openai_venv/bin/pip" install --quiet --disable-pip-version-check openai pytest
LONGCTX_DAEMON="$build/bin/longctxd" "$openai_venv/bin/python" -m pytest -q tests/openai
# ---- end OpenAI compatibility ----

# The crash harness (docs/service.md "Durability"): a few trials of SIGKILL and
# of SIGTERM at random moments under streaming clients; nothing acknowledged
# may be lost and every session must equal its uninterrupted twin: kills with
# the default (quantized) weights, whose scores agree within 5e-2 relative, and
# terms with f32 weights, within 1e-3.
for run in "kill quantized" "term f32"; do
  read -r mode weights <<< "$run"
  "$build/bin/longctx-crash-harness" --server="$build/bin/longctxd" --mode=$mode --trials=3 \
    --clients=3 --cpu_weights=$weights --work_dir="$(mktemp -d)" | tail -n 1
done

# The Python client (clients/python) against the real server, installed into a
# fresh virtual environment as a user would.
build_abs=$(cd "$build" && pwd)
rm -rf "$build_abs/pyenv"
python3 -m venv "$build_abs/pyenv"
"$build_abs/pyenv/bin/pip" install -q ./clients/python pytest
# The Go example, built offline from Debian's Go packages, runs in the same suite.
if command -v go > /dev/null && command -v protoc-gen-go-grpc > /dev/null; then
  LONGCTX_GO_EXAMPLE=$(examples/go/build.sh "$build_abs/go" | tail -n 1)
  export LONGCTX_GO_EXAMPLE
fi
LONGCTX_DAEMON="$build_abs/bin/longctxd" "$build_abs/pyenv/bin/python" -m pytest -q clients/python/tests

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
