#!/usr/bin/env bash
# Packs the binaries that tools/dist/run_multi_gpu.sh runs, with the shared
# libraries they need from this machine, into BUNDLE (default .devbundle) for a
# GPU machine that lacks the build's dependencies. The CUDA libraries (runtime,
# cuBLAS, NCCL) and the C/C++ runtimes are left out: the GPU machine's own (newer) ones are used (see
# run_multi_gpu.sh). The binaries carry this build's -march=native: on a GPU
# host whose CPU lacks an instruction set of this one, build there instead.
#   cmake -S . -B build -G Ninja -DLONGCTX_SERVER=OFF
#   ninja -C build longctx_unit_tests longctx-dist-bench
#   tools/dist/pack_bundle.sh [BUNDLE]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bundle=${1:-$root/.devbundle}
mkdir -p "$bundle/bin" "$bundle/lib"
for b in longctx_unit_tests longctx-dist-bench; do
  cp "$root/build/bin/$b" "$bundle/bin/"
  strip "$bundle/bin/$b"
done
ldd "$root"/build/bin/longctx_unit_tests "$root"/build/bin/longctx-dist-bench |
  awk '/=> \// {print $3}' | sort -u |
  grep -v '/cuda' |
  grep -vE '/(libc|libm|libdl|libpthread|librt|ld-linux[^/]*|libstdc\+\+|libgcc_s)\.so' |
  while read -r lib; do cp -L "$lib" "$bundle/lib/"; done
du -sh "$bundle"
