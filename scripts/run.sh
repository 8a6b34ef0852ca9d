#!/usr/bin/env bash
# The run command: installs what the build needs and the default model, builds
# longctxd and the longctx client, starts the server on the default model,
# streams a book chapter into a session, asks a question, prints the streamed
# answer and stops the server.
#
#   scripts/run.sh [FILE [QUESTION]]
#
# FILE defaults to scripts/sample_chapter.txt (Anna Karenina, chapter 1).
# Environment: BUILD_DIR (default build-run), LONGCTX_MODELS (model directory),
# MAX_TOKENS (default 96). Extra longctxd settings may come as LONGCTX_<NAME>
# variables (longctxd --help lists them).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=${BUILD_DIR:-build-run}
file=${1:-scripts/sample_chapter.txt}
question=${2:-"Summarize this chapter in two sentences."}

step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

step "setting up (packages, default model)"
"$root/scripts/setup.sh" --no-model
model=$("$root/scripts/fetch_model.sh" | tail -n 1)
echo "model: $model" >&2

step "building longctxd and longctx"
cuda=OFF
if command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1; then cuda=ON; fi
mkdir -p "$build"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLONGCTX_CUDA=$cuda \
  -DLONGCTX_TESTS=OFF > "$build/cmake.log" 2>&1 || { cat "$build/cmake.log" >&2; exit 1; }
cmake --build "$build" -j "$(nproc)" --target longctxd longctx

step "starting longctxd"
tmp=$(mktemp -d)
server_pid=
cleanup() {
  if [[ -n $server_pid ]] && kill -0 "$server_pid" 2> /dev/null; then
    kill -TERM "$server_pid" 2> /dev/null || true
    wait "$server_pid" 2> /dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
"$build/bin/longctxd" --model="$model" --listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0 \
  --port_file="$tmp/ports" --state_dir="$tmp/state" > "$tmp/longctxd.log" 2>&1 &
server_pid=$!
for _ in $(seq 600); do
  [[ -s $tmp/ports ]] && break
  kill -0 "$server_pid" 2> /dev/null || { cat "$tmp/longctxd.log" >&2; exit 1; }
  sleep 0.1
done
export LONGCTX_SERVER=127.0.0.1:$(sed -n 's/^grpc=//p' "$tmp/ports")
metrics_port=$(sed -n 's/^metrics=//p' "$tmp/ports")
cli="$build/bin/longctx"
# Listening at once, serving once the model is loaded.
until "$cli" health > /dev/null 2>&1; do
  kill -0 "$server_pid" 2> /dev/null || { cat "$tmp/longctxd.log" >&2; exit 1; }
  sleep 0.5
done
echo "longctxd is serving on $LONGCTX_SERVER (metrics on port $metrics_port)" >&2
"$cli" info >&2

step "streaming $file into a new session"
session=$("$cli" create --label source=run.sh)
echo "session: $session" >&2
"$cli" ingest "$session" "$file" --segment-bytes=1024

step "asking: $question"
# Light sampling and a repetition penalty keep a small model from repeating
# itself; the seed makes the answer repeatable.
"$cli" ask "$session" "$question" --max-tokens="${MAX_TOKENS:-96}" --temperature=0.3 --top-p=0.9 \
  --repetition-penalty=1.2 --seed=1

step "stopping longctxd"
"$cli" delete "$session"
kill -TERM "$server_pid"
status=0
wait "$server_pid" || status=$?
server_pid=
grep -E '"(msg)":"(draining|stopped)"| (draining|stopped) ' "$tmp/longctxd.log" >&2 || true
echo "longctxd exited with status $status" >&2
exit "$status"
