// A model on its backend: the one place that makes a backend, reads the
// weights and builds the model, for Engine::Create, a group's ranks and the
// tools that drive the model directly.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "engine/backend/cpu_options.h"
#include "engine/kv/kv_cache.h"
#include "engine/model/host_weights.h"
#include "engine/model/llama_model.h"

namespace longctx {

// What LoadHostModel keeps in its blocks for `backend`: the GGUF weight types
// it takes (Backend::TakesWeights).
HostLoadOptions HostLoadOptionsFor(const Backend& backend);

struct LoadedModel {
  std::unique_ptr<Backend> backend;
  HostModel host;  // the host copy of the weights (tensors dropped unless kept)
  std::unique_ptr<LlamaModel> model;
  // Where the Infini gates in use come from (ApplyInfiniGates): "" none,
  // "model" the model file, else a sidecar's path.
  std::string infini_gates;
};

// In two steps, for callers that size the KV cache from the model's
// configuration (or adjust the host weights) before building it:
// OpenModel creates `backend` (a ParseBackendKind name: auto, cpu or cuda)
// and reads the weights at `path` (a GGUF file or a Hugging Face directory)
// into LoadedModel::host, GGUF matrices of the types the backend takes
// (Backend::TakesWeights) in their blocks; BuildModel builds LoadedModel::model with a KV
// cache of `kv`, then drops the host weights' tensors unless `keep_host`
// (the vocabulary and configuration stay). `cpu` applies when the backend is
// the CPU's; `infini_gates` is the gate setting of engine/model/infini_gates.h
// (auto: a sidecar beside the model, if any).
absl::StatusOr<LoadedModel> OpenModel(const std::string& path, const std::string& backend,
                                      const CpuBackendOptions& cpu = {},
                                      const std::string& infini_gates = "auto");
// As above, on a backend the caller made (e.g. with CUDA options).
absl::StatusOr<LoadedModel> OpenModel(const std::string& path, std::unique_ptr<Backend> backend,
                                      const std::string& infini_gates = "auto");
absl::Status BuildModel(LoadedModel& model, const KvCacheConfig& kv, bool keep_host = false);

// OpenModel then BuildModel.
absl::StatusOr<LoadedModel> LoadModel(const std::string& path, const std::string& backend,
                                      const KvCacheConfig& kv, bool keep_host = false,
                                      const CpuBackendOptions& cpu = {},
                                      const std::string& infini_gates = "auto");

}  // namespace longctx
