// CUDA backend ops against the CPU reference ops (kernels/ops.h) on random
// inputs of awkward sizes, outputs poisoned with NaN; error bounds per op as in
// tests/cuda_test_util.h. Built only with the CUDA backend; skipped without a GPU.
#ifdef LONGCTX_WITH_CUDA

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/backend/cpu_backend.h"
#include "engine/backend/cuda/cuda_backend.h"
#include "gtest/gtest.h"
#include "kernels/ops.h"
#include "tests/cuda_test_util.h"

namespace longctx {
namespace {

using testing_cuda::ExpectBf16Close;
using testing_cuda::ExpectF32Close;
using testing_cuda::Fetch;
using testing_cuda::kBf16Bound;
using testing_cuda::MakePoisoned;
using testing_cuda::MakeTensor;
using testing_cuda::RandomVec;
using testing_cuda::RoundBf16;

class CudaOpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
    auto b = CreateCudaBackend();
    ASSERT_TRUE(b.ok()) << b.status();
    gpu_ = std::move(*b);
  }
  std::unique_ptr<Backend> gpu_;
  std::mt19937 rng_{1234};
};

const int kLengths[] = {1, 63, 64, 65, 1000, 4097};

TEST_F(CudaOpsTest, ReportsBackendTypes) {
  EXPECT_EQ(gpu_->WeightType(), DType::kBF16);
  EXPECT_EQ(gpu_->ActivationType(), DType::kF32);
}

TEST_F(CudaOpsTest, OutOfMemoryIsResourceExhaustedAndBackendSurvives) {
  auto huge = gpu_->Allocate(size_t{1} << 50);  // 1 PiB
  ASSERT_FALSE(huge.ok());
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kResourceExhausted) << huge.status();
  // Still usable afterwards.
  const std::vector<float> x = RandomVec(1000, rng_);
  auto t = MakeTensor(gpu_.get(), DType::kF32, 10, 100, x);
  EXPECT_EQ(Fetch(gpu_.get(), t.t), x);
  EXPECT_TRUE(gpu_->Synchronize().ok());
}

TEST_F(CudaOpsTest, UploadDownloadRoundTrip) {
  for (int n : kLengths) {
    const std::vector<float> x = RandomVec(n * 3, rng_);
    auto f = MakeTensor(gpu_.get(), DType::kF32, n, 3, x);
    EXPECT_EQ(Fetch(gpu_.get(), f.t), x) << n;
    auto h = MakeTensor(gpu_.get(), DType::kBF16, n, 3, x);
    EXPECT_EQ(Fetch(gpu_.get(), h.t), RoundBf16(x)) << n;  // conversion rounds to nearest even
  }
}

TEST_F(CudaOpsTest, EmbeddingMatchesCpu) {
  for (int T : kLengths) {
    for (int D : {64, 576}) {
      const int V = 1000;
      const std::vector<float> table = RandomVec(static_cast<size_t>(V) * D, rng_);
      std::vector<int32_t> ids(T);
      std::uniform_int_distribution<int> pick(0, V - 1);
      for (int32_t& id : ids) id = pick(rng_);
      std::vector<float> ref(static_cast<size_t>(T) * D), naive(static_cast<size_t>(T) * D);
      cpu::Embedding(ref.data(), table.data(), ids.data(), T, D);
      const std::vector<float> table_b = RoundBf16(table);
      cpu::Embedding(naive.data(), table_b.data(), ids.data(), T, D);
      for (DType wt : {DType::kBF16, DType::kF32}) {
        auto tab = MakeTensor(gpu_.get(), wt, V, D, table);
        auto out = MakePoisoned(gpu_.get(), T, D);
        ASSERT_TRUE(gpu_->Embedding(out.t, tab.t, ids).ok());
        const std::string what = absl::StrCat("Embedding T=", T, " D=", D);
        if (wt == DType::kBF16) {
          ExpectBf16Close(Fetch(gpu_.get(), out.t), ref, naive, what);
        } else {
          ExpectF32Close(Fetch(gpu_.get(), out.t), ref, what);
        }
      }
    }
  }
}

