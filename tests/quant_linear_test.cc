// QuantLinear (kernels/ops.h) on every weight format and instruction set against
// a plain reference in double: weights dequantized by the loader's code
// (engine/model/dequant.h, itself checked bit for bit against the `gguf` Python
// package), activations rounded to int8 blocks by the formula the op states.
// Outputs are poisoned with NaN first.
//
// Tolerances. Against the reference with the same int8 activations the op
// differs only by f32 rounding: one rounding of each group's scale product and
// f32 sums of at most K / 16 + K / 4 terms, so its error is below
// (4 + log2 K) · 2⁻²⁴ · Σ|w a| in practice and below K · 2⁻²⁴ · Σ|w a| in the
// worst case; we allow 1e-5 · Σ|w a| (K ≤ 1024: about 10x the practical bound,
// a third of the worst). A wrong nibble, scale or group gives errors of order
// Σ|w a| / K and more. Against the exact f32 product the only further error is
// the activation rounding, at most half a step (d / 2) per element.
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "engine/model/dequant.h"
#include "gtest/gtest.h"
#include "kernels/ops.h"

namespace longctx {
namespace {

using cpu::CpuIsa;
using cpu::WeightFormat;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr double kSumRelTol = 1e-5;

struct FormatCase {
  WeightFormat format;
  GgmlType ggml;
  int block_bytes;
  std::vector<int> half_fields;  // byte offsets of f16 scales within a block
};

const std::vector<FormatCase>& Formats() {
  static const std::vector<FormatCase> kFormats = {
      {WeightFormat::kQ4_0, GgmlType::kQ4_0, 18, {0}},
      {WeightFormat::kQ4_1, GgmlType::kQ4_1, 20, {0, 2}},
      {WeightFormat::kQ8_0, GgmlType::kQ8_0, 34, {0}},
      {WeightFormat::kQ4_K, GgmlType::kQ4_K, 144, {0, 2}},
      {WeightFormat::kQ5_K, GgmlType::kQ5_K, 176, {0, 2}},
      {WeightFormat::kQ6_K, GgmlType::kQ6_K, 210, {208}},
      {WeightFormat::kF16, GgmlType::kF16, 2, {0}},
      {WeightFormat::kBF16, GgmlType::kBF16, 2, {}},
  };
  return kFormats;
}

std::vector<CpuIsa> Isas() {
  std::vector<CpuIsa> out = {CpuIsa::kScalar};
  for (CpuIsa isa : {CpuIsa::kAvx2, CpuIsa::kAvx512}) {
    if (cpu::CpuIsaSupported(isa)) out.push_back(isa);
  }
  return out;
}

// An f16 bit pattern of magnitude in [2^(lo − 15), 2^(hi − 14)), random sign.
uint16_t RandomHalf(std::mt19937& rng, int lo, int hi) {
  const uint32_t exp = std::uniform_int_distribution<uint32_t>(lo, hi)(rng);
  const uint32_t mant = rng() & 0x3ff, sign = rng() & 1;
  return static_cast<uint16_t>((sign << 15) | (exp << 10) | mant);
}

// Random rows of `rows` × K in format fc: random bytes, with every f16 scale
// set to a finite value of magnitude 2^(scale_exp − 15) or so (bf16: random
// values of magnitude around 1).
std::vector<uint8_t> RandomRows(const FormatCase& fc, int rows, int K, std::mt19937& rng,
                                int scale_exp = 10) {
  const int64_t row_bytes = cpu::WeightRowBytes(fc.format, K);
  std::vector<uint8_t> w(static_cast<size_t>(rows * row_bytes));
  for (auto& b : w) b = static_cast<uint8_t>(rng());
  const int64_t n_blocks = static_cast<int64_t>(w.size()) / fc.block_bytes;
  for (int64_t b = 0; b < n_blocks; ++b) {
    uint8_t* blk = w.data() + b * fc.block_bytes;
    for (int off : fc.half_fields) {
      const uint16_t h = RandomHalf(rng, scale_exp, scale_exp + 2);
      std::memcpy(blk + off, &h, 2);
    }
    if (fc.format == WeightFormat::kBF16) {
      const uint16_t h = static_cast<uint16_t>(((rng() & 1) << 15) | ((120 + rng() % 8) << 7) |
                                               (rng() & 0x7f));
      std::memcpy(blk, &h, 2);
    }
  }
  return w;
}

// The activation rounding QuantLinear states, in plain code: x as the op sees it.
std::vector<double> RoundedActivations(const std::vector<float>& x, std::vector<double>* step) {
  std::vector<double> out(x.size());
  step->assign(x.size(), 0.0);
  for (size_t b = 0; b < x.size() / 32; ++b) {
    float amax = 0.f;
    for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[b * 32 + i]));
    const float d = amax / 127.f, id = amax > 0.f ? 127.f / amax : 0.f;
    for (int i = 0; i < 32; ++i) {
      const float v = x[b * 32 + i] * id;
      const int q = static_cast<int>(v + (v >= 0.f ? 0.5f : -0.5f));
      out[b * 32 + i] = double{d} * q;
      (*step)[b * 32 + i] = d;
    }
  }
  return out;
}

