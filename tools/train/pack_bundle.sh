#!/usr/bin/env bash
# Packs what tools/train/gpu_train.sh needs on a GPU machine that has PyTorch
# but neither the C++ build, the gguf package nor the model, in two folders of
# at most ~55 MB each (DEST-a, DEST-b), for machines that take one such folder
# per call:
#   DEST-a: the first half of the model file
#   DEST-b: its second half, the books' token ids (longctx-eval tokens), the
#           engine's per-token losses at the real settings (check_equivalence
#           --eval, CPU backend) and the gguf wheel
#
#   tools/train/pack_bundle.sh MODEL TRAIN_BOOK EVAL_BOOK [DEST]
# Needs build/bin/longctx-eval and a Python with torch, gguf and numpy (PYTHON,
# default python3). DEST defaults to .trainbundle in the repository root.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
model=$1 train_book=$2 eval_book=$3 dest=${4:-$root/.trainbundle}
py=${PYTHON:-python3}
eval_bin=${LONGCTX_EVAL:-$root/build/bin/longctx-eval}
# LONGCTX_LOCK=FILE runs each engine call under flock FILE (a machine whose cores are shared).
lock=()
[[ -n ${LONGCTX_LOCK:-} ]] && lock=(--lock="$LONGCTX_LOCK")
rm -rf "$dest-a" "$dest-b"
mkdir -p "$dest-a" "$dest-b/wheels"
size=$(stat -c %s "$model")
half=$(( (size + 1) / 2 ))
head -c "$half" "$model" > "$dest-a/model.gguf.part1"
tail -c +"$(( half + 1 ))" "$model" > "$dest-b/model.gguf.part2"
sha256sum < "$model" | cut -d' ' -f1 > "$dest-b/model.sha256"
"$eval_bin" tokens --model="$model" --text="$train_book" --out="$dest-b/train.i32"
"$eval_bin" tokens --model="$model" --text="$eval_book" --out="$dest-b/eval.i32"
# The engine's losses at the settings of issue #18's acceptance (c = 2048, W = 2560,
# 64 sinks) over 5120 tokens: 4 chunks, the memory read from the third on.
"$py" "$root/tools/train/check_equivalence.py" --model="$model" --eval="$eval_bin" \
  --text="$eval_book" --work="$dest-b/eq" --length=5120 --pretrain_len=2048 --chunk_size=0 \
  --local_window=0 --window=2560 --sinks=64 --betas=-2 --no_full "${lock[@]}" --engine_only
"$py" -m pip download -q --no-deps --dest "$dest-b/wheels" gguf==0.19.0
du -sh "$dest-a" "$dest-b"
