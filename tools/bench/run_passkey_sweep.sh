#!/usr/bin/env bash
# Passkey retrieval at the model's trained length c and at 4c for several DCA
# settings, on a GPU machine from prebuilt binaries (longctx-eval on PATH).
# Raw prompt (no chat template), 10 random keys per (length, depth) cell.
# Writes one Markdown table per setting into OUTDIR and prints them.
#
#   tools/bench/run_passkey_sweep.sh MODEL OUTDIR [C_LEN]     (C_LEN default 8192)
set -u
model=$1 out=$2 c=${3:-8192}
mkdir -p "$out"
common=(--backend=cuda --model="$model" --depths=0,25,50,75,100 --keys=10 --piece=4096
        --chat=false --pretrain_len="$c")
run() {
  local name=$1; shift
  local start=$(date +%s)
  longctx-eval passkey "${common[@]}" "$@" > "$out/passkey_$name.md" 2>&1
  echo "== $name ($*): rc=$? $(( $(date +%s) - start )) s"
  cat "$out/passkey_$name.md"
}
run rope_c --lengths=$c --modes=rope
run dca_default --lengths=$c,$((4 * c)) --modes=dca
run dca_C$((c / 2)) --lengths=$((4 * c)) --modes=dca --chunk_size=$((c / 2))
run dca_w$((c / 4)) --lengths=$((4 * c)) --modes=dca --local_window=$((c / 4))
run dca_w$((c / 16)) --lengths=$((4 * c)) --modes=dca --local_window=$((c / 16))
