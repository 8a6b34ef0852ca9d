// Synthetic models for benchmarks: the shape of a published architecture with
// random weights, described as a HostModel whose tensors are made on the
// backend (HostTensor::synthetic()), so a 7B-parameter model never exists on
// the host. Their outputs mean nothing; only their cost is real.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/host_weights.h"

namespace longctx {

// Prefix of model paths that name a synthetic model: "synthetic:llama2-7b".
inline constexpr char kSyntheticModelPrefix[] = "synthetic:";

// Shapes known by name: "llama2-7b" (32 layers, d_model 4096, 32 q and 32 kv
// heads of 128, d_ff 11008, vocab 32000, untied head, RoPE theta 1e4, context
// 4096).
std::vector<std::string> SyntheticModelNames();

// The model `name` (without the prefix): SyntheticHostModelFor its shape.
// NOT_FOUND for an unknown name.
absl::StatusOr<HostModel> SyntheticHostModel(const std::string& name, uint64_t seed = 1);

// `config`, an empty vocabulary and every tensor LlamaModel needs for it, to be
// made uniform random on the backend with a scale that keeps activations of
// order one (norm weights in [0.9, 1.1), matrices ±sqrt(3 / fan_in), embeddings
// ±1), tensor k seeded from `seed` and k. REQUIRES: config.Validate() is OK.
HostModel SyntheticHostModelFor(const ModelConfig& config, uint64_t seed = 1);

// Bytes of all weights of `config` at `bytes_per_element`.
int64_t WeightBytes(const ModelConfig& config, int bytes_per_element);

}  // namespace longctx
