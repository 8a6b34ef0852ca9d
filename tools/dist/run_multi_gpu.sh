#!/usr/bin/env bash
# Multi-GPU checks of context-parallel sessions (docs/design.md §7) on a machine with two
# or more GPUs, from a bundle made by tools/dist/pack_bundle.sh. Every phase logs
# to OUTDIR, a failing phase does not stop the others, and a summary closes the
# run (also in OUTDIR/summary.txt). Each phase has a time cap; a phase whose cap
# would take the run past BUDGET_S seconds (default 530) is skipped, so the
# default phases fit one 10-minute device call. Phases, in the order given
# (default: cuda nccl logits fail synthetic):
#   cpu        the CPU-side context-parallel tests (merge, placement,
#              rendezvous, in-process ranks; the real model when MODEL exists)
#   cuda       the CUDA partial attention and merge kernels against the CPU
#              references, and thread-ranks on one GPU against one backend
#   nccl       NcclCommunicator on two GPUs: device collectives and a silent
#              peer turning into UNAVAILABLE (tests/dist_nccl_test.cc)
#   logits     the real model (MODEL) as a context-parallel session over 2 GPUs
#              (NCCL, one process per GPU, file rendezvous) vs the home GPU
#              alone, at 32k and 128k tokens: max |Δlogit| / max |logit|, argmax
#   fail       a 2-GPU session whose worker process is killed (SIGKILL) in the
#              middle: the home must fail with UNAVAILABLE within its collective
#              timeout (20 s) instead of hanging
#   synthetic  Llama-2-7B-shaped model with random bf16 weights: prefill of 128k,
#              192k and 256k tokens on 2 GPUs vs 1 (1 only where its KV holds
#              the session: a longer one is the capacity check), per-layer
#              broadcast / partial attention / gather times
#   synthetic-small  the same with the SmolLM2-135M shape (random weights) at
#              128k and 256k tokens, where attention dominates the prefill
#   bench      the collectives of one layer alone at Llama-2-7B shapes
#   server     longctxd as a 2-GPU group vs one GPU through gRPC, then rank 1
#              killed (tools/dist/server_group_check.sh; needs BOOK, a text
#              file, and longctxd and longctx in the bundle)
#
#   MODEL=/tmp/model.gguf tools/dist/run_multi_gpu.sh BUNDLE OUTDIR [PHASE...]
set -u
bundle=$(cd "$1" && pwd)
out=$2
shift 2
phases=("$@")
[[ ${#phases[@]} -eq 0 ]] && phases=(cuda nccl logits fail synthetic)
budget=${BUDGET_S:-530}
run_start=$(date +%s)
declare -A cap=([cpu]=150 [cuda]=90 [nccl]=60 [logits]=100 [fail]=50 [synthetic]=230
                [synthetic-small]=120 [bench]=60 [server]=300)
mkdir -p "$out"
out=$(cd "$out" && pwd)
model=${MODEL:-/tmp/model.gguf}

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
[[ -f $model ]] && export LONGCTX_MODEL=$model
{
  date -u
  nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv
  nvidia-smi topo -m
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  echo "MODEL=$model ($([[ -f $model ]] && echo present || echo MISSING))"
  ldd "$bundle/bin/longctx_unit_tests" | grep -E 'nccl|cublas|cudart|not found'
} > "$out/env.log" 2>&1

summary=()
note() {
  echo "$*"
  summary+=("$*")
}
gtest_line() {  # the PASSED/FAILED/SKIPPED totals of a gtest log, on one line
  grep -E '^\[  (PASSED|FAILED|SKIPPED) *\] [0-9]+ test' "$1" | tr -s ' ' | tr '\n' ' '
}

# Runs the bench on 2 GPUs, one process per GPU, with a fresh file rendezvous.
# Rank 0 writes $out/$name.md, rank 1 $out/$name.rank1.log. Extra args go to both.
two_ranks() {
  local name=$1 limit=$2
  shift 2
  local rdv="$out/$name.rdv"
  rm -f "$rdv"
  local args=(--mode=model --comm=nccl --world_size=2 --rendezvous="file://$rdv" "$@")
  timeout "$limit" longctx-dist-bench "${args[@]}" --rank=1 > "$out/$name.rank1.log" 2>&1 &
  local pid1=$!
  timeout "$limit" longctx-dist-bench "${args[@]}" --rank=0 > "$out/$name.md" 2>&1
  local rc0=$?
  wait $pid1
  local rc1=$?
  echo "$rc0 $rc1"
}

for phase in "${phases[@]}"; do
  start=$(date +%s)
  limit=${cap[$phase]:-60}
  if (( start - run_start + limit > budget )); then
    note "$phase: SKIPPED, its ${limit} s cap would pass BUDGET_S=$budget"
    continue
  fi
  case $phase in
    cpu)
      timeout "$limit" longctx_unit_tests --gtest_filter='AttentionMerge*:Dist*:-DistNccl*' \
        > "$out/cpu.log" 2>&1
      note "cpu: rc=$? $(gtest_line "$out/cpu.log")" ;;
    cuda)
      timeout "$limit" longctx_unit_tests \
        --gtest_filter='*CudaAttentionPartial*:*CudaAttentionMerge*:*CudaAttentionPlan*:*CudaContextParallel*' \
        > "$out/cuda.log" 2>&1
      note "cuda: rc=$? $(gtest_line "$out/cuda.log")" ;;
    nccl)
      NCCL_DEBUG=WARN timeout "$limit" longctx_unit_tests --gtest_filter='DistNccl*' \
        > "$out/nccl.log" 2>&1
      note "nccl: rc=$? $(gtest_line "$out/nccl.log")" ;;
    logits)
      if [[ ! -f $model ]]; then
        note "logits: SKIPPED, no model at $model"
      else
        read -r rc0 rc1 < <(two_ranks logits "$limit" --model="$model" --contexts=32768,131072 \
          --step=8192)
        cat "$out/logits.md"
        note "logits: rc=$rc0/$rc1 $(grep -cE '\| same \|' "$out/logits.md") of 2 argmax agree;" \
          "$(grep -E '^\| [0-9]+ \| 2 \|' "$out/logits.md" | awk -F'|' '{printf "%s tokens: %s; ", $2, $10}')"
      fi ;;
    fail)
      if [[ ! -f $model ]]; then
        note "fail: SKIPPED, no model at $model"
      else
        rdv="$out/fail.rdv"
        rm -f "$rdv"
        args=(--mode=model --comm=nccl --world_size=2 --rendezvous="file://$rdv"
              --model="$model" --contexts=131072 --step=512 --single=false --print_steps
              --collective_timeout_s=20)
        # No timeout wrapper: $! must be the worker itself, the process killed below.
        longctx-dist-bench "${args[@]}" --rank=1 > "$out/fail.rank1.log" 2>&1 &
        pid1=$!
        timeout "$limit" longctx-dist-bench "${args[@]}" --rank=0 > "$out/fail.log" 2>&1 &
        pid0=$!
        # Kill the worker once the session has made progress.
        for _ in $(seq 1 300); do
          (( $(grep -c '^step done' "$out/fail.log") >= 3 )) && break
          kill -0 $pid0 2>/dev/null || break
          sleep 0.2
        done
        killed_at=$(date +%s%N)
        kill -9 $pid1 2>/dev/null
        wait $pid1 2>/dev/null
        wait $pid0
        rc0=$?
        took=$(( ($(date +%s%N) - killed_at) / 1000000 ))
        if grep -q 'UNAVAILABLE' "$out/fail.log"; then verdict=UNAVAILABLE; else verdict="no UNAVAILABLE"; fi
        note "fail: worker killed after $(grep -c '^step done' "$out/fail.log") steps; home rc=$rc0" \
          "after ${took} ms: $verdict ($(grep -m1 -o 'UNAVAILABLE.*' "$out/fail.log" | cut -c1-160))"
      fi ;;
    synthetic)
      read -r rc0 rc1 < <(two_ranks synthetic "$limit" --model=synthetic-llama2-7b \
        --contexts=131072,196608,262144 --step=8192)
      cat "$out/synthetic.md"
      note "synthetic: rc=$rc0/$rc1"
      while read -r line; do note "  $line"; done < <(grep -E '^\| [0-9]+ \|' "$out/synthetic.md")
      ;;
    synthetic-small)
      read -r rc0 rc1 < <(two_ranks synthetic-small "$limit" --model=synthetic:smollm2-135m \
        --contexts=131072,262144 --step=8192)
      cat "$out/synthetic-small.md"
      note "synthetic-small: rc=$rc0/$rc1"
      while read -r line; do note "  $line"; done < <(grep -E '^\| [0-9]+ \|' "$out/synthetic-small.md")
      ;;
    server)
      if [[ ! -f $model || ! -f ${BOOK:-} ]]; then
        note "server: SKIPPED, needs MODEL ($model) and BOOK (${BOOK:-unset})"
      else
        timeout "$limit" "$(dirname "$0")/server_group_check.sh" "$model" "$BOOK" "$out/server" \
          > "$out/server.log" 2>&1
        rc=$?
        cat "$out/server.log"
        note "server: rc=$rc"
        while read -r line; do note "  $line"; done < <(grep -E '^(session|scored|max|greedy|after|a request|one GPU:|two GPUs:|clean stop)' "$out/server.log")
      fi ;;
    bench)
      for r in 1 0; do  # rank 0 last, in the foreground: it prints the table
        args=(--comm=nccl --world_size=2 --rank=$r --rendezvous=tcp://127.0.0.1:29511
              --tokens=1,512,2048,8192 --reps=20)
        if [[ $r -eq 0 ]]; then
          timeout "$limit" longctx-dist-bench "${args[@]}" > "$out/bench.md" 2>&1
          rc=$?
        else
          timeout "$limit" longctx-dist-bench "${args[@]}" > "$out/bench_rank1.log" 2>&1 &
        fi
      done
      wait
      cat "$out/bench.md"
      note "bench: rc=$rc" ;;
    *)
      note "unknown phase $phase" ;;
  esac
  note "  ($phase took $(( $(date +%s) - start )) s)"
done

echo
echo "=== summary ==="
printf '%s\n' "${summary[@]}" | tee "$out/summary.txt"
