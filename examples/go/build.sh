#!/usr/bin/env bash
# Builds the Go example offline with Debian's Go toolchain and packages
# (golang-go, protoc-gen-go, protoc-gen-go-grpc, golang-google-grpc-dev,
# golang-google-protobuf-dev, and golang-github-golang-protobuf-1-5-dev: gRPC's
# codec needs the v1.5 github.com/golang/protobuf, which speaks the messages
# protoc-gen-go generates) in GOPATH mode: generates the Go stubs of
# proto/longctx/v1/longctx.proto (go_package longctx.dev/gen/go/longctx/v1),
# then builds examples/go/ingest into OUT_DIR/bin/longctx-go-ingest.
#   examples/go/build.sh OUT_DIR
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)
gopath=$out/gopath
rm -rf "$gopath"
mkdir -p "$gopath/src/longctx.dev/examples" "$out/bin"
protoc -I "$root/proto" --go_out="$gopath/src" --go-grpc_out="$gopath/src" \
  "$root/proto/longctx/v1/longctx.proto"
cp -r "$root/examples/go/ingest" "$gopath/src/longctx.dev/examples/"
GO111MODULE=off GOPROXY=off GOFLAGS= GOPATH="$gopath:/usr/share/gocode" GOCACHE="$out/gocache" \
  go build -o "$out/bin/longctx-go-ingest" longctx.dev/examples/ingest
echo "$out/bin/longctx-go-ingest"