TEST_F(CudaOpsTest, EmbeddingRejectsIdOutsideVocabulary) {
  auto tab = MakeTensor(gpu_.get(), DType::kBF16, 10, 64, RandomVec(640, rng_));
  auto out = MakePoisoned(gpu_.get(), 2, 64);
  const std::vector<int32_t> ids = {3, 10};
  const absl::Status s = gpu_->Embedding(out.t, tab.t, ids);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
}

TEST_F(CudaOpsTest, RmsNormMatchesCpu) {
  for (int T : kLengths) {
    for (int D : {64, 576, 4096, 4097, 11008}) {
      const std::vector<float> x = RandomVec(static_cast<size_t>(T) * D, rng_, 3.f);
      const std::vector<float> w = RandomVec(D, rng_);
      std::vector<float> ref(x.size()), naive(x.size());
      cpu::RmsNorm(ref.data(), x.data(), w.data(), T, D, 1e-5f);
      const std::vector<float> xb = RoundBf16(x), wb = RoundBf16(w);
      cpu::RmsNorm(naive.data(), xb.data(), wb.data(), T, D, 1e-5f);
      naive = RoundBf16(naive);
      auto xt = MakeTensor(gpu_.get(), DType::kF32, T, D, x);
      const std::string what = absl::StrCat("RmsNorm T=", T, " D=", D);
      for (DType wt : {DType::kBF16, DType::kF32}) {
        auto wtens = MakeTensor(gpu_.get(), wt, 1, D, w);
        auto out = MakePoisoned(gpu_.get(), T, D);
        ASSERT_TRUE(gpu_->RmsNorm(out.t, xt.t, wtens.t, 1e-5f).ok());
        if (wt == DType::kBF16) {
          ExpectBf16Close(Fetch(gpu_.get(), out.t), ref, naive, what);
        } else {
          ExpectF32Close(Fetch(gpu_.get(), out.t), ref, what);
        }
      }
      // In place (out aliases x), as the model uses it.
      auto wtens = MakeTensor(gpu_.get(), DType::kF32, 1, D, w);
      auto inplace = MakeTensor(gpu_.get(), DType::kF32, T, D, x);
      ASSERT_TRUE(gpu_->RmsNorm(inplace.t, inplace.t, wtens.t, 1e-5f).ok());
      ExpectF32Close(Fetch(gpu_.get(), inplace.t), ref, what + " in place");
    }
  }
}

TEST_F(CudaOpsTest, LinearMatchesCpu) {
  struct Shape {
    int N, K;
  };
  for (int T : kLengths) {
    for (Shape s : {Shape{192, 576}, Shape{65, 64}, Shape{1536, 576}}) {
      if (T == 4097 && s.N > 200) continue;  // keeps the CPU reference quick
      const std::vector<float> x = RandomVec(static_cast<size_t>(T) * s.K, rng_);
      const std::vector<float> w = RandomVec(static_cast<size_t>(s.N) * s.K, rng_, 0.05f);
      const std::vector<float> bias = RandomVec(s.N, rng_);
      for (bool with_bias : {false, true}) {
        const float* bp = with_bias ? bias.data() : nullptr;
        std::vector<float> ref(static_cast<size_t>(T) * s.N), naive(ref.size());
        cpu::Linear(ref.data(), x.data(), w.data(), bp, T, s.N, s.K);
        const std::vector<float> xb = RoundBf16(x), wb = RoundBf16(w), bb = RoundBf16(bias);
        cpu::Linear(naive.data(), xb.data(), wb.data(), with_bias ? bb.data() : nullptr, T, s.N,
                    s.K);
        naive = RoundBf16(naive);
        auto xt = MakeTensor(gpu_.get(), DType::kF32, T, s.K, x);
        const std::string what =
            absl::StrCat("Linear T=", T, " N=", s.N, " K=", s.K, " bias=", with_bias);
        for (DType wt : {DType::kBF16, DType::kF32}) {
          auto wtens = MakeTensor(gpu_.get(), wt, s.N, s.K, w);
          auto btens = MakeTensor(gpu_.get(), wt, 1, s.N, bias);
          auto out = MakePoisoned(gpu_.get(), T, s.N);
          ASSERT_TRUE(gpu_->Linear(out.t, xt.t, wtens.t, with_bias ? &btens.t : nullptr).ok());
          if (wt == DType::kBF16) {
            ExpectBf16Close(Fetch(gpu_.get(), out.t), ref, naive, what);
          } else {
            ExpectF32Close(Fetch(gpu_.get(), out.t), ref, what + " f32");
          }
        }
      }
    }
  }
}

