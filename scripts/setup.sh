#!/usr/bin/env bash
# Installs the Debian packages the build needs (idempotent) and fetches the
# default model into $LONGCTX_MODELS (default: ~/.cache/longctx/models).
#   scripts/setup.sh            packages + model
#   scripts/setup.sh --no-model packages only
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

packages=(
  build-essential cmake ninja-build pkg-config python3-pip python3-venv
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libspdlog-dev libfmt-dev prometheus-cpp-dev libcivetweb-dev
  libopenblas-dev libgtest-dev libgmock-dev libyaml-cpp-dev librocksdb-dev libcurl4-openssl-dev libssl-dev
  nlohmann-json3-dev libxxhash-dev clang libclang-rt-14-dev libomp-dev curl python3-yaml
  golang-go protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev golang-google-protobuf-dev
  golang-github-golang-protobuf-1-5-dev
  libcpp-httplib-dev python3-venv
  prometheus  # promtool, for scripts/check_deploy.sh
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -ne 0 ]] && sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

[[ ${1:-} == --no-model ]] && exit 0
"$here/fetch_model.sh"
