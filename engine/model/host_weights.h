// Model weights on the host, dequantized to f32 (or kept in their GGUF blocks
// for a backend that multiplies them so), under canonical GGUF names
// ("token_embd.weight", "blk.N.attn_q.weight", ...). Safetensors names are mapped
// to these at load. Matrices are row-major [out_features, in_features]; q/k rows
// are in rotate-half order (llama-arch GGUF rows already un-permuted).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "engine/model/model_config.h"
#include "engine/tokenizer/vocab.h"

namespace longctx {

struct HostTensor {
  std::vector<int64_t> shape;  // outermost first: [rows, cols] for matrices
  std::vector<float> data;     // row-major, product(shape) elements (f32 tensors)
  // A matrix kept as the file stores it (HostLoadOptions::raw_types): its rows
  // in `dtype`'s layout (GGUF blocks), `data` empty. kF32: `data` holds it.
  DType dtype = DType::kF32;
  std::vector<uint8_t> raw;
  // Synthetic weights (engine/model/synthetic_model.h): when `data` is empty and
  // fill_hi > fill_lo, the model makes the tensor on its backend, uniform in
  // [fill_lo, fill_hi) from fill_seed (Backend::FillUniform), so it never exists
  // on the host.
  uint64_t fill_seed = 0;
  float fill_lo = 0.f;
  float fill_hi = 0.f;
  bool synthetic() const { return dtype == DType::kF32 && data.empty() && fill_hi > fill_lo; }
  int64_t numel() const;
};

struct HostModel {
  ModelConfig config;
  VocabData vocab;                           // tokenizer data from the model file
  std::map<std::string, HostTensor> tensors;  // canonical names
};

struct HostLoadOptions {
  // GGUF matrices (2-D tensors) whose type is one of these stay in their blocks
  // (HostTensor::raw, q/k rows un-permuted); all others are dequantized to f32.
  // Empty (the default): everything is f32. Other formats ignore it.
  std::vector<DType> raw_types;
};

// Loads a GGUF file, or a Hugging Face directory (config.json + *.safetensors
// [+ model.safetensors.index.json] + tokenizer.json), chosen by the path, or a
// synthetic model ("synthetic:<name>", engine/model/synthetic_model.h).
// Never crashes on hostile input; errors name the problem.
absl::StatusOr<HostModel> LoadHostModel(const std::string& path,
                                        const HostLoadOptions& options = {});

}  // namespace longctx
