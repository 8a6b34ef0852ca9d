// QuantLinear's front: formats, the choice of instruction set, the dispatch.
#include <omp.h>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include "kernels/cpu/quant_internal.h"
#include "kernels/ops.h"

namespace longctx::cpu {
namespace {

struct FormatSize {
  int block;  // elements
  int bytes;  // per block
};

FormatSize SizeOf(WeightFormat f) {
  switch (f) {
    case WeightFormat::kF16:
    case WeightFormat::kBF16:
      return {1, 2};
    case WeightFormat::kQ4_0:
      return {32, 18};
    case WeightFormat::kQ4_1:
      return {32, 20};
    case WeightFormat::kQ8_0:
      return {32, 34};
    case WeightFormat::kQ4_K:
      return {256, 144};
    case WeightFormat::kQ5_K:
      return {256, 176};
    case WeightFormat::kQ6_K:
      return {256, 210};
  }
  return {1, 0};
}

}  // namespace

int WeightBlockElements(WeightFormat f) { return SizeOf(f).block; }

int64_t WeightRowBytes(WeightFormat f, int64_t K) {
  const FormatSize s = SizeOf(f);
  if (K <= 0 || K % s.block != 0 || s.bytes == 0) return -1;
  return K / s.block * s.bytes;
}

#if defined(__x86_64__)
namespace {
// F16C, CPUID leaf 1 ECX bit 29 (clang's __builtin_cpu_supports does not know it).
bool HasF16c() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  return __get_cpuid(1, &a, &b, &c, &d) != 0 && (c & bit_F16C) != 0;
}
}  // namespace
#endif

bool CpuIsaSupported(CpuIsa isa) {
#if defined(__x86_64__)
  switch (isa) {
    case CpuIsa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    case CpuIsa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && HasF16c();
    default:
      return true;
  }
#else
  return isa == CpuIsa::kAuto || isa == CpuIsa::kScalar;
#endif
}

CpuIsa ResolveCpuIsa(CpuIsa isa) {
  if (isa != CpuIsa::kAuto) return isa;
  static const CpuIsa best = CpuIsaSupported(CpuIsa::kAvx512) ? CpuIsa::kAvx512
                             : CpuIsaSupported(CpuIsa::kAvx2) ? CpuIsa::kAvx2
                                                              : CpuIsa::kScalar;
  return best;
}

const char* CpuIsaName(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAuto:
      return "auto";
    case CpuIsa::kAvx512:
      return "avx512";
    case CpuIsa::kAvx2:
      return "avx2";
    case CpuIsa::kScalar:
      return "scalar";
  }
  return "?";
}

void QuantLinear(float* out, const float* x, const uint8_t* w, WeightFormat f, const float* bias,
                 int T, int N, int K, CpuIsa isa) {
  const quant::LinearArgs args{out, x, w, f, bias, T, N, K, WeightRowBytes(f, K)};
  switch (ResolveCpuIsa(isa)) {
#if defined(__x86_64__)
    case CpuIsa::kAvx512:
      return quant::avx512::Linear(args);
    case CpuIsa::kAvx2:
      return quant::avx2::Linear(args);
#endif
    default:
      return quant::scalar::Linear(args);
  }
}

void DequantizeWeightRows(float* out, const uint8_t* w, WeightFormat f, const int32_t* ids, int T,
                          int K) {
  const int64_t row_bytes = WeightRowBytes(f, K);
#pragma omp parallel for schedule(static) if (T > 64)
  for (int t = 0; t < T; ++t) {
    quant::scalar::DequantizeRow(f, w + ids[t] * row_bytes, K, out + int64_t{t} * K);
  }
}

}  // namespace longctx::cpu
