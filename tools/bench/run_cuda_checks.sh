#!/usr/bin/env bash
# Runs the CUDA checks and benchmarks on a GPU machine from prebuilt binaries
# (longctx_unit_tests and longctx-attention-bench on PATH) and writes the logs
# into OUTDIR. Phases, in the order given:
#   unit      GPU unit tests (tests/cuda_*_test.cc; LONGCTX_MODEL used when set)
#   model     only the whole-model tests (needs LONGCTX_MODEL for the default model)
#   sanitize  compute-sanitizer memcheck and racecheck on the attention kernels
#   bench     longctx-attention-bench and PyTorch SDPA at 8k/32k/128k, D 64 and 128
#   profile   Nsight Compute on one prefill (wgmma) and one split-KV decode launch
#
#   tools/bench/run_cuda_checks.sh OUTDIR unit sanitize bench
set -u
out=$1
shift
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$out"
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  command -v compute-sanitizer
  python3 -c 'import torch; print("torch", torch.__version__)'
} >> "$out/env.log" 2>&1

# Attention cases small enough for the sanitizers (each runs every kernel
# mode), the few-row products (both kernels, every epilogue, the folded norm),
# the fused RoPE + KV write and the arg-max rows.
san_filter='CudaGemvTest.TensorCoreRowsMatchReferenceForEveryEpilogue:CudaGemvTest.RmsNormFusedProductsMatchNormThenProduct:CudaOpsTest.RopeKvWriteEqualsRopeThenKvWrite:CudaOpsTest.ArgMaxRowsMatchesCpu:Cases/CudaAttentionTest.MatchesCpu/window_chunk_gqa64:Cases/CudaAttentionTest.MatchesCpu/Small_mixed_batch_gqa64:Cases/CudaAttentionTest.MatchesCpu/Small_mixed_batch_mha128:Cases/CudaAttentionTest.MatchesCpu/Small_prefill65_gqa128_C128w64:Cases/CudaAttentionTest.MatchesCpu/Small_prefill64_gqa64_C256w64'

for phase in "$@"; do
  start=$(date +%s)
  case $phase in
    unit)
      timeout 420 longctx_unit_tests --gtest_filter='*Cuda*' > "$out/unit.log" 2>&1
      echo "unit: rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$out/unit.log" | tr '\n' ' ')" ;;
    model)
      timeout 300 longctx_unit_tests --gtest_filter='CudaModelTest.*' > "$out/model.log" 2>&1
      echo "model: rc=$?"
      grep '^\[model\]' "$out/model.log" ;;
    sanitize)
      for tool in memcheck racecheck; do
        timeout "${SAN_TIMEOUT:-300}" compute-sanitizer --tool "$tool" --error-exitcode 99 \
          longctx_unit_tests --gtest_filter="$san_filter" >> "$out/sanitizer.log" 2>&1
        echo "$tool: rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out/sanitizer.log" | tail -1)"
      done ;;
    bench)
      {
        echo "## longctx-attention-bench, D 128 (32 q / 8 kv heads)"
        longctx-attention-bench --backend=cuda --lengths=8192,32768,131072 --heads=32 \
          --kv_heads=8 --head_dim=128 --decode_batch=1,32 --reps=3
        echo
        echo "## longctx-attention-bench, D 64 (9 q / 3 kv heads)"
        longctx-attention-bench --backend=cuda --lengths=8192,32768,131072 --heads=9 \
          --kv_heads=3 --head_dim=64 --decode_batch=1,32 --reps=3
        echo
        echo "## longctx-attention-bench --prefill_kernel=mma.sync (the portable tiled kernel)"
        longctx-attention-bench --backend=cuda --prefill_kernel=mma.sync \
          --lengths=8192,32768,131072 --heads=32 --kv_heads=8 --head_dim=128 --reps=3
        longctx-attention-bench --backend=cuda --prefill_kernel=mma.sync \
          --lengths=8192,32768,131072 --heads=9 --kv_heads=3 --head_dim=64 --reps=3
        echo
        echo "## PyTorch SDPA, D 128 (32 q / 8 kv heads)"
        python3 "$here/attention_sdpa.py" --lengths 8192,32768,131072 --heads 32 --kv-heads 8 \
          --head-dim 128 --reps 3
        echo
        echo "## PyTorch SDPA, D 64 (9 q / 3 kv heads)"
        python3 "$here/attention_sdpa.py" --lengths 8192,32768,131072 --heads 9 --kv-heads 3 \
          --head-dim 64 --reps 3
      } > "$out/bench.md" 2>&1
      echo "bench: rc=$?"
      grep -E '^(\| (prefill|flash|cudnn)|backend=)' "$out/bench.md" ;;
    profile)
      for k in DcaWgmma DcaSplitKernel; do
        timeout 240 ncu --clock-control none --kernel-name "regex:$k" --launch-skip 1 --launch-count 1 \
          --section SpeedOfLight --section WarpStateStats --section Occupancy \
          --section LaunchStats --section MemoryWorkloadAnalysis \
          longctx-attention-bench --backend=cuda --lengths=32768 --heads=32 --kv_heads=8 \
          --head_dim=128 --decode_batch=32 --reps=1 >> "$out/profile.log" 2>&1
        echo "profile $k: rc=$?"
      done ;;
    *)
      echo "unknown phase $phase" >&2 ;;
  esac
  echo "$phase took $(( $(date +%s) - start )) s"
done
