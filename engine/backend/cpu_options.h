// Settings of the CPU backend (cpu_backend.h), apart from the backend so that
// the factory and the tools name them without including a concrete backend.
#pragma once

#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "kernels/ops.h"

namespace longctx {

struct CpuBackendOptions {
  // Keep GGUF weights in their blocks and multiply them with int8-quantized
  // activations (a quarter to an eighth of the bytes; faster than f32 in
  // prefill and decode: docs/benchmarks.md; longctxd's default); false:
  // dequantize every weight to f32 at load and multiply in f32 with BLAS, whose
  // results depend on how a prefill was split only through summation order.
  bool quantized_weights = false;
  // Instruction set of the quantized products; kAuto: the best this CPU has.
  cpu::CpuIsa isa = cpu::CpuIsa::kAuto;
  // Element type of the KV cache: kF32, or kF16 (half the bytes, so twice the
  // tokens in a budget; converted to f32 a key tile at a time inside
  // attention). Not faster at 4k on the CPUs measured, where decode attention
  // waits on latency more than bandwidth (docs/benchmarks.md), and its
  // rounding breaks the bit-level agreement of rebuilt and split sessions.
  DType kv_type = DType::kF32;

  // INVALID_ARGUMENT when this CPU cannot run `isa`.
  absl::Status Validate() const;
};

// Options from the tools' flag values: weights "quantized" or "f32", isa
// "auto", "avx512", "avx2" or "scalar", kv "f16" or "f32"; INVALID_ARGUMENT
// naming a bad one.
absl::StatusOr<CpuBackendOptions> ParseCpuBackendOptions(std::string_view weights,
                                                         std::string_view isa,
                                                         std::string_view kv = "f32");

}  // namespace longctx