// out[t, n] = sum_k x[t, k] w[n, k] in double.
std::vector<double> LinearF64(const std::vector<float>& x, const std::vector<float>& w, int T,
                              int N, int K) {
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
double MaxErrRatio(const std::vector<float>& got, const std::vector<double>& ref, size_t n) {
  double err = 0, scale = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(got[i])) return std::numeric_limits<double>::infinity();
    err = std::max(err, std::abs(got[i] - ref[i]));
    scale = std::max(scale, std::abs(ref[i]));
  }
  return scale == 0 ? err : err / scale;
}

// Up to cuda::kGemvMaxT rows against bf16 weights take the weight-streaming
// kernel on f32 activations: against a double reference from the same bf16
// weights only f32 summation error remains. Nine rows take the cuBLAS GEMM on
// bf16 activations; both agree within the bf16 bound, and the few-row path is
// far closer to the reference (it did not round x).
TEST_F(CudaOpsTest, LinearFewRowsMatchesF64ReferenceAndGemm) {
  struct Shape {
    int N, K;
  };
  const Shape shapes[] = {{1, 8},       {7, 72},       {576, 576},   {1536, 576},
                          {4096, 4096}, {11008, 4096}, {4096, 11008}};
  int case_index = 0;
  for (Shape s : shapes) {
    const std::vector<float> w = RoundBf16(RandomVec(static_cast<size_t>(s.N) * s.K, rng_, 0.05f));
    const std::vector<float> bias = RoundBf16(RandomVec(s.N, rng_));
    auto wt = MakeTensor(gpu_.get(), DType::kBF16, s.N, s.K, w);
    auto bt = MakeTensor(gpu_.get(), DType::kBF16, 1, s.N, bias);
    // Nine rows for the GEMM; the few-row calls use their first T.
    const std::vector<float> x = RandomVec(static_cast<size_t>(9) * s.K, rng_);
    auto xt = MakeTensor(gpu_.get(), DType::kF32, 9, s.K, x);
    const std::vector<double> ref9 = LinearF64(x, w, 9, s.N, s.K);
    for (int T : {1, 2, 3, 8, 9}) {
      const bool with_bias = (case_index++ % 2) == 1;
      std::vector<double> ref(ref9.begin(), ref9.begin() + static_cast<int64_t>(T) * s.N);
      if (with_bias) {
        for (size_t i = 0; i < ref.size(); ++i) ref[i] += bias[i % s.N];
      }
      auto out = MakePoisoned(gpu_.get(), T, s.N);
      ASSERT_TRUE(gpu_->Linear(out.t, xt.t.Rows(0, T), wt.t, with_bias ? &bt.t : nullptr).ok());
      const std::vector<float> got = Fetch(gpu_.get(), out.t);
      const std::string what =
          absl::StrCat("Linear T=", T, " N=", s.N, " K=", s.K, " bias=", with_bias);
      const double err = MaxErrRatio(got, ref, got.size());
      if (T <= 8) {
        EXPECT_LE(err, 1e-3) << what;
        continue;
      }
      EXPECT_LE(err, kBf16Bound) << what << " (GEMM)";
      // The same 8 rows through both paths (bias only shifts both).
      auto few = MakePoisoned(gpu_.get(), 8, s.N);
      ASSERT_TRUE(gpu_->Linear(few.t, xt.t.Rows(0, 8), wt.t, with_bias ? &bt.t : nullptr).ok());
      const std::vector<float> got8 = Fetch(gpu_.get(), few.t);
      const size_t n8 = static_cast<size_t>(8) * s.N;
      const double err_few = MaxErrRatio(got8, ref, n8), err_gemm = MaxErrRatio(got, ref, n8);
      std::vector<double> gemm_rows(got.begin(), got.begin() + static_cast<int64_t>(n8));
      EXPECT_LE(MaxErrRatio(got8, gemm_rows, n8), kBf16Bound) << what << " few rows vs GEMM";
      EXPECT_LE(err_few, 0.1 * err_gemm) << what << " few-row error vs GEMM error";
    }
  }
}

