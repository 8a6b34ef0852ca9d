// Helpers of the CUDA tests: bf16 rounding on the host, random data, device
// tensors poisoned with NaN, and the per-op error bounds (STYLE rule 2).
//
// Error measure: relative L2 error ||got - ref|| / ||ref|| against an f32 (or
// better) reference; any non-finite output counts as infinite error. A bf16 op
// passes when its error is at most 1e-2 AND at most twice the error of a naive
// bf16 computation of the same op (every tensor, intermediates included, kept
// in bf16; arithmetic inside each step in f32). An op computed in f32 on both
// sides passes below 1e-5.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "engine/backend/backend.h"
#include "gtest/gtest.h"

namespace longctx::testing_cuda {

inline constexpr double kBf16Bound = 1e-2;
inline constexpr double kF32Bound = 1e-5;

// Round to the nearest bf16 (ties to even), kept in a float.
inline float RoundBf16(float x) {
  if (std::isnan(x)) return x;
  uint32_t u;
  std::memcpy(&u, &x, 4);
  u += 0x7FFFu + ((u >> 16) & 1u);
  u &= 0xFFFF0000u;
  float r;
  std::memcpy(&r, &u, 4);
  return r;
}

inline std::vector<float> RoundBf16(std::vector<float> v) {
  for (float& x : v) x = RoundBf16(x);
  return v;
}

inline std::vector<float> RandomVec(size_t n, std::mt19937& rng, float scale = 1.f) {
  std::normal_distribution<float> dist(0.f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

inline double RelErr(const std::vector<float>& got, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(got[i])) return std::numeric_limits<double>::infinity();
    const double d = double{got[i]} - ref[i];
    num += d * d;
    den += double{ref[i]} * ref[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

// out[t, n] = sum_k x[t, k] w[n, k] in double.
inline std::vector<double> LinearF64(const std::vector<float>& x, const std::vector<float>& w,
                                     int T, int N, int K) {
  std::vector<double> out(static_cast<size_t>(T) * N);
  for (int t = 0; t < T; ++t) {
    const float* xr = x.data() + static_cast<size_t>(t) * K;
    for (int n = 0; n < N; ++n) {
      const float* wr = w.data() + static_cast<size_t>(n) * K;
      double s = 0;
      for (int k = 0; k < K; ++k) s += double{xr[k]} * wr[k];
      out[static_cast<size_t>(t) * N + n] = s;
    }
  }
  return out;
}

// max |got - ref| / max |ref| over the first `n` elements; non-finite output: infinity.
inline double MaxErrRatio(const std::vector<float>& got, const std::vector<double>& ref, size_t n) {
  double err = 0, scale = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(got[i])) return std::numeric_limits<double>::infinity();
    err = std::max(err, std::abs(got[i] - ref[i]));
    scale = std::max(scale, std::abs(ref[i]));
  }
  return scale == 0 ? err : err / scale;
}

// The bf16 bound of the header comment.
inline void ExpectBf16Close(const std::vector<float>& got, const std::vector<float>& ref,
                            const std::vector<float>& naive, const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  const double e = RelErr(got, ref), e_naive = RelErr(naive, ref);
  EXPECT_LE(e, kBf16Bound) << what << " (naive bf16: " << e_naive << ")";
  // The small floor covers ops whose only rounding is the inputs', where the
  // two errors coincide up to summation order.
  EXPECT_LE(e, 2 * e_naive + 1e-6) << what << " (naive bf16: " << e_naive << ")";
}

inline void ExpectF32Close(const std::vector<float>& got, const std::vector<float>& ref,
                           const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  EXPECT_LE(RelErr(got, ref), kF32Bound) << what;
}

// A device tensor with its buffer.
struct OwnedTensor {
  DeviceBuffer buffer;
  Tensor t;
};

inline OwnedTensor MakeTensor(Backend* b, DType dtype, int64_t rows, int64_t cols,
                              const std::vector<float>& init) {
  OwnedTensor o;
  auto buf = b->Allocate(static_cast<size_t>(rows * cols) * DTypeSize(dtype));
  EXPECT_TRUE(buf.ok()) << buf.status();
  o.buffer = std::move(*buf);
  o.t = Tensor{o.buffer.data(), dtype, rows, cols};
  if (!init.empty()) {
    EXPECT_EQ(init.size(), static_cast<size_t>(rows * cols));
    const absl::Status s = b->Upload(o.t, init.data());
    EXPECT_TRUE(s.ok()) << s;
  }
  return o;
}

// An output tensor filled with NaN, so unwritten elements fail the checks.
inline OwnedTensor MakePoisoned(Backend* b, int64_t rows, int64_t cols) {
  return MakeTensor(b, DType::kF32, rows, cols,
                    std::vector<float>(static_cast<size_t>(rows * cols),
                                       std::numeric_limits<float>::quiet_NaN()));
}

inline std::vector<float> Fetch(Backend* b, const Tensor& t) {
  std::vector<float> host(static_cast<size_t>(t.numel()));
  const absl::Status s = b->Download(host.data(), t);
  EXPECT_TRUE(s.ok()) << s;
  return host;
}

}  // namespace longctx::testing_cuda
