// CUDA backend ops against the reference ops (kernels/ref/ops_ref.h, double) on
// random inputs of awkward sizes, outputs poisoned with NaN; error bounds per
// op as in tests/cuda_test_util.h. Embedding, AddInPlace and ArgMax, which move
// data or round once, are compared with their cpu:: versions. Built only with
// the CUDA backend; skipped without a GPU.
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
#include "kernels/ref/ops_ref.h"
#include "tests/cuda_test_util.h"

namespace longctx {
namespace {

using testing_cuda::ExpectBf16Close;
using testing_cuda::ExpectF32Close;
using testing_cuda::Fetch;
using testing_cuda::kBf16Bound;
using testing_cuda::kF32Bound;
using testing_cuda::LinearF64;
using testing_cuda::MakePoisoned;
using testing_cuda::MakeTensor;
using testing_cuda::MaxErrRatio;
using testing_cuda::OwnedTensor;
using testing_cuda::RandomVec;
using testing_cuda::RelErr;
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

// ref::Linear, rows in parallel: the reference is single-threaded and the larger
// shapes here are around a billion multiply-adds.
void RefLinear(float* out, const float* x, const float* w, const float* bias, int T, int N, int K) {
#pragma omp parallel for schedule(static)
  for (int t = 0; t < T; ++t) {
    ref::Linear(out + int64_t{t} * N, x + int64_t{t} * K, w, bias, 1, N, K);
  }
}

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
      ref::RmsNorm(ref.data(), x.data(), w.data(), T, D, 1e-5f);
      const std::vector<float> xb = RoundBf16(x), wb = RoundBf16(w);
      ref::RmsNorm(naive.data(), xb.data(), wb.data(), T, D, 1e-5f);
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
      if (T == 4097 && s.N > 200) continue;  // keeps the reference quick
      const std::vector<float> x = RandomVec(static_cast<size_t>(T) * s.K, rng_);
      const std::vector<float> w = RandomVec(static_cast<size_t>(s.N) * s.K, rng_, 0.05f);
      const std::vector<float> bias = RandomVec(s.N, rng_);
      for (bool with_bias : {false, true}) {
        const float* bp = with_bias ? bias.data() : nullptr;
        std::vector<float> ref(static_cast<size_t>(T) * s.N), naive(ref.size());
        RefLinear(ref.data(), x.data(), w.data(), bp, T, s.N, s.K);
        const std::vector<float> xb = RoundBf16(x), wb = RoundBf16(w), bb = RoundBf16(bias);
        RefLinear(naive.data(), xb.data(), wb.data(), with_bias ? bb.data() : nullptr, T, s.N, s.K);
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

// --- fused products (Backend::LinearMany, LinearSwiGlu, LinearAddInPlace) ---
// Up to kGemvMaxT rows against bf16 weights run one few-row launch each: against
// an f64 reference from the same bf16 weights only f32 summation error remains
// (bound as for Linear above), and they agree with the separate ops on the GPU.
// Nine rows take the composition of cuBLAS GEMMs on bf16 activations.

// g / (1 + e^-g) * u, ref::SwiGlu before its rounding to float.
double SiluTimes(double g, double u) { return g / (1.0 + std::exp(-g)) * u; }

std::vector<float> ToFloat(const std::vector<double>& v) { return {v.begin(), v.end()}; }

TEST_F(CudaOpsTest, LinearManyMatchesF64ReferenceAndSeparateLinears) {
  struct Case {
    int K;
    std::vector<int> Ns;
  };
  const Case cases[] = {
      {72, {9, 33, 7}},          // few rows: one per warp
      {1032, {2049, 257, 255}},  // 2561 rows in all: two per warp
      {520, {1, 65, 3, 130}},    // cuda::kGemvMaxJobs jobs
      {264, {17, 5, 9, 3, 11}},  // more jobs than one launch takes: separate launches
  };
  for (const Case& c : cases) {
    const size_t J = c.Ns.size();
    std::vector<std::vector<float>> w(J), bias(J);
    std::vector<OwnedTensor> wt, bt;
    for (size_t j = 0; j < J; ++j) {
      const int N = c.Ns[j];
      w[j] = RoundBf16(RandomVec(static_cast<size_t>(N) * c.K, rng_, 0.05f));
      bias[j] = RoundBf16(RandomVec(N, rng_));
      wt.push_back(MakeTensor(gpu_.get(), DType::kBF16, N, c.K, w[j]));
      // Biases in bf16 (as the model's) and in f32; every third job has none.
      bt.push_back(MakeTensor(gpu_.get(), j % 3 == 0 ? DType::kBF16 : DType::kF32, 1, N, bias[j]));
    }
    auto bias_of = [&](size_t j) { return j % 3 == 1 ? nullptr : &bt[j].t; };
    const std::vector<float> x = RandomVec(static_cast<size_t>(9) * c.K, rng_);
    auto xt = MakeTensor(gpu_.get(), DType::kF32, 9, c.K, x);
    for (int T : {1, 2, 5, 8, 9}) {
      std::vector<OwnedTensor> outs;
      std::vector<LinearJob> jobs;
      for (size_t j = 0; j < J; ++j) outs.push_back(MakePoisoned(gpu_.get(), T, c.Ns[j]));
      for (size_t j = 0; j < J; ++j) jobs.push_back(LinearJob{outs[j].t, wt[j].t, bias_of(j)});
      const Tensor xs = xt.t.Rows(0, T);
      ASSERT_TRUE(gpu_->LinearMany(jobs, xs).ok());
      for (size_t j = 0; j < J; ++j) {
        const int N = c.Ns[j];
        std::vector<double> ref = LinearF64(x, w[j], T, N, c.K);
        if (bias_of(j) != nullptr) {
          for (size_t i = 0; i < ref.size(); ++i) ref[i] += bias[j][i % N];
        }
        const std::vector<float> got = Fetch(gpu_.get(), outs[j].t);
        const std::string what =
            absl::StrCat("LinearMany T=", T, " K=", c.K, " job ", j, " of ", J, " N=", N);
        EXPECT_LE(MaxErrRatio(got, ref, got.size()), T <= 8 ? 1e-3 : kBf16Bound) << what;
        if (T > 8) continue;
        auto one = MakePoisoned(gpu_.get(), T, N);
        ASSERT_TRUE(gpu_->Linear(one.t, xs, wt[j].t, bias_of(j)).ok());
        EXPECT_LE(RelErr(got, Fetch(gpu_.get(), one.t)), kF32Bound) << what << " vs Linear";
      }
    }
  }
}

TEST_F(CudaOpsTest, LinearSwiGluMatchesF64ReferenceAndSeparateOps) {
  struct Shape {
    int F, K;
  };
  const Shape shapes[] = {{1, 8}, {7, 72}, {577, 520}, {2051, 1032}, {5461, 4104}};
  for (Shape s : shapes) {
    const size_t n_w = static_cast<size_t>(s.F) * s.K;
    const std::vector<float> wg = RoundBf16(RandomVec(n_w, rng_, 0.05f));
    const std::vector<float> wu = RoundBf16(RandomVec(n_w, rng_, 0.05f));
    auto wgt = MakeTensor(gpu_.get(), DType::kBF16, s.F, s.K, wg);
    auto wut = MakeTensor(gpu_.get(), DType::kBF16, s.F, s.K, wu);
    const std::vector<float> x = RandomVec(static_cast<size_t>(9) * s.K, rng_);
    auto xt = MakeTensor(gpu_.get(), DType::kF32, 9, s.K, x);
    const std::vector<double> g9 = LinearF64(x, wg, 9, s.F, s.K),
                              u9 = LinearF64(x, wu, 9, s.F, s.K);
    for (int T : {1, 2, 5, 8, 9}) {
      const size_t n = static_cast<size_t>(T) * s.F;
      std::vector<double> ref(n);
      for (size_t i = 0; i < n; ++i) ref[i] = SiluTimes(g9[i], u9[i]);
      auto out = MakePoisoned(gpu_.get(), T, s.F), scratch = MakePoisoned(gpu_.get(), T, s.F);
      const Tensor xs = xt.t.Rows(0, T);
      ASSERT_TRUE(gpu_->LinearSwiGlu(out.t, xs, wgt.t, wut.t, scratch.t).ok());
      const std::vector<float> got = Fetch(gpu_.get(), out.t);
      const std::string what = absl::StrCat("LinearSwiGlu T=", T, " F=", s.F, " K=", s.K);
      if (T > 8) {
        EXPECT_LE(RelErr(got, ToFloat(ref)), kBf16Bound) << what << " (GEMMs)";
        continue;
      }
      EXPECT_LE(MaxErrRatio(got, ref, n), 1e-3) << what;
      auto gate = MakePoisoned(gpu_.get(), T, s.F), up = MakePoisoned(gpu_.get(), T, s.F);
      ASSERT_TRUE(gpu_->Linear(gate.t, xs, wgt.t, nullptr).ok());
      ASSERT_TRUE(gpu_->Linear(up.t, xs, wut.t, nullptr).ok());
      ASSERT_TRUE(gpu_->SwiGlu(gate.t, gate.t, up.t).ok());
      EXPECT_LE(RelErr(got, Fetch(gpu_.get(), gate.t)), kF32Bound) << what << " vs separate ops";
    }
  }
}

// The destination holds the residual, so it cannot be poisoned; an element the
// kernel skipped keeps x0 and misses the product.
TEST_F(CudaOpsTest, LinearAddInPlaceMatchesF64ReferenceAndSeparateOps) {
  struct Shape {
    int N, K;
  };
  const Shape shapes[] = {{1, 8}, {7, 72}, {577, 520}, {2049, 1032}, {4097, 11000}};
  for (Shape s : shapes) {
    const std::vector<float> w = RoundBf16(RandomVec(static_cast<size_t>(s.N) * s.K, rng_, 0.05f));
    auto wt = MakeTensor(gpu_.get(), DType::kBF16, s.N, s.K, w);
    const std::vector<float> h = RandomVec(static_cast<size_t>(9) * s.K, rng_);
    auto ht = MakeTensor(gpu_.get(), DType::kF32, 9, s.K, h);
    const std::vector<float> x0 = RandomVec(static_cast<size_t>(9) * s.N, rng_);
    const std::vector<double> p9 = LinearF64(h, w, 9, s.N, s.K);
    for (int T : {1, 2, 5, 8, 9}) {
      const size_t n = static_cast<size_t>(T) * s.N;
      const std::vector<float> x0_rows(x0.begin(), x0.begin() + static_cast<int64_t>(n));
      std::vector<double> ref(n);
      for (size_t i = 0; i < n; ++i) ref[i] = x0[i] + p9[i];
      auto xt = MakeTensor(gpu_.get(), DType::kF32, T, s.N, x0_rows);
      auto scratch = MakePoisoned(gpu_.get(), T, s.N);
      const Tensor hs = ht.t.Rows(0, T);
      ASSERT_TRUE(gpu_->LinearAddInPlace(xt.t, hs, wt.t, scratch.t).ok());
      const std::vector<float> got = Fetch(gpu_.get(), xt.t);
      const std::string what = absl::StrCat("LinearAddInPlace T=", T, " N=", s.N, " K=", s.K);
      EXPECT_LE(MaxErrRatio(got, ref, n), T <= 8 ? 1e-3 : kBf16Bound) << what;
      if (T > 8) continue;
      auto want = MakeTensor(gpu_.get(), DType::kF32, T, s.N, x0_rows);
      auto product = MakePoisoned(gpu_.get(), T, s.N);
      ASSERT_TRUE(gpu_->Linear(product.t, hs, wt.t, nullptr).ok());
      ASSERT_TRUE(gpu_->AddInPlace(want.t, product.t).ok());
      EXPECT_LE(RelErr(got, Fetch(gpu_.get(), want.t)), kF32Bound) << what << " vs separate ops";
    }
  }
}

// f32 weights (and a mix in one LinearMany) take the composition: cuBLAS in f32
// for those, the few-row kernel for the bf16 ones.
TEST_F(CudaOpsTest, FusedLinearsComposeOnF32Weights) {
  const int T = 3, K = 72, N = 33;
  const std::vector<float> x = RandomVec(static_cast<size_t>(T) * K, rng_);
  const std::vector<float> w1 = RandomVec(static_cast<size_t>(N) * K, rng_, 0.05f);
  const std::vector<float> w2 = RoundBf16(RandomVec(static_cast<size_t>(N) * K, rng_, 0.05f));
  auto xt = MakeTensor(gpu_.get(), DType::kF32, T, K, x);
  auto w1t = MakeTensor(gpu_.get(), DType::kF32, N, K, w1);
  auto w2t = MakeTensor(gpu_.get(), DType::kBF16, N, K, w2);
  const std::vector<double> p1 = LinearF64(x, w1, T, N, K), p2 = LinearF64(x, w2, T, N, K);

  auto o1 = MakePoisoned(gpu_.get(), T, N), o2 = MakePoisoned(gpu_.get(), T, N);
  const LinearJob jobs[] = {{o1.t, w1t.t, nullptr}, {o2.t, w2t.t, nullptr}};
  ASSERT_TRUE(gpu_->LinearMany(jobs, xt.t).ok());
  EXPECT_LE(RelErr(Fetch(gpu_.get(), o1.t), ToFloat(p1)), kF32Bound) << "LinearMany f32 job";
  EXPECT_LE(RelErr(Fetch(gpu_.get(), o2.t), ToFloat(p2)), kF32Bound) << "LinearMany bf16 job";

  auto out = MakePoisoned(gpu_.get(), T, N), scratch = MakePoisoned(gpu_.get(), T, N);
  ASSERT_TRUE(gpu_->LinearSwiGlu(out.t, xt.t, w1t.t, w1t.t, scratch.t).ok());
  std::vector<double> glu(p1.size());
  for (size_t i = 0; i < glu.size(); ++i) glu[i] = SiluTimes(p1[i], p1[i]);
  EXPECT_LE(RelErr(Fetch(gpu_.get(), out.t), ToFloat(glu)), kF32Bound) << "LinearSwiGlu f32";

  const std::vector<float> x0 = RandomVec(static_cast<size_t>(T) * N, rng_);
  auto res = MakeTensor(gpu_.get(), DType::kF32, T, N, x0);
  ASSERT_TRUE(gpu_->LinearAddInPlace(res.t, xt.t, w1t.t, scratch.t).ok());
  std::vector<double> sum(p1.size());
  for (size_t i = 0; i < sum.size(); ++i) sum[i] = x0[i] + p1[i];
  EXPECT_LE(RelErr(Fetch(gpu_.get(), res.t), ToFloat(sum)), kF32Bound) << "LinearAddInPlace f32";
}

// The few-row kernel reads its input while other blocks write: an output over
// the input is INVALID_ARGUMENT, rejected before anything runs.
TEST_F(CudaOpsTest, FusedLinearsRejectOutputOverInput) {
  const int T = 2, K = 64;
  const std::vector<float> x0 = RandomVec(static_cast<size_t>(T) * K, rng_);
  auto x = MakeTensor(gpu_.get(), DType::kF32, T, K, x0);
  auto w = MakeTensor(gpu_.get(), DType::kBF16, K, K, RandomVec(static_cast<size_t>(K) * K, rng_));
  auto scratch = MakePoisoned(gpu_.get(), T, K);
  EXPECT_EQ(gpu_->LinearAddInPlace(x.t, x.t, w.t, scratch.t).code(),
            absl::StatusCode::kInvalidArgument);
  const LinearJob into_x[] = {{x.t, w.t, nullptr}};
  EXPECT_EQ(gpu_->LinearMany(into_x, x.t).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(gpu_->LinearSwiGlu(x.t, x.t, w.t, w.t, scratch.t).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Fetch(gpu_.get(), x.t), x0);
}

TEST_F(CudaOpsTest, SwiGluAndAddMatchCpu) {
  for (int T : kLengths) {
    const int F = 1536;
    const std::vector<float> g = RandomVec(static_cast<size_t>(T) * F, rng_, 3.f);
    const std::vector<float> u = RandomVec(g.size(), rng_);
    std::vector<float> ref(g.size());
    ref::SwiGlu(ref.data(), g.data(), u.data(), T, F);
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
      ref::Rope(ref.data(), pos.data(), inv_freq.data(), T, H, D);
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

TEST_F(CudaOpsTest, ArgMaxRowsMatchesCpu) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  for (int cols : {1, 63, 64, 65, 1000, 4097, 49152}) {
    const int rows = 7;
    std::vector<float> x = RandomVec(static_cast<size_t>(rows) * cols, rng_);
    std::uniform_int_distribution<int> col(0, cols - 1);
    // Row 1: the maximum twice (the first wins); row 2: NaN around its maximum;
    // row 3: all NaN; row 4: all -inf; row 5: the maximum in the last column.
    float* r1 = x.data() + cols;
    const int a = col(rng_), b = col(rng_);
    r1[a] = r1[b] = 9.f;
    float* r2 = x.data() + 2 * cols;
    for (int c = 0; c < cols; c += 3) r2[c] = nan;
    std::fill(x.begin() + 3 * cols, x.begin() + 4 * cols, nan);
    std::fill(x.begin() + 4 * cols, x.begin() + 5 * cols, -inf);
    x[size_t{6} * cols - 1] = 9.f;
    std::vector<int32_t> ref(rows);
    for (int r = 0; r < rows; ++r) ref[r] = cpu::ArgMax(x.data() + int64_t{r} * cols, cols);
    ASSERT_EQ(ref[1], std::min(a, b));
    ASSERT_EQ(ref[3], 0);
    auto xt = MakeTensor(gpu_.get(), DType::kF32, rows, cols, x);
    std::vector<int32_t> got(rows, -7);
    ASSERT_TRUE(gpu_->ArgMaxRows(xt.t, got).ok());
    EXPECT_EQ(got, ref) << "cols " << cols;
  }
  auto xt = MakeTensor(gpu_.get(), DType::kF32, 2, 8, std::vector<float>(16, 1.f));
  std::vector<int32_t> three(3);
  EXPECT_EQ(gpu_->ArgMaxRows(xt.t, three).code(), absl::StatusCode::kInvalidArgument);
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

// The keys rotated as they are written: the same cache contents as the CPU's
// Rope then KvWrite (bf16 of the same f32 rotation), for D 64 and 128.
TEST_F(CudaOpsTest, RopeKvWriteEqualsRopeThenKvWrite) {
  for (int D : {64, 128}) {
    auto gpu = CreateCudaBackend();
    ASSERT_TRUE(gpu.ok());
    KvGeometry g{.n_layers = 2, .n_kv_heads = 3, .head_dim = D, .block_size = 16, .n_blocks = 40};
    ASSERT_TRUE((*gpu)->InitKv(g).ok());
    CpuBackend cpu;
    ASSERT_TRUE(cpu.InitKv(g).ok());
    const int width = g.n_kv_heads * D, T = 67;
    std::vector<int32_t> slots(g.n_blocks * g.block_size), pos(T);
    std::iota(slots.begin(), slots.end(), 0);
    std::shuffle(slots.begin(), slots.end(), rng_);
    slots.resize(T);
    std::uniform_int_distribution<int> pick(0, 200000);
    for (int32_t& q : pos) q = pick(rng_);
    std::vector<float> inv_freq(D / 2);
    for (int i = 0; i < D / 2; ++i) inv_freq[i] = std::pow(1e5f, -2.f * i / D);
    std::vector<float> k = RandomVec(static_cast<size_t>(T) * width, rng_);
    const std::vector<float> v = RandomVec(static_cast<size_t>(T) * width, rng_);
    auto kt = MakeTensor(gpu->get(), DType::kF32, T, width, k);
    auto vt = MakeTensor(gpu->get(), DType::kF32, T, width, v);
    ASSERT_TRUE((*gpu)->RopeKvWrite(1, kt.t, vt.t, slots, pos, inv_freq).ok());
    Tensor kc{k.data(), DType::kF32, T, width};
    Tensor vc{const_cast<float*>(v.data()), DType::kF32, T, width};
    ASSERT_TRUE(cpu.RopeKvWrite(1, kc, vc, slots, pos, inv_freq).ok());
    std::vector<float> got(g.ElementsPerBlock()), want(g.ElementsPerBlock());
    for (int64_t b = 0; b < g.n_blocks; ++b) {
      ASSERT_TRUE((*gpu)->KvReadBlock(b, got.data()).ok());
      ASSERT_TRUE(cpu.KvReadBlock(b, want.data()).ok());
      // The angles agree to ~5e-7 (RopeSinCos), so a key may round to the
      // neighbouring bf16: compare as bf16 values within one step.
      const std::vector<float> w = RoundBf16(want);
      for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_NEAR(got[i], w[i], std::abs(w[i]) * 0.0079f + 1e-6f)
            << "D " << D << " block " << b << " element " << i;
      }
    }
  }
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