struct Shape {
  int T, N, K;
};

// Runs one case into *out (poisoned first) and checks both bounds.
void CheckCase(const FormatCase& fc, CpuIsa isa, const Shape& s, const std::vector<uint8_t>& w,
               const std::vector<float>& x, const std::vector<float>& bias,
               std::vector<float>* out_ptr) {
  const bool blocks = fc.format != WeightFormat::kF16 && fc.format != WeightFormat::kBF16;
  std::vector<float>& out = *out_ptr;
  out.assign(static_cast<size_t>(s.T) * s.N, kNaN);
  cpu::QuantLinear(out.data(), x.data(), w.data(), fc.format, bias.empty() ? nullptr : bias.data(),
                   s.T, s.N, s.K, isa);
  std::vector<float> wf(static_cast<size_t>(s.N) * s.K);
  const int64_t row_bytes = cpu::WeightRowBytes(fc.format, s.K);
  for (int n = 0; n < s.N; ++n) DequantizeRow(fc.ggml, w.data() + n * row_bytes, s.K, &wf[n * s.K]);
  std::vector<double> step;
  std::vector<double> xq(x.begin(), x.end());
  if (blocks) xq = RoundedActivations(x, &step);
  for (int t = 0; t < s.T; ++t) {
    for (int n = 0; n < s.N; ++n) {
      double ref = bias.empty() ? 0.0 : bias[n], exact = ref, abs_sum = 0, round_bound = 0;
      for (int k = 0; k < s.K; ++k) {
        const double wk = wf[n * s.K + k];
        ref += wk * xq[t * s.K + k];
        exact += wk * x[t * s.K + k];
        abs_sum += std::fabs(wk * xq[t * s.K + k]);
        if (blocks) round_bound += std::fabs(wk) * step[t * s.K + k] / 2;
      }
      const double got = out[t * s.N + n];
      const std::string where = std::string(cpu::CpuIsaName(isa)) + " T=" + std::to_string(s.T) +
                                " N=" + std::to_string(s.N) + " K=" + std::to_string(s.K) +
                                " at " + std::to_string(t) + "," + std::to_string(n);
      ASSERT_NEAR(got, ref, kSumRelTol * abs_sum + 1e-30) << where;
      ASSERT_NEAR(got, exact, round_bound * (1 + 1e-6) + kSumRelTol * abs_sum + 1e-30) << where;
    }
  }
}

class QuantLinearTest : public ::testing::TestWithParam<int> {
 protected:
  const FormatCase& format() const { return Formats()[GetParam()]; }
};

