// Infini-attention gates from a sidecar file (docs/design.md §4): a safetensors file of
// named tensors `blk.N.infini_beta`, one value per q head, e.g. the output of a
// gate-training run for a model whose own file has none. GGUF models may carry
// the same tensors directly; LlamaModel reads them from HostModel::tensors.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/model/host_weights.h"

namespace longctx {

// Reads the safetensors file at `path` and stores its gate tensors in
// host->tensors (F32, F16 or BF16 on disk; f32 in memory), replacing gates the
// model file carried. Every tensor in the file must be a gate of this model
// (`blk.N.infini_beta`, N < n_layers, n_heads elements); INVALID_ARGUMENT
// otherwise, naming the tensor; a malformed file fails as SafetensorsFile::Open
// says. Never crashes on a hostile file.
absl::Status LoadInfiniGateSidecar(const std::string& path, HostModel* host);

// The sidecar a model uses when none is named: beside a model file,
// "<file name without .gguf>.infini_gates.safetensors"; inside a Hugging Face
// directory, "infini_gates.safetensors".
std::string DefaultInfiniGatesPath(const std::string& model_path);

// Applies an `infini_gates` setting to `host`, read from `model_path`:
//   auto  the sidecar at DefaultInfiniGatesPath when that file exists, else
//         the gates the model file carries (if any);
//   none  no gates: the model's own are dropped, sessions never mix;
//   PATH  that sidecar (it must exist and load).
// Returns where the gates in use come from: "" (none), "model" or the
// sidecar's path. Errors as LoadInfiniGateSidecar.
absl::StatusOr<std::string> ApplyInfiniGates(const std::string& setting,
                                             const std::string& model_path, HostModel* host);

}  // namespace longctx
