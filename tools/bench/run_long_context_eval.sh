#!/usr/bin/env bash
# Long-context evaluation on a GPU machine from prebuilt binaries (longctx-eval on
# PATH): perplexity by length and passkey retrieval, plain RoPE vs DCA, on the
# default model. Writes Markdown tables and JSON lines into OUTDIR.
#
#   tools/bench/run_long_context_eval.sh MODEL BOOK OUTDIR [LENGTHS]
set -u
model=$1 book=$2 out=$3
lengths=${4:-1024,2048,4096,8192,16384,32768,65536,131072}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/env.log" 2>&1
start=$(date +%s)
longctx-eval ppl --backend=cuda --model="$model" --text="$book" --lengths="$lengths" \
  --windows=2 --piece=2048 > "$out/ppl.md" 2>&1
echo "ppl: rc=$? $(( $(date +%s) - start )) s"
start=$(date +%s)
longctx-eval passkey --backend=cuda --model="$model" --lengths="$lengths" \
  --depths=0,25,50,75,100 --keys=3 --piece=2048 > "$out/passkey.md" 2>&1
echo "passkey: rc=$? $(( $(date +%s) - start )) s"
cat "$out/ppl.md" "$out/passkey.md"