TEST_P(QuantLinearTest, MatchesReferenceOnEveryIsaAndTileEdge) {
  const FormatCase& fc = format();
  const int block = cpu::WeightBlockElements(fc.format);
  const int unit = std::max(block, 32);
  std::mt19937 rng(7 + GetParam());
  std::normal_distribution<float> normal(0.f, 1.f);
  // Rows and columns around the tile sizes (1, 2, 4) and K with an odd number
  // of activation blocks (the AVX-512 tail of 32).
  const Shape shapes[] = {{1, 1, unit},     {1, 7, 3 * unit}, {3, 5, unit * 2},
                          {5, 9, unit * 3}, {9, 4, unit},     {16, 13, unit * 4}};
  for (const Shape& s : shapes) {
    const std::vector<uint8_t> w = RandomRows(fc, s.N, s.K, rng);
    std::vector<float> x(static_cast<size_t>(s.T) * s.K), bias(static_cast<size_t>(s.N));
    for (float& v : x) v = normal(rng);
    for (float& v : bias) v = normal(rng);
    for (CpuIsa isa : Isas()) {
      std::vector<float> out;
      CheckCase(fc, isa, s, w, x, (s.T % 2) ? bias : std::vector<float>{}, &out);
    }
  }
}

TEST_P(QuantLinearTest, ZeroBlocksOutliersAndExtremeScales) {
  const FormatCase& fc = format();
  const int K = std::max(cpu::WeightBlockElements(fc.format), 32) * 4;
  const Shape s{3, 6, K};
  std::mt19937 rng(11 + GetParam());
  std::normal_distribution<float> normal(0.f, 1.f);
  // Weight scales near the top of f16 (2^12 .. 2^15) and at its smallest normals.
  for (int scale_exp : {1, 27}) {
    const std::vector<uint8_t> w = RandomRows(fc, s.N, s.K, rng, scale_exp);
    std::vector<float> x(static_cast<size_t>(s.T) * K);
    for (float& v : x) v = normal(rng) * 1e-3f;
    std::fill(x.begin(), x.begin() + 32, 0.f);  // a zero activation block
    x[K + 5] = 3e4f;                             // an outlier that flattens its block
    x[2 * K + 40] = -1e-30f;                     // a block of tiny values with one tinier
    for (CpuIsa isa : Isas()) {
      std::vector<float> out;
      CheckCase(fc, isa, s, w, x, {}, &out);
      for (float v : out) ASSERT_TRUE(std::isfinite(v));
    }
  }
}

// Up to four rows the legacy formats (blocks of 32) are read in place, two
// blocks at a time with AVX-512: every row count around that limit, an odd
// number of blocks, and blocks of the extreme values (nibbles all 15 or all 0;
// Q8_0 at 127, −128, −1 and 1: its values all 0 would make a row of zero
// weights, which the offset form, scale · (q + 128) − 128 · scale, gets to
// within the rounding of the two terms only, not to the relative bound here).
TEST_P(QuantLinearTest, FewRowsWithOddBlocksAndExtremeValues) {
  const FormatCase& fc = format();
  const int block = cpu::WeightBlockElements(fc.format);
  const int unit = std::max(block, 32);
  std::mt19937 rng(19 + GetParam());
  std::normal_distribution<float> normal(0.f, 1.f);
  for (int T = 1; T <= 5; ++T) {
    for (int blocks : {1, 3, 18}) {
      const Shape s{T, 7, unit * blocks};
      std::vector<uint8_t> w = RandomRows(fc, s.N, s.K, rng);
      if (block == 32) {
        const int qs = 2 * static_cast<int>(fc.half_fields.size());
        const uint8_t zero = fc.format == WeightFormat::kQ8_0 ? 0x01 : 0x00;
        const uint8_t fills[] = {0xff, zero, 0x7f, 0x80};
        for (int i = 0; i < 4; ++i) {
          const int64_t b = (i * 5) % (s.N * blocks);
          std::fill(w.begin() + b * fc.block_bytes + qs, w.begin() + (b + 1) * fc.block_bytes,
                    fills[i]);
        }
      }
      std::vector<float> x(static_cast<size_t>(s.T) * s.K), bias(static_cast<size_t>(s.N));
      for (float& v : x) v = normal(rng);
      for (float& v : bias) v = normal(rng);
      for (CpuIsa isa : Isas()) {
        std::vector<float> out;
        CheckCase(fc, isa, s, w, x, bias, &out);
      }
    }
  }
}

