// Infini-attention gates from a sidecar file (docs/design.md §4): a safetensors file of
// named tensors `blk.N.infini_beta`, one value per q head, e.g. the output of a
// gate-training run for a model whose own file has none. GGUF models may carry
// the same tensors directly; LlamaModel reads them from HostModel::tensors.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "engine/model/host_weights.h"

namespace longctx {

// Reads the safetensors file at `path` and stores its gate tensors in
// host->tensors (F32, F16 or BF16 on disk; f32 in memory), replacing gates the
// model file carried. Every tensor in the file must be a gate of this model
// (`blk.N.infini_beta`, N < n_layers, n_heads elements); INVALID_ARGUMENT
// otherwise, naming the tensor; a malformed file fails as SafetensorsFile::Open
// says. Never crashes on a hostile file.
absl::Status LoadInfiniGateSidecar(const std::string& path, HostModel* host);

}  // namespace longctx
