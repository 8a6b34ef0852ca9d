#!/usr/bin/env bash
# longctxd as a context-parallel group on 2 GPUs (one process per GPU, TCP
# rendezvous, rank 0 serving gRPC) against longctxd on one GPU, through the
# `longctx` CLI:
#   1. the same book prefix (CHARS characters) is ingested into a session on
#      both; per-token scores of a continuation and a greedy answer are compared;
#   2. rank 1 is killed (SIGKILL): rank 0 must turn NOT_SERVING and fail the
#      next request with UNAVAILABLE within its collective timeout (20 s).
# Needs longctxd and longctx on PATH (a bundle from tools/dist/pack_bundle.sh).
#
#   tools/dist/server_group_check.sh MODEL BOOK OUTDIR [CHARS]
set -u
model=$1 book=$2 out=$3 chars=${4:-120000}
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0
timeout_s=20
head -c "$chars" "$book" > "$out/doc.txt"
tail -c +$((chars + 1)) "$book" | head -c 600 > "$out/next.txt"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done; }
trap cleanup EXIT

wait_serving() {  # port_file log pid
  for _ in $(seq 600); do
    [[ -s $1 ]] && break
    kill -0 "$3" 2>/dev/null || { echo "longctxd exited during start-up"; tail -20 "$2"; return 1; }
    sleep 0.2
  done
  export LONGCTX_SERVER=127.0.0.1:$(sed -n 's/^grpc=//p' "$1")
  for _ in $(seq 600); do
    longctx health > /dev/null 2>&1 && return 0
    kill -0 "$3" 2>/dev/null || { echo "longctxd exited while loading"; tail -20 "$2"; return 1; }
    sleep 0.2
  done
  echo "not serving after 120 s"; tail -20 "$2"; return 1
}

session() {  # name: ingest, score, ask into $out/NAME.*
  local name=$1 t0
  longctx info > "$out/$name.info"
  longctx create --id=doc > /dev/null
  t0=$(date +%s%N)
  longctx ingest doc "$out/doc.txt" 2> "$out/$name.ingest" > /dev/null
  echo "ingest_ms=$(( ($(date +%s%N) - t0) / 1000000 ))" >> "$out/$name.times"
  longctx get doc > "$out/$name.get"
  longctx score doc "$(cat "$out/next.txt")" --per-token > "$out/$name.score"
  t0=$(date +%s%N)
  longctx ask doc "Who is Stepan Arkadyevitch?" --max-tokens=32 --temperature=0 \
    > "$out/$name.answer" 2> "$out/$name.ask"
  echo "ask_ms=$(( ($(date +%s%N) - t0) / 1000000 ))" >> "$out/$name.times"
}

# 1. One GPU.
CUDA_VISIBLE_DEVICES=0 longctxd --model="$model" --backend=cuda --listen=127.0.0.1:0 \
  --metrics_listen= --port_file="$out/one.ports" --kv_cache_bytes=8GiB --durability=none \
  > "$out/one.log" 2>&1 &
one=$!
pids+=($one)
wait_serving "$out/one.ports" "$out/one.log" $one || exit 1
session one
kill -TERM $one
wait $one

# 2. Two GPUs: rank 1 first (it waits for rank 0's rendezvous endpoint).
group=(--model="$model" --backend=cuda --world_size=2 --rendezvous=tcp://127.0.0.1:29517
       --collective_timeout=${timeout_s}s --kv_cache_bytes=8GiB --metrics_listen=
       --durability=none)
CUDA_VISIBLE_DEVICES=1 longctxd "${group[@]}" --rank=1 --listen=127.0.0.1:0 > "$out/rank1.log" 2>&1 &
r1=$!
pids+=($r1)
CUDA_VISIBLE_DEVICES=0 longctxd "${group[@]}" --rank=0 --listen=127.0.0.1:0 \
  --metrics_listen=127.0.0.1:0 --port_file="$out/group.ports" > "$out/rank0.log" 2>&1 &