TEST_P(QuantLinearTest, ZeroWeightsGiveTheBias) {
  const FormatCase& fc = format();
  const int K = std::max(cpu::WeightBlockElements(fc.format), 32);
  const std::vector<uint8_t> w(static_cast<size_t>(cpu::WeightRowBytes(fc.format, K)) * 3, 0);
  const std::vector<float> x(static_cast<size_t>(2) * K, 1.f), bias = {1.f, -2.f, 3.f};
  for (CpuIsa isa : Isas()) {
    std::vector<float> out(6, kNaN);
    cpu::QuantLinear(out.data(), x.data(), w.data(), fc.format, bias.data(), 2, 3, K, isa);
    EXPECT_EQ(out, (std::vector<float>{1.f, -2.f, 3.f, 1.f, -2.f, 3.f})) << cpu::CpuIsaName(isa);
  }
}

TEST_P(QuantLinearTest, DequantizedRowsMatchTheLoader) {
  const FormatCase& fc = format();
  const int K = std::max(cpu::WeightBlockElements(fc.format), 32) * 2;
  std::mt19937 rng(3);
  const std::vector<uint8_t> w = RandomRows(fc, 5, K, rng);
  const std::vector<int32_t> ids = {4, 0, 4, 2};
  std::vector<float> out(ids.size() * K, kNaN), want(static_cast<size_t>(K));
  cpu::DequantizeWeightRows(out.data(), w.data(), fc.format, ids.data(),
                            static_cast<int>(ids.size()), K);
  const int64_t row_bytes = cpu::WeightRowBytes(fc.format, K);
  for (size_t t = 0; t < ids.size(); ++t) {
    DequantizeRow(fc.ggml, w.data() + ids[t] * row_bytes, K, want.data());
    float scale = 0.f;
    for (float v : want) scale = std::max(scale, std::fabs(v));
    // w = scale · u + offset instead of scale · (u − c): one f32 rounding more
    // (an ulp of the block's largest magnitude, at most 4 · 2⁻²⁴ of it).
    for (int k = 0; k < K; ++k) {
      ASSERT_NEAR(out[t * K + k], want[k], 4 * 0x1p-24 * scale + 1e-38) << "row " << t << " k " << k;
    }
  }
}

std::string FormatName(const ::testing::TestParamInfo<int>& info) {
  static const char* const kNames[] = {"Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "F16", "BF16"};
  return kNames[info.param];
}

INSTANTIATE_TEST_SUITE_P(Formats, QuantLinearTest,
                         ::testing::Range(0, static_cast<int>(Formats().size())), FormatName);

TEST(QuantFormatTest, RowBytesRejectPartialBlocks) {
  EXPECT_EQ(cpu::WeightRowBytes(WeightFormat::kQ4_1, 64), 40);
  EXPECT_EQ(cpu::WeightRowBytes(WeightFormat::kQ6_K, 512), 420);
  EXPECT_EQ(cpu::WeightRowBytes(WeightFormat::kF16, 3), 6);
  EXPECT_EQ(cpu::WeightRowBytes(WeightFormat::kQ4_0, 48), -1);
  EXPECT_EQ(cpu::WeightRowBytes(WeightFormat::kQ4_K, 128), -1);
  EXPECT_EQ(cpu::WeightRowBytes(WeightFormat::kQ8_0, 0), -1);
}

TEST(QuantFormatTest, AutoResolvesToASupportedIsa) {
  const CpuIsa best = cpu::ResolveCpuIsa(CpuIsa::kAuto);
  EXPECT_NE(best, CpuIsa::kAuto);
  EXPECT_TRUE(cpu::CpuIsaSupported(best));
  if (cpu::CpuIsaSupported(CpuIsa::kAvx512)) {
    EXPECT_EQ(best, CpuIsa::kAvx512);
  }
}

}  // namespace
}  // namespace longctx
