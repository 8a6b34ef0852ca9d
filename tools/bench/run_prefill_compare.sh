#!/usr/bin/env bash
# Prefill of longctx against its baselines on one GPU, in one run, both sides
# measured the same way: at every length one untimed run, then the median of
# timed runs (REPEATS, default 3, end to end; ATTN_REPS, default 5, attention
# alone). All phases together stop within BUDGET_S seconds (default 500), each
# under its own time limit too; a failing phase does not stop the others.
# Writes each program's output (OUTDIR/<phase>.md) and log (<phase>.log), then
# OUTDIR/<date>-<device>-prefill.json (tools/bench/perf_json.py), and prints a
# summary.
#
#   tools/bench/run_prefill_compare.sh BUNDLE OUTDIR [MODEL]
#
# MODEL "synthetic" runs the default model's shape with random weights on both
# sides (longctx-bench --model=synthetic:smollm2-135m, transformers
# --models smollm2-135m) where the model file is not on the machine; the
# ingest phase, which needs its tokenizer, is skipped then. PREV_BENCH names a
# longctx-bench of an earlier build: the phase lc_prev runs it and the
# bundle's, alternately, twice each, on the default model (prefill and decode
# of the same call; logs only, prev_*.txt, not in the JSON).
#
# BUNDLE: longctx-bench and longctx-attention-bench of the CUDA build, packed
# here with tools/dist/pack_bundle.sh (which writes env.sh and the commit the
# binaries were built from), and the wheel of the `gguf` package, which
# transformers needs to load the default model (docs/benchmarks.md, "Prefill
# against the baselines"). MODEL: the default model (GGUF), /tmp/model.gguf
# unless given.
#
# Phases, at 8k, 32k and 128k tokens unless said:
#   attn_d128, attn_d64  longctx-attention-bench: causal prefill of one
#                        sequence, DCA and RoPE, D 128 (32 q / 8 kv heads) and
#                        D 64 (9 / 3); again with each --prefill_kernel named
#                        in KERNELS (e.g. "wgmma-overlapped mma.sync"), rows of
#                        their own in the JSON
#   sdpa_d128, sdpa_d64  attention_sdpa.py: PyTorch SDPA flash and cuDNN, the
#                        same shapes and FLOP count
#   lc_default, lc_7b    longctx-bench --backend=cuda: prefill of one session
#                        in pieces of 8192, then DECODE (default 32) batch-1
#                        decode steps with step graphs; the default model, and
#                        the Llama-2-7B shape with random weights at 8k and 32k
#   hf_default, hf_7b    hf_transformers_bench.py: transformers, sdpa, bf16,
#                        batch 1, the same models and lengths
#   ingest               (with DOCUMENT and a bundle holding longctxd,
#                        longctx and longctx-loadgen) ingest_bench.py: 540 kB
#                        of DOCUMENT streamed into one session in 2 kB and
#                        32 kB segments against longctx-bench's prefill of as
#                        many tokens; OUTDIR/ingest.json
set -u
bundle=$(cd "$1" && pwd)
out=$2
model=${3:-/tmp/model.gguf}
repeats=${REPEATS:-3}
attn_reps=${ATTN_REPS:-5}
decode=${DECODE:-32}
bench_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
# shellcheck disable=SC1091
source "$bundle/env.sh"  # PATH and LD_LIBRARY_PATH
t_start=$(date +%s)
deadline=$((t_start + ${BUDGET_S:-500}))
run_date=$(date -u +%Y-%m-%dT%H:%M:%S+00:00)
commit=$(cat "$bundle/commit" 2> /dev/null || git -C "$bench_dir" rev-parse HEAD 2> /dev/null ||
  echo unknown)
IFS=',' read -r device driver < <(nvidia-smi --query-gpu=name,driver_version \
  --format=csv,noheader 2> /dev/null | head -n 1)
device=$(echo "${device:-unknown}" | xargs)
driver=$(echo "${driver:-unknown}" | xargs)

# transformers loads a GGUF file only with the gguf package; the bundle has its
# wheel (pure Python; numpy and pyyaml, which transformers needs too).
if ! python3 -c 'import gguf' 2> /dev/null; then
  wheel=$(find "$bundle/wheels" -name 'gguf-*.whl' 2> /dev/null | head -n 1)
  if [[ -n $wheel ]]; then
    pylib=$(mktemp -d)
    python3 -m pip install --quiet --no-deps --no-index --target "$pylib" "$wheel" \
      > "$out/pip.log" 2>&1 || pylib=$wheel  # a pure-Python wheel imports as a zip too
    export PYTHONPATH=$pylib${PYTHONPATH:+:$PYTHONPATH}
  fi
fi

{
  echo "$run_date"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  echo "commit $commit"
  python3 -c 'import torch, transformers
print("torch", torch.__version__, "transformers", transformers.__version__)'
  python3 -c 'import gguf, importlib.metadata as m; print("gguf", m.version("gguf"))' 2>&1 |
    tail -n 1
  ls -l "$model"
  echo "REPEATS=$repeats ATTN_REPS=$attn_reps DECODE=$decode BUDGET_S=${BUDGET_S:-500}"
} > "$out/env.log" 2>&1

cap() {  # limit: the limit, or less where the budget has less left
  local left=$((deadline - $(date +%s)))
  echo $(($1 < left ? $1 : left))
}

