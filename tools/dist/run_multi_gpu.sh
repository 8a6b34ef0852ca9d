#!/usr/bin/env bash
# Multi-GPU checks of context-parallel sessions (DESIGN §7) on a machine with two
# or more GPUs, from a bundle made by tools/dist/pack_bundle.sh. Writes logs to
# OUTDIR and prints a summary. Phases, in the order given:
#   cpu     the CPU-side context-parallel tests (merge, placement, rendezvous,
#           in-process ranks; the real model when LONGCTX_MODEL is set)
#   nccl    NcclCommunicator on two GPUs: device collectives and a silent peer
#           turning into UNAVAILABLE (tests/dist_nccl_test.cc)
#   bench   longctx-dist-bench over NCCL, one process per GPU: the per-layer
#           communication time of context-parallel attention at Llama-2-7B shapes
#
#   tools/dist/run_multi_gpu.sh BUNDLE OUTDIR cpu nccl bench
set -u
bundle=$(cd "$1" && pwd)
out=$2
shift 2
mkdir -p "$out"

# NVLink multicast stays off on shared hosts (it can take the GPUs down).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# CUDA libraries from the machine: the toolkit's, then those PyTorch ships
# (NCCL is often only there).
wheel_libs=$(python3 - 2>/dev/null <<'PY'
import importlib, os
for name in ("nvidia.nccl", "nvidia.cublas", "nvidia.cuda_runtime"):
    try:
        print(os.path.join(list(importlib.import_module(name).__path__)[0], "lib"))
    except ImportError:
        pass
PY
)
wheel_libs=$(echo $wheel_libs | tr ' ' ':')
export LD_LIBRARY_PATH="$bundle/lib:/usr/local/cuda/lib64${wheel_libs:+:$wheel_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$bundle/bin:$PATH"
{
  date -u
  nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv
  nvidia-smi topo -m
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  ldd "$bundle/bin/longctx_unit_tests" | grep -E 'nccl|cublas|cudart|not found'
} > "$out/env.log" 2>&1

for phase in "$@"; do
  start=$(date +%s)
  case $phase in
    cpu)
      timeout 300 longctx_unit_tests --gtest_filter='AttentionMerge*:Dist*:-DistNccl*' \
        > "$out/cpu.log" 2>&1
      echo "cpu: rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$out/cpu.log" | tr '\n' ' ')" ;;
    nccl)
      NCCL_DEBUG=WARN timeout 300 longctx_unit_tests --gtest_filter='DistNccl*' \
        > "$out/nccl.log" 2>&1
      echo "nccl: rc=$? $(grep -E '^\[  (PASSED|FAILED|SKIPPED)' "$out/nccl.log" | tr '\n' ' ')" ;;
    bench)
      for r in 1 0; do  # rank 0 last, in the foreground: it prints the table
        args=(--comm=nccl --world_size=2 --rank=$r --rendezvous=tcp://127.0.0.1:29511
              --tokens=1,512,2048,8192 --reps=20)
        if [[ $r -eq 0 ]]; then
          timeout 300 longctx-dist-bench "${args[@]}" > "$out/bench.md" 2>&1
          echo "bench: rc=$?"
        else
          timeout 300 longctx-dist-bench "${args[@]}" > "$out/bench_rank1.log" 2>&1 &
        fi
      done
      wait
      cat "$out/bench.md" ;;
    *)
      echo "unknown phase $phase" >&2 ;;
  esac
  echo "$phase took $(( $(date +%s) - start )) s"
done