r0=$!
pids+=($r0)
wait_serving "$out/group.ports" "$out/rank0.log" $r0 || exit 1
session group
metrics_port=$(sed -n 's/^metrics=//p' "$out/group.ports")

python3 - "$out" <<'PY'
import sys, re
out = sys.argv[1]
def scores(name):
    rows = [l.split() for l in open(f"{out}/{name}.score") if re.match(r"^\s*\d+\s+-?\d", l)]
    return [(int(r[0]), float(r[1])) for r in rows]
a, b = scores("one"), scores("group")
same_ids = [x[0] for x in a] == [x[0] for x in b]
diff = max(abs(x[1] - y[1]) for x, y in zip(a, b)) if a and b else float("nan")
ans_a, ans_b = open(f"{out}/one.answer").read(), open(f"{out}/group.answer").read()
tokens = open(f"{out}/one.get").read().split()[1]
print(f"session tokens: {tokens}")
print(f"scored tokens: {len(a)} (one GPU) / {len(b)} (two); same ids: {same_ids}")
print(f"max |delta logprob| two vs one GPU: {diff:.4f}")
print(f"greedy answers identical: {ans_a == ans_b}")
print(f"one GPU answer: {ans_a.strip()[:200]!r}")
print(f"two GPU answer: {ans_b.strip()[:200]!r}")
PY
echo "one GPU:  $(tr '\n' ' ' < "$out/one.times")"
echo "two GPUs: $(tr '\n' ' ' < "$out/group.times")"
grep -h "backend" "$out/group.info"

# 3. Rank 1 dies.
kill -9 $r1
killed=$(date +%s%N)
state=SERVING
for _ in $(seq $(( (timeout_s + 30) * 5 ))); do
  if ! longctx health > /dev/null 2>&1; then state=NOT_SERVING; break; fi
  sleep 0.2
done
echo "after SIGKILL of rank 1: health $state after $(( ($(date +%s%N) - killed) / 1000000 )) ms"
t0=$(date +%s%N)
longctx ask doc "Who is Stepan Arkadyevitch?" --max-tokens=4 --temperature=0 \
  > /dev/null 2> "$out/after_kill.err"
echo "a request after the loss: rc=$? in $(( ($(date +%s%N) - t0) / 1000000 )) ms:" \
  "$(tr '\n' ' ' < "$out/after_kill.err" | cut -c1-200)"
sleep 2  # rank 0 checks the group's health every second
curl -s "127.0.0.1:$metrics_port/metrics" 2>/dev/null | grep '^longctx_server_state' || true
kill -0 $r0 2>/dev/null && echo "rank 0 still running (NOT_SERVING), as designed"
grep -h "group is broken" "$out/rank0.log" | head -2
kill -TERM $r0
wait $r0
echo "rank 0 exit status after SIGTERM: $?"

# 4. A clean stop: SIGTERM to both ranks of a fresh group (as Kubernetes does);
#    rank 0 drains and ends the group, rank 1 exits when it is told.
rm -f "$out/group2.ports"
CUDA_VISIBLE_DEVICES=1 longctxd "${group[@]}" --rank=1 --listen=127.0.0.1:0 > "$out/stop_rank1.log" 2>&1 &
s1=$!
pids+=($s1)
CUDA_VISIBLE_DEVICES=0 longctxd "${group[@]}" --rank=0 --listen=127.0.0.1:0 \
  --port_file="$out/group2.ports" > "$out/stop_rank0.log" 2>&1 &
s0=$!
pids+=($s0)
wait_serving "$out/group2.ports" "$out/stop_rank0.log" $s0 || exit 1
longctx create --id=doc2 > /dev/null && longctx ingest doc2 "$out/next.txt" > /dev/null 2>&1
t0=$(date +%s%N)
kill -TERM $s1 $s0
wait $s0; rc0=$?
wait $s1; rc1=$?
echo "clean stop of a group: rank 0 exit $rc0, rank 1 exit $rc1 after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
grep -h "rank 0 ended the group" "$out/stop_rank1.log" | head -1
