#!/usr/bin/env bash
# Starts a longctxd binary on loopback, waits until it serves, streams the
# sample chapter into a session and asks a question (`longctx qa`), scrapes the
# metrics endpoint and stops the server with SIGTERM. CI runs it on the CUDA
# build with the CPU backend (that process carries the CUDA libraries, whose
# static TLS once kept the metrics endpoint from starting); on a GPU machine it
# runs with BACKEND=cuda.
#   [BACKEND=cpu|cuda] scripts/smoke_server.sh BUILD_DIR MODEL
set -euo pipefail
build=$1
model=$2
backend=${BACKEND:-cpu}
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
pid=
cleanup() {
  if [[ -n $pid ]] && kill -0 "$pid" 2> /dev/null; then kill -KILL "$pid" 2> /dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "smoke_server: $*" >&2; cat "$tmp/log" >&2; exit 1; }

"$build/bin/longctxd" --model="$model" --backend="$backend" --listen=127.0.0.1:0 \
  --metrics_listen=127.0.0.1:0 --port_file="$tmp/ports" --state_dir="$tmp/state" > "$tmp/log" 2>&1 &
pid=$!
for _ in $(seq 300); do
  [[ -s $tmp/ports ]] && break
  kill -0 "$pid" 2> /dev/null || fail "longctxd exited during start-up"
  sleep 0.1
done
[[ -s $tmp/ports ]] || fail "no port file after 30 s"
export LONGCTX_SERVER=127.0.0.1:$(sed -n 's/^grpc=//p' "$tmp/ports")
metrics_port=$(sed -n 's/^metrics=//p' "$tmp/ports")
for _ in $(seq 120); do
  "$build/bin/longctx" health > /dev/null 2>&1 && break
  kill -0 "$pid" 2> /dev/null || fail "longctxd exited while loading the model"
  sleep 0.5
done
"$build/bin/longctx" health > /dev/null || fail "not serving after 60 s"
"$build/bin/longctx" info | sed 's/^/  /'
start=$(date +%s%N)
"$build/bin/longctx" qa "$here/sample_chapter.txt" "Who is the chapter about?" --max-tokens=32 \
  > "$tmp/answer" 2> "$tmp/progress" || { cat "$tmp/progress" >&2; fail "longctx qa failed"; }
tr '\r' '\n' < "$tmp/progress" | grep -v '^$' | tail -n 2 | sed 's/^/  /'
echo "  answer ($(( ($(date +%s%N) - start) / 1000000 )) ms for ingest + answer): $(tr '\n' ' ' < "$tmp/answer")"
curl -sf "http://127.0.0.1:$metrics_port/metrics" > "$tmp/metrics" || fail "metrics scrape failed"
grep -q '^longctx_generation_tokens_total [1-9]' "$tmp/metrics" ||
  fail "longctx_generation_tokens_total did not move"
kill -TERM "$pid"
wait "$pid" || fail "longctxd exited with status $? after SIGTERM"
pid=
echo "smoke_server: $build/bin/longctxd ($backend) answered, exported metrics, stopped cleanly"
