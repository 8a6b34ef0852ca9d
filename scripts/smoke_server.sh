#!/usr/bin/env bash
# Starts a longctxd binary on loopback with the CPU backend, waits until it
# serves, scrapes its metrics endpoint and stops it with SIGTERM. Used on the
# CUDA build, whose process carries the CUDA libraries even when serving on
# the CPU (their static TLS once kept the metrics endpoint from starting).
#   scripts/smoke_server.sh BUILD_DIR MODEL
set -euo pipefail
build=$1
model=$2
tmp=$(mktemp -d)
pid=
cleanup() {
  if [[ -n $pid ]] && kill -0 "$pid" 2> /dev/null; then kill -KILL "$pid" 2> /dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "smoke_server: $*" >&2; cat "$tmp/log" >&2; exit 1; }

"$build/bin/longctxd" --model="$model" --backend=cpu --listen=127.0.0.1:0 \
  --metrics_listen=127.0.0.1:0 --port_file="$tmp/ports" > "$tmp/log" 2>&1 &
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
curl -sf "http://127.0.0.1:$metrics_port/metrics" > "$tmp/metrics" || fail "metrics scrape failed"
grep -q '^longctx_num_requests_running' "$tmp/metrics" || fail "metrics lack longctx_num_requests_running"
kill -TERM "$pid"
wait "$pid" || fail "longctxd exited with status $? after SIGTERM"
pid=
echo "smoke_server: $build/bin/longctxd served health and metrics, stopped cleanly"
