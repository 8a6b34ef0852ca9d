// Shared parts of QuantLinear (kernels/ops.h): the argument struct and the entry
// point of each instruction set. quant_linear.cc validates nothing (the backend
// does) and picks the entry; quant_{avx512,avx2,scalar}.cc each compile
// quant_impl.h with their own target flags, in their own namespace.
#pragma once

#include <cstdint>

#include "kernels/ops.h"

namespace longctx::cpu::quant {

// Group of weights sharing one scale and one offset in the expanded form
// (quant_impl.h): 16, the smallest sub-block of the formats (Q6_K).
inline constexpr int kGroup = 16;
// Activation block: 32 int8 values share one f32 scale.
inline constexpr int kActBlock = 32;

struct LinearArgs {
  float* out = nullptr;       // [T, N]
  const float* x = nullptr;   // [T, K]
  const uint8_t* w = nullptr; // [N, row_bytes]
  WeightFormat format = WeightFormat::kQ4_0;
  const float* bias = nullptr;  // [N] or nullptr
  int T = 0, N = 0, K = 0;
  int64_t row_bytes = 0;
};

namespace avx512 {
void Linear(const LinearArgs& args);
}  // namespace avx512
namespace avx2 {
void Linear(const LinearArgs& args);
}  // namespace avx2
namespace scalar {
void Linear(const LinearArgs& args);
// One row of K elements in `format` to f32.
void DequantizeRow(WeightFormat format, const uint8_t* row, int K, float* out);
}  // namespace scalar

}  // namespace longctx::cpu::quant
