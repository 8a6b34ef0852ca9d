// The tensors a Llama-family model needs, under canonical GGUF names, and the
// shapes the forward pass relies on. Both loaders (GGUF, safetensors) check a
// file against this before reading any weight data.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/model/model_config.h"

namespace longctx {

// Shape (outermost first) of the tensor named `name` in the file being loaded,
// or nullopt when the file lacks it.
using TensorShapeLookup = std::function<std::optional<std::vector<int64_t>>(const std::string&)>;

// NotFound naming the first missing required tensor; InvalidArgument naming a
// tensor whose shape differs from what `config` implies. Checks
// token_embd/output_norm/output (when untied) and, per layer, the norms, q/k/v/o
// projections (+ q/k/v biases when config.qkv_bias) and the SwiGLU matrices.
// REQUIRES: config.Validate() is OK.
absl::Status CheckWeightShapes(const ModelConfig& config, const TensorShapeLookup& shape_of);

// "blk.<layer>.<suffix>"
std::string LayerTensorName(int layer, const char* suffix);

// Row map that undoes the GGUF `llama` q/k permutation: the converter stored
// each head's rows in adjacent-pair RoPE order, (half, i) -> 2 * i + half; row
// h * hd + 2 * i + half of the file goes to row h * hd + half * hd / 2 + i.
// REQUIRES: rows divisible by n_heads into an even head size.
std::vector<int64_t> UnpermuteRowMap(int64_t rows, int64_t n_heads);

// Format a shape as "[a, b]" for error messages.
std::string ShapeString(const std::vector<int64_t>& shape);

}  // namespace longctx