// Shapes and addresses the few-row kernel does not take (K not a multiple of
// 8, activations off a 16-byte boundary) still give the product, through the
// GEMM.
TEST_F(CudaOpsTest, LinearFewRowsFallsBackOnOddShapesAndAddresses) {
  for (int K : {12, 8, 72}) {
    const int T = 3, N = 5;
    const std::vector<float> w = RoundBf16(RandomVec(static_cast<size_t>(N) * K, rng_));
    const std::vector<float> x = RandomVec(static_cast<size_t>(T) * K + 1, rng_);
    auto wt = MakeTensor(gpu_.get(), DType::kBF16, N, K, w);
    auto xt = MakeTensor(gpu_.get(), DType::kF32, 1, T * K + 1, x);
    // Rows start one float in: 4 bytes off the allocation's alignment.
    const Tensor x_off{static_cast<float*>(xt.t.data) + 1, DType::kF32, T, K};
    const std::vector<float> x_rows(x.begin() + 1, x.end());
    const std::vector<double> ref = LinearF64(x_rows, w, T, N, K);
    auto out = MakePoisoned(gpu_.get(), T, N);
    ASSERT_TRUE(gpu_->Linear(out.t, x_off, wt.t, nullptr).ok());
    EXPECT_LE(MaxErrRatio(Fetch(gpu_.get(), out.t), ref, static_cast<size_t>(T) * N), kBf16Bound)
        << "K=" << K;
  }
}

