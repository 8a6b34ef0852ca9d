// A HostModel from a GGUF file: ModelConfig from `llama.*` / `qwen2.*`
// metadata, VocabData from `tokenizer.ggml.*`, every tensor dequantized to f32
// under its GGUF name with shape [ne[1], ne[0]], llama q/k rows un-permuted to
// rotate-half order (never for qwen2).
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "engine/model/gguf.h"
#include "engine/model/host_weights.h"

namespace longctx {

// Checks config, vocabulary and every required tensor's shape before
// dequantizing anything.
// Matrices of options.raw_types keep their blocks (HostLoadOptions).
absl::StatusOr<HostModel> LoadGgufModel(const GgufFile& file, const HostLoadOptions& options = {});
// Opens (memory-maps) `path` and loads it; errors are prefixed with the path.
absl::StatusOr<HostModel> LoadGgufModel(const std::string& path,
                                        const HostLoadOptions& options = {});

}  // namespace longctx