phase() {  # name limit command...
  local name=$1 limit=$2
  shift 2
  if ((limit < 15)); then
    echo "$name: skipped, budget spent" | tee -a "$out/phases.log"
    return
  fi
  local t0
  t0=$(date +%s)
  timeout -k 10 "$limit" "$@" > "$out/$name.md" 2> "$out/$name.log"
  local rc=$?
  echo "$name: rc=$rc ($(($(date +%s) - t0)) s, limit $limit s)" | tee -a "$out/phases.log"
}

lengths=8192,32768,131072
for shape in "128 32 8" "64 9 3"; do
  read -r D H KV <<< "$shape"
  phase "attn_d$D" "$(cap 60)" longctx-attention-bench --backend=cuda --lengths=$lengths \
    --heads="$H" --kv_heads="$KV" --head_dim="$D" --reps="$attn_reps"
  for kernel in ${KERNELS:-}; do
    phase "attn_d${D}_$kernel" "$(cap 60)" longctx-attention-bench --backend=cuda \
      --lengths=$lengths --heads="$H" --kv_heads="$KV" --head_dim="$D" --reps="$attn_reps" \
      --prefill_kernel="$kernel"
  done
  phase "sdpa_d$D" "$(cap 75)" python3 "$bench_dir/attention_sdpa.py" --lengths $lengths \
    --heads "$H" --kv-heads "$KV" --head-dim "$D" --reps "$attn_reps"
done

lc_model=$model hf_model=default hf_gguf=(--gguf "$model")
if [[ $model == synthetic ]]; then
  lc_model=synthetic:smollm2-135m hf_model=smollm2-135m hf_gguf=()
fi
phase lc_default "$(cap 90)" longctx-bench --backend=cuda --model="$lc_model" --lengths=$lengths \
  --batch=1 --decode="$decode" --chunk=8192 --graphs=on --repeats="$repeats"
if [[ -n ${PREV_BENCH:-} ]]; then
  # The earlier build ($0), then this one, twice.
  # shellcheck disable=SC2016
  phase lc_prev "$(cap 120)" bash -c 'for round in 1 2; do for bin in "$0" longctx-bench; do
      echo "## $bin, round $round"; "$bin" "$@"; done; done' "$PREV_BENCH" --backend=cuda \
    --model="$lc_model" --lengths=$lengths --batch=1 --decode="$decode" --chunk=8192 \
    --graphs=on --repeats="$repeats" --copy_mib=0
  [[ -f $out/lc_prev.md ]] && mv "$out/lc_prev.md" "$out/prev_lc_default.txt"
fi
phase lc_7b "$(cap 100)" longctx-bench --backend=cuda --model=synthetic:llama2-7b \
  --lengths=8192,32768 --batch=1 --decode="$decode" --chunk=8192 --graphs=on --repeats="$repeats"

# A ~128k-token document through longctxd's Ingest against the engine's own
# prefill (tools/bench/ingest_bench.py), where the bundle has the server and
# DOCUMENT names a text file of at least 540 kB.
if [[ -x $bundle/bin/longctxd && -x $bundle/bin/longctx-loadgen && -n ${DOCUMENT:-} &&
  $model != synthetic ]]; then
  phase ingest "$(cap 170)" python3 "$bench_dir/ingest_bench.py" --bin="$bundle/bin" \
    --model="$model" --backend=cuda --document="$DOCUMENT" --doc_bytes=540000 \
    --segment_bytes=2048,32768 --rounds=2 --commit="$commit" --out="$out/ingest.json"
fi

# The transformers script stops starting lengths 45 s before its limit, so its
# table is printed even when a length is slow.
limit=$(cap 150)
phase hf_default "$limit" python3 "$bench_dir/hf_transformers_bench.py" "${hf_gguf[@]}" \
  --models "$hf_model" --lengths $lengths --decode "$decode" --repeats "$repeats" \
  --time-budget $((limit - 45))
limit=$(cap 150)
phase hf_7b "$limit" python3 "$bench_dir/hf_transformers_bench.py" --models llama2-7b \
  --lengths 8192,32768 --decode "$decode" --repeats "$repeats" --time-budget $((limit - 45))

method="Both sides at every length: one untimed run, then the median of $repeats timed runs \
(attention: $attn_reps). Prefill: one session, batch 1, random token ids; longctx-bench in pieces \
of 8192 tokens, transformers (sdpa, bf16, DynamicCache) in one forward call. Decode: batch 1 \
after 3 untimed steps, $decode timed steps (longctx: one series, step graphs on; transformers: \
median of $repeats series). Attention: causal, one sequence, bf16 K/V, GQA, \
FLOPs 4*D*H*T*(T+1)/2 on both sides. Logs: the *.md and *.log files of the run."

{
  echo "# Summary ($(date -u), $(($(date +%s) - t_start)) s)"
  echo
  cat "$out/phases.log"
  echo
  grep -E '^(backend=|device=|- |NOTE|Prefill:)' "$out"/*.md | sed "s|^$out/||"
  for f in "$out"/*.log; do
    grep -HE 'Error|error|Traceback|RESOURCE|INTERNAL|out of memory' "$f" | tail -n 3 |
      sed "s|^$out/||"
  done
  echo
  python3 "$bench_dir/perf_json.py" "$out" --device "$device" --driver "$driver" \
    --commit "$commit" --date "$run_date" --method "$method" --markdown
} 2>&1 | tee "$out/summary.txt"
