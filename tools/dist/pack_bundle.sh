#!/usr/bin/env bash
# Packs the binaries that tools/dist/run_multi_gpu.sh runs, with the shared
# libraries they need from this machine, into BUNDLE (default .devbundle) for a
# GPU machine that lacks the build's dependencies. The CUDA libraries (runtime,
# cuBLAS, NCCL) and the C/C++ runtimes are left out: the GPU machine's own (newer) ones are used (see
# run_multi_gpu.sh). The binaries carry this build's -march=native: on a GPU
# host whose CPU lacks an instruction set of this one, build there instead.
#   cmake -S . -B build -G Ninja -DLONGCTX_SERVER=OFF
#   ninja -C build longctx_unit_tests longctx-dist-bench
#   tools/dist/pack_bundle.sh [BUNDLE [BINARY...]]
# BINARY: names under $BUILD_DIR/bin (default build); default
# longctx_unit_tests and longctx-dist-bench. BUNDLE/env.sh, sourced on the GPU
# machine, puts bin/ on PATH and lib/ and the CUDA libraries on
# LD_LIBRARY_PATH; BUNDLE/commit names the commit the binaries were built from
# ("-dirty" when tracked files differed from it).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bundle=${1:-$root/.devbundle}
shift || true
binaries=("$@")
((${#binaries[@]})) || binaries=(longctx_unit_tests longctx-dist-bench)
build=${BUILD_DIR:-$root/build}
mkdir -p "$bundle/bin" "$bundle/lib"
paths=()
for b in "${binaries[@]}"; do
  cp "$build/bin/$b" "$bundle/bin/"
  strip "$bundle/bin/$b"
  paths+=("$build/bin/$b")
done
ldd "${paths[@]}" |
  awk '/=> \// {print $3}' | sort -u |
  grep -v '/cuda' |
  grep -vE '/(libc|libm|libdl|libpthread|librt|ld-linux[^/]*|libstdc\+\+|libgcc_s)\.so' |
  while read -r lib; do cp -L "$lib" "$bundle/lib/"; done
cat > "$bundle/env.sh" << 'EOF'
# Source on the GPU machine before running anything from bin/.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export LD_LIBRARY_PATH="$here/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$here/bin:$PATH"
EOF
if commit=$(git -C "$root" rev-parse HEAD 2> /dev/null); then
  git -C "$root" diff --quiet HEAD || commit+=-dirty
  echo "$commit" > "$bundle/commit"
fi
du -sh "$bundle"