TEST_F(CudaOpsTest, LinearRejectsShapeMismatch) {
  auto x = MakeTensor(gpu_.get(), DType::kF32, 4, 64, {});
  auto w = MakeTensor(gpu_.get(), DType::kBF16, 8, 65, {});
  auto out = MakeTensor(gpu_.get(), DType::kF32, 4, 8, {});
  EXPECT_EQ(gpu_->Linear(out.t, x.t, w.t, nullptr).code(), absl::StatusCode::kInvalidArgument);
  auto xb = MakeTensor(gpu_.get(), DType::kBF16, 4, 65, {});
  EXPECT_EQ(gpu_->Linear(out.t, xb.t, w.t, nullptr).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CudaOpsTest, SwiGluAndAddMatchCpu) {
  for (int T : kLengths) {
    const int F = 1536;
    const std::vector<float> g = RandomVec(static_cast<size_t>(T) * F, rng_, 3.f);
    const std::vector<float> u = RandomVec(g.size(), rng_);
    std::vector<float> ref(g.size());
    cpu::SwiGlu(ref.data(), g.data(), u.data(), T, F);
    auto gt = MakeTensor(gpu_.get(), DType::kF32, T, F, g);
    auto ut = MakeTensor(gpu_.get(), DType::kF32, T, F, u);
    auto out = MakePoisoned(gpu_.get(), T, F);
    ASSERT_TRUE(gpu_->SwiGlu(out.t, gt.t, ut.t).ok());
    ExpectF32Close(Fetch(gpu_.get(), out.t), ref, absl::StrCat("SwiGlu T=", T));

    std::vector<float> sum = g;
    cpu::AddInPlace(sum.data(), u.data(), static_cast<int64_t>(sum.size()));
    ASSERT_TRUE(gpu_->AddInPlace(gt.t, ut.t).ok());
    ExpectF32Close(Fetch(gpu_.get(), gt.t), sum, absl::StrCat("AddInPlace T=", T));
  }
}

TEST_F(CudaOpsTest, RopeMatchesCpu) {
  for (int T : kLengths) {
    for (int D : {64, 128}) {
      const int H = 9;
      std::vector<float> inv_freq(D / 2);
      for (int i = 0; i < D / 2; ++i) inv_freq[i] = std::pow(1e5f, -2.f * i / D);
      std::vector<int32_t> pos(T);
      std::uniform_int_distribution<int> pick(-200000, 200000);
      for (int32_t& p : pos) p = pick(rng_);
      const std::vector<float> x = RandomVec(static_cast<size_t>(T) * H * D, rng_);
      std::vector<float> ref = x;
      cpu::Rope(ref.data(), pos.data(), inv_freq.data(), T, H, D);
      auto xt = MakeTensor(gpu_.get(), DType::kF32, T, int64_t{H} * D, x);
      ASSERT_TRUE(gpu_->Rope(xt.t, H, pos, inv_freq).ok());
      ExpectF32Close(Fetch(gpu_.get(), xt.t), ref, absl::StrCat("Rope T=", T, " D=", D));
    }
  }
}

TEST_F(CudaOpsTest, GatherRowsMatchesCpuAndRejectsBadRow) {
  for (int T : kLengths) {
    const int cols = 576;
    const std::vector<float> src = RandomVec(static_cast<size_t>(T) * cols, rng_);
    std::vector<int32_t> rows = {T - 1, 0, T / 2};
    std::vector<float> ref;
    for (int32_t r : rows)
      ref.insert(ref.end(), src.begin() + int64_t{r} * cols, src.begin() + int64_t{r + 1} * cols);
    auto st = MakeTensor(gpu_.get(), DType::kF32, T, cols, src);
    auto out = MakePoisoned(gpu_.get(), 3, cols);
    ASSERT_TRUE(gpu_->GatherRows(out.t, st.t, rows).ok());
    EXPECT_EQ(Fetch(gpu_.get(), out.t), ref) << T;
    rows[1] = T;
    EXPECT_EQ(gpu_->GatherRows(out.t, st.t, rows).code(), absl::StatusCode::kOutOfRange);
  }
}

TEST_F(CudaOpsTest, KvWriteLandsInPagedLayout) {
  KvGeometry g{.n_layers = 3, .n_kv_heads = 3, .head_dim = 64, .block_size = 16, .n_blocks = 70};
  ASSERT_TRUE(gpu_->InitKv(g).ok());
  CpuBackend cpu;
  ASSERT_TRUE(cpu.InitKv(g).ok());
  const int width = g.n_kv_heads * g.head_dim;
  const int T = 1000;
  std::vector<int32_t> slots(g.n_blocks * g.block_size);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng_);
  slots.resize(T);
  const std::vector<float> k = RandomVec(static_cast<size_t>(T) * width, rng_);
  const std::vector<float> v = RandomVec(static_cast<size_t>(T) * width, rng_);
  auto kt = MakeTensor(gpu_.get(), DType::kF32, T, width, k);
  auto vt = MakeTensor(gpu_.get(), DType::kF32, T, width, v);
  Tensor kc{const_cast<float*>(k.data()), DType::kF32, T, width};
  Tensor vc{const_cast<float*>(v.data()), DType::kF32, T, width};
  ASSERT_TRUE(gpu_->KvWrite(1, kt.t, vt.t, slots).ok());
  ASSERT_TRUE(cpu.KvWrite(1, kc, vc, slots).ok());
  std::vector<float> got(g.ElementsPerBlock()), want(g.ElementsPerBlock());
  for (int64_t b = 0; b < g.n_blocks; ++b) {
    ASSERT_TRUE(gpu_->KvReadBlock(b, got.data()).ok());
    ASSERT_TRUE(cpu.KvReadBlock(b, want.data()).ok());
    ASSERT_EQ(got, RoundBf16(want)) << "block " << b;  // KV is stored as bf16
  }
  // Block round trip through the host (export / import).
  ASSERT_TRUE(gpu_->KvWriteBlock(5, want.data()).ok());
  ASSERT_TRUE(gpu_->KvReadBlock(5, got.data()).ok());
  EXPECT_EQ(got, RoundBf16(want));
  // Rejections name the problem.
  std::vector<int32_t> bad = {static_cast<int32_t>(g.n_blocks * g.block_size)};
  auto k1 = MakeTensor(gpu_.get(), DType::kF32, 1, width, {});
  EXPECT_EQ(gpu_->KvWrite(0, k1.t, k1.t, bad).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(gpu_->KvReadBlock(g.n_blocks, got.data()).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(gpu_->InitKv(g).code(), absl::StatusCode::kFailedPrecondition);
}

// KvReadBlock / KvWriteBlock move one block of every layer between the host
// format [layer][k|v][slot][kv_head][head_dim] and the layer-major device arena.
// 70 layers of 128 KiB elements outgrow one pass through the backend's 8M-element
// conversion buffer, so the copy takes two passes.
TEST_F(CudaOpsTest, KvBlockCopiesKeepHostFormatAndNeighbours) {
  KvGeometry g{.n_layers = 70, .n_kv_heads = 8, .head_dim = 128, .block_size = 64, .n_blocks = 3};
  ASSERT_TRUE(gpu_->InitKv(g).ok());
  CpuBackend cpu;
  ASSERT_TRUE(cpu.InitKv(g).ok());
  const std::vector<float> data = RandomVec(static_cast<size_t>(g.ElementsPerBlock()), rng_);
  ASSERT_TRUE(gpu_->KvWriteBlock(1, data.data()).ok());
  ASSERT_TRUE(cpu.KvWriteBlock(1, data.data()).ok());
  std::vector<float> got(g.ElementsPerBlock(), std::numeric_limits<float>::quiet_NaN());
  ASSERT_TRUE(gpu_->KvReadBlock(1, got.data()).ok());
  EXPECT_EQ(got, RoundBf16(data));
  for (int64_t b : {0, 2}) {
    ASSERT_TRUE(gpu_->KvReadBlock(b, got.data()).ok());
    EXPECT_EQ(got, std::vector<float>(got.size(), 0.f)) << "block " << b;
  }
  // Token 5 of block 1 in the last layer, written by KvWrite, lands where the
  // CPU arena puts it in the block's host format.
  const int width = g.n_kv_heads * g.head_dim;
  const std::vector<float> k = RandomVec(static_cast<size_t>(width), rng_),
                           v = RandomVec(static_cast<size_t>(width), rng_);
  auto kt = MakeTensor(gpu_.get(), DType::kF32, 1, width, k);
  auto vt = MakeTensor(gpu_.get(), DType::kF32, 1, width, v);
  Tensor kc{const_cast<float*>(k.data()), DType::kF32, 1, width};
  Tensor vc{const_cast<float*>(v.data()), DType::kF32, 1, width};
  const std::vector<int32_t> slot = {g.block_size + 5};
  ASSERT_TRUE(gpu_->KvWrite(g.n_layers - 1, kt.t, vt.t, slot).ok());
  ASSERT_TRUE(cpu.KvWrite(g.n_layers - 1, kc, vc, slot).ok());
  std::vector<float> want(g.ElementsPerBlock());
  ASSERT_TRUE(gpu_->KvReadBlock(1, got.data()).ok());
  ASSERT_TRUE(cpu.KvReadBlock(1, want.data()).ok());
  EXPECT_EQ(got, RoundBf16(want));
}

}  // namespace
}  // namespace longctx

#endif  // LONGCTX_WITH_CUDA
