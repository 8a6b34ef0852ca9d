#!/usr/bin/env bash
# On one GPU: checks tools/train's model against the engine's losses at the
# real settings, then trains the Infini gates for a bounded time and reports
# SLIDE vs COMPRESS with the trained memory on the evaluation book.
#
#   tools/train/gpu_train.sh BUNDLE OUTDIR [MINUTES]
#
# BUNDLE is a folder with model.gguf (or model.gguf.part2 and, there or at
# $PART1, model.gguf.part1: joined and checked against model.sha256),
# train.i32, eval.i32, eq/ and wheels/ (tools/train/pack_bundle.sh makes them:
# the part1 folder and the rest, for machines that take at most ~60 MB per
# call: copy part1 to /tmp in one call, run this in the next). MINUTES (default 5) bounds
# the training loop; with the checks around it the script ends within about
# MINUTES + 3 minutes. Settings: c = 2048 (C = 1536, L = 1280), W = 2560,
# 64 sinks, linear update, sequences of 10240 tokens (4 windows). Env:
# LORA_RANK (default 0: gates only), RULE (linear), SEQ_LEN (10240), DEVICE
# (cuda), EXTRA (more train_gates.py flags; later flags win). Writes into OUTDIR: env.log, equivalence.md and
# .json, train.log, log.jsonl, gates.safetensors (with LORA_RANK: lora.safetensors, and
# model-lora.gguf with model-lora.infini_gates.safetensors, the deltas merged by merge_lora.py).
set -uo pipefail
bundle=$1 out=$2 minutes=${3:-5}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
export PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)'
} > "$out/env.log" 2>&1
cat "$out/env.log"
if ! python3 -c 'import gguf' 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/train-site "$bundle"/wheels/*.whl || exit 1
  export PYTHONPATH=/tmp/train-site${PYTHONPATH:+:$PYTHONPATH}
fi
model=$bundle/model.gguf
if [[ ! -f $model ]]; then
  model=/tmp/train-model.gguf
  cat "${PART1:-$bundle/model.gguf.part1}" "$bundle/model.gguf.part2" > "$model" || exit 1
  [[ $(sha256sum < "$model" | cut -d' ' -f1) == $(cat "$bundle/model.sha256") ]] ||
    { echo "gpu_train: the joined model does not match model.sha256" >&2; exit 1; }
fi

start=$(date +%s)
timeout 150 python3 "$here/check_equivalence.py" --model="$model" --reference="$bundle/eq" \
  --device="${DEVICE:-cuda}" --out="$out/equivalence.json" 2>&1 | tee "$out/equivalence.md"
echo "equivalence: rc=${PIPESTATUS[0]} $(( $(date +%s) - start )) s"

start=$(date +%s)
# shellcheck disable=SC2086
timeout $(( minutes * 60 + 120 )) python3 "$here/train_gates.py" --model="$model" \
  --tokens="$bundle/train.i32" --eval_tokens="$bundle/eval.i32" --out="$out" \
  --device="${DEVICE:-cuda}" \
  --pretrain_len=2048 --window=2560 --sinks=64 --rule="${RULE:-linear}" \
  --seq_len="${SEQ_LEN:-10240}" --minutes="$minutes" --lora_rank="${LORA_RANK:-0}" \
  ${EXTRA:-} 2>&1 | tee "$out/train.log" | grep -v '^step=[0-9]* loss=' 
echo "train: rc=${PIPESTATUS[0]} $(( $(date +%s) - start )) s"
tail -n 3 "$out/train.log"
if [[ ${LORA_RANK:-0} -gt 0 && -f $out/lora.safetensors ]]; then
  python3 "$here/merge_lora.py" --model="$model" --lora="$out/lora.safetensors" \
    --gates="$out/gates.safetensors" --out="$out/model-lora.gguf"
  echo "merge: rc=$?"
fi
