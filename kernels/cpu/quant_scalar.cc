// QuantLinear in plain C++: the path of CPUs without AVX2, and the row
// dequantization behind DequantizeWeightRows.
#define LONGCTX_QUANT_ISA scalar
#include "kernels/cpu/quant_impl.h"

namespace longctx::cpu::quant::scalar {
namespace {

struct Kernel {
  static constexpr int kRows = 1;
  static constexpr int kCols = 1;

  template <int R, int C>
  static void Tile(const TileIn& in, TileOut& out) {
    float acc = 0.f;
    for (int g = 0; g < in.K / kGroup; ++g) {
      int32_t dot = 0;
      for (int i = kGroup * g; i < kGroup * (g + 1); ++i) {
        dot += int32_t{in.w[0].u[i]} * int32_t{in.a[i]};
      }
      acc += static_cast<float>(dot) * (in.w[0].scale[g] * in.d[g * kGroup / kActBlock]) +
             in.w[0].offset[g] * in.s[g];
    }
    out[0][0] = acc;
  }
};

}  // namespace

void Linear(const LinearArgs& args) { RunLinear<Kernel>(args); }

void DequantizeRow(WeightFormat format, const uint8_t* row, int K, float* out) {
  RowToFloat(format, row, K, out);
}

}  // namespace longctx::cpu::quant::scalar
