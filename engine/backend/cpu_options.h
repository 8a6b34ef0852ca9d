// Settings of the CPU backend (cpu_backend.h), apart from the backend so that
// the factory and the tools name them without including a concrete backend.
#pragma once

#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/ops.h"

namespace longctx {

struct CpuBackendOptions {
  // true (default): keep GGUF weights in their blocks and multiply them with
  // int8-quantized activations (a quarter to an eighth of the bytes; prefill
  // as fast as the f32 path, decode faster: docs/benchmarks.md); false:
  // dequantize every weight to f32 at load and multiply in f32 with BLAS.
  bool quantized_weights = true;
  // Instruction set of the quantized products; kAuto: the best this CPU has.
  cpu::CpuIsa isa = cpu::CpuIsa::kAuto;

  // INVALID_ARGUMENT when this CPU cannot run `isa`.
  absl::Status Validate() const;
};

// Options from the tools' flag values: weights "quantized" or "f32", isa
// "auto", "avx512", "avx2" or "scalar"; INVALID_ARGUMENT naming a bad one.
absl::StatusOr<CpuBackendOptions> ParseCpuBackendOptions(std::string_view weights,
                                                         std::string_view isa);

}  // namespace longctx
