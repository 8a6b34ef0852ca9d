// The few-row products on the GPU beyond the CUDA-core kernel's rows: the
// tensor-core kernel for 9 to 64 token rows (kernels/cuda/gemv_mma.cu), with
// every epilogue, and the RMSNorm fused in front of both kernels
// (Backend::RmsNormLinearMany, RmsNormLinearSwiGlu). References in double from
// the same bf16 weights; the tensor-core kernel rounds x to bf16, so its bound
// is the bf16 one (at most twice a naive product of bf16-rounded x). Built
// only with the CUDA backend; skipped without a GPU.
#ifdef LONGCTX_WITH_CUDA

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/backend/cuda/cuda_backend.h"
#include "gtest/gtest.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/ref/ops_ref.h"
#include "tests/cuda_test_util.h"

namespace longctx {
namespace {

using testing_cuda::ExpectBf16Close;
using testing_cuda::Fetch;
using testing_cuda::kBf16Bound;
using testing_cuda::LinearF64;
using testing_cuda::MakePoisoned;
using testing_cuda::MakeTensor;
using testing_cuda::MaxErrRatio;
using testing_cuda::OwnedTensor;
using testing_cuda::RandomVec;
using testing_cuda::RoundBf16;

class CudaGemvTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
    auto b = CreateCudaBackend();
    ASSERT_TRUE(b.ok()) << b.status();
    gpu_ = std::move(*b);
  }
  // Random weights [rows, cols] of magnitude up to 0.05, rounded to bf16.
  std::vector<float> Bf16Weights(int rows, int cols) {
    return RoundBf16(RandomVec(static_cast<size_t>(rows) * cols, rng_, 0.05f));
  }
  std::unique_ptr<Backend> gpu_;
  std::mt19937 rng_{99};
};

// Rows the tensor-core kernel takes: one partial tile, whole tiles, a tile and one.
const int kMmaRows[] = {9, 16, 17, 32, 33, 48, 63, 64};

std::vector<float> ToFloat(const std::vector<double>& v) { return {v.begin(), v.end()}; }

double SiluTimes(double g, double u) { return g / (1.0 + std::exp(-g)) * u; }

TEST_F(CudaGemvTest, TensorCoreRowsMatchReferenceForEveryEpilogue) {
  struct Shape {
    std::vector<int> Ns;  // the jobs of one launch
    int K;
  };
  // The default model's products (q/k/v, o, gate/up, down), odd N and the
  // smallest K, and a launch of the most jobs.
  const Shape shapes[] = {{{576, 192, 192}, 576}, {{576}, 1536}, {{1536}, 576},
                          {{7, 33}, 32},          {{577}, 96},   {{1, 65, 3, 130}, 544}};
  for (const Shape& s : shapes) {
    const int J = static_cast<int>(s.Ns.size());
    std::vector<std::vector<float>> w(J);
    std::vector<OwnedTensor> wt, bt;
    std::vector<std::vector<float>> bias(J);
    for (int j = 0; j < J; ++j) {
      w[j] = RoundBf16(RandomVec(static_cast<size_t>(s.Ns[j]) * s.K, rng_, 0.05f));
      bias[j] = RoundBf16(RandomVec(s.Ns[j], rng_));
      wt.push_back(MakeTensor(gpu_.get(), DType::kBF16, s.Ns[j], s.K, w[j]));
      bt.push_back(
          MakeTensor(gpu_.get(), j % 2 == 0 ? DType::kBF16 : DType::kF32, 1, s.Ns[j], bias[j]));
    }
    const std::vector<float> x = RandomVec(static_cast<size_t>(64) * s.K, rng_);
    const std::vector<float> xb = RoundBf16(x);
    auto xt = MakeTensor(gpu_.get(), DType::kF32, 64, s.K, x);
    for (int T : kMmaRows) {
      const Tensor xs = xt.t.Rows(0, T);
      // Store with bias (every job of one launch).
      std::vector<OwnedTensor> outs;
      std::vector<LinearJob> jobs;
      for (int j = 0; j < J; ++j) outs.push_back(MakePoisoned(gpu_.get(), T, s.Ns[j]));
      for (int j = 0; j < J; ++j) jobs.push_back({outs[j].t, wt[j].t, j == 1 ? nullptr : &bt[j].t});
      ASSERT_TRUE(gpu_->LinearMany(jobs, xs).ok());
      for (int j = 0; j < J; ++j) {
        const int N = s.Ns[j];
        std::vector<double> ref = LinearF64(x, w[j], T, N, s.K),
                            naive = LinearF64(xb, w[j], T, N, s.K);
        if (j != 1) {
          for (size_t i = 0; i < ref.size(); ++i) {
            ref[i] += bias[j][i % N];
            naive[i] += bias[j][i % N];
          }
        }
        ExpectBf16Close(Fetch(gpu_.get(), outs[j].t), ToFloat(ref), ToFloat(naive),
                        absl::StrCat("LinearMany T=", T, " K=", s.K, " job ", j, " N=", N));
      }
      // Add into a residual, then SwiGLU, on the first job's weights.
      const int N = s.Ns[0];
      const std::vector<double> p = LinearF64(x, w[0], T, N, s.K),
                                pn = LinearF64(xb, w[0], T, N, s.K);
      const std::vector<float> x0 = RandomVec(static_cast<size_t>(T) * N, rng_);
      auto res = MakeTensor(gpu_.get(), DType::kF32, T, N, x0);
      auto scratch = MakePoisoned(gpu_.get(), T, N);
      ASSERT_TRUE(gpu_->LinearAddInPlace(res.t, xs, wt[0].t, scratch.t).ok());
      std::vector<float> ref_add(p.size()), naive_add(p.size());
      for (size_t i = 0; i < p.size(); ++i) {
        ref_add[i] = static_cast<float>(x0[i] + p[i]);
        naive_add[i] = static_cast<float>(x0[i] + pn[i]);
      }
      ExpectBf16Close(Fetch(gpu_.get(), res.t), ref_add, naive_add,
                      absl::StrCat("LinearAddInPlace T=", T, " N=", N, " K=", s.K));
      if (J < 2 || s.Ns[1] != s.Ns[0]) {
        // SwiGLU takes gate and up of one shape: the same weights twice would
        // hide a mix-up, so use the transposed order of rows as the up weights.
        std::vector<float> wu(w[0].rbegin(), w[0].rend());
        auto wut = MakeTensor(gpu_.get(), DType::kBF16, N, s.K, wu);
        const std::vector<double> u = LinearF64(x, wu, T, N, s.K),
                                  un = LinearF64(xb, wu, T, N, s.K);
        std::vector<float> ref_glu(p.size()), naive_glu(p.size());
        for (size_t i = 0; i < p.size(); ++i) {
          ref_glu[i] = static_cast<float>(SiluTimes(p[i], u[i]));
          naive_glu[i] = static_cast<float>(SiluTimes(pn[i], un[i]));
        }
        auto out = MakePoisoned(gpu_.get(), T, N), up = MakePoisoned(gpu_.get(), T, N);
        ASSERT_TRUE(gpu_->LinearSwiGlu(out.t, xs, wt[0].t, wut.t, up.t).ok());
        ExpectBf16Close(Fetch(gpu_.get(), out.t), ref_glu, naive_glu,
                        absl::StrCat("LinearSwiGlu T=", T, " F=", N, " K=", s.K));
      }
    }
  }
}

// cuda::GemvSupported's domain above kGemvMaxT rows: K a multiple of 32, at
// most kGemvMmaMaxWeights weights, at most kGemvMmaMaxT rows. Outside it the
// backend's products still come out right (through cuBLAS).
TEST_F(CudaGemvTest, TensorCoreKernelDomainAndFallback) {
  std::vector<cuda::bf16> dummy(8);
  float out = 0;
  alignas(16) float x[8] = {};
  cuda::GemvParams p;
  p.n_jobs = 1;
  p.x = x;
  p.jobs[0].out = &out;
  p.jobs[0].w = dummy.data();
  p.jobs[0].N = 1024;
  p.K = 576;
  p.T = 32;
  EXPECT_TRUE(cuda::GemvSupported(p));
  p.K = 520;  // a multiple of 8, not of 32
  EXPECT_FALSE(cuda::GemvSupported(p));
  p.T = 8;
  EXPECT_TRUE(cuda::GemvSupported(p));  // the CUDA-core kernel takes it
  p.T = 65;
  p.K = 576;
  EXPECT_FALSE(cuda::GemvSupported(p));
  p.T = 64;
  p.jobs[0].N = static_cast<int>(cuda::kGemvMmaMaxWeights / p.K) + 1;
  EXPECT_FALSE(cuda::GemvSupported(p));
  // A folded norm: any epilogue on the tensor cores; on the CUDA cores with
  // kStore and kSwiGlu only.
  alignas(16) float norm_w[576] = {};
  p.jobs[0].N = 1024;
  p.norm_w = norm_w;
  p.epilogue = cuda::GemvEpilogue::kAdd;
  EXPECT_TRUE(cuda::GemvSupported(p));
  p.T = 8;
  EXPECT_FALSE(cuda::GemvSupported(p));
  p.epilogue = cuda::GemvEpilogue::kStore;
  EXPECT_TRUE(cuda::GemvSupported(p));

  const int T = 40, N = 33, K = 520;
  const std::vector<float> w = RoundBf16(RandomVec(static_cast<size_t>(N) * K, rng_, 0.05f));
  const std::vector<float> xv = RandomVec(static_cast<size_t>(T) * K, rng_);
  auto wt = MakeTensor(gpu_.get(), DType::kBF16, N, K, w);
  auto xt = MakeTensor(gpu_.get(), DType::kF32, T, K, xv);
  auto o = MakePoisoned(gpu_.get(), T, N);
  ASSERT_TRUE(gpu_->Linear(o.t, xt.t, wt.t, nullptr).ok());
  EXPECT_LE(MaxErrRatio(Fetch(gpu_.get(), o.t), LinearF64(xv, w, T, N, K), size_t{T} * N),
            kBf16Bound);
}

// The norm folded into the products: against ref::RmsNorm followed by a double
// product. Up to 8 rows x stays f32 (f32 summation error only); above, x is
// normalised, then rounded to bf16, in a different order than RmsNorm then
// rounding (x g rounded, the row scale after the product), which the bf16
// bound covers. K = 520 takes the composition (RmsNorm, then cuBLAS) above 8
// rows, and products of more than 4M weights the composition at 8 rows or
// fewer. The norm weights come in bf16 (the model's) and f32.
TEST_F(CudaGemvTest, RmsNormFusedProductsMatchNormThenProduct) {
  const float eps = 1e-5f;
  struct Case {
    int K, N, F;
    std::vector<int> rows;
  };
  // The default model's shapes; K = 520 (not a multiple of 32); products too
  // large for the fold at 8 rows or fewer (the norm then runs apart).
  const Case cases[] = {{576, 192, 1536, {1, 3, 8, 9, 32, 64}},
                        {520, 192, 1536, {1, 9, 32}},
                        {4096, 1100, 1536, {1, 8}}};
  for (const Case& cs : cases) {
    const int K = cs.K, N = cs.N, F = cs.F;
    const std::vector<float> w = Bf16Weights(N, K), wg = Bf16Weights(F, K), wu = Bf16Weights(F, K);
    const std::vector<float> g = RoundBf16(RandomVec(K, rng_));
    auto wt = MakeTensor(gpu_.get(), DType::kBF16, N, K, w);
    auto wgt = MakeTensor(gpu_.get(), DType::kBF16, F, K, wg);
    auto wut = MakeTensor(gpu_.get(), DType::kBF16, F, K, wu);
    for (DType norm_type : {DType::kBF16, DType::kF32}) {
      auto gt = MakeTensor(gpu_.get(), norm_type, 1, K, g);
      for (int T : cs.rows) {
        const std::vector<float> x = RandomVec(static_cast<size_t>(T) * K, rng_, 4.f);
        std::vector<float> xn(x.size());
        ref::RmsNorm(xn.data(), x.data(), g.data(), T, K, eps);
        const std::vector<float> xnb = RoundBf16(xn);
        auto xt = MakeTensor(gpu_.get(), DType::kF32, T, K, x);
        auto scratch_xn = MakePoisoned(gpu_.get(), T, K);
        const RowNorm norm{gt.t, eps, scratch_xn.t};
        const std::string what =
            absl::StrCat("T=", T, " K=", K, " norm ", norm_type == DType::kBF16 ? "bf16" : "f32");

        auto out = MakePoisoned(gpu_.get(), T, N);
        const LinearJob jobs[] = {{out.t, wt.t, nullptr}};
        ASSERT_TRUE(gpu_->RmsNormLinearMany(jobs, xt.t, norm).ok());
        const std::vector<double> ref = LinearF64(xn, w, T, N, K);
        const std::vector<float> got = Fetch(gpu_.get(), out.t);
        if (T <= cuda::kGemvMaxT) {
          EXPECT_LE(MaxErrRatio(got, ref, got.size()), 1e-3) << "RmsNormLinearMany " << what;
        } else {
          ExpectBf16Close(got, ToFloat(ref), ToFloat(LinearF64(xnb, w, T, N, K)),
                          "RmsNormLinearMany " + what);
        }

        auto glu = MakePoisoned(gpu_.get(), T, F), up = MakePoisoned(gpu_.get(), T, F);
        ASSERT_TRUE(gpu_->RmsNormLinearSwiGlu(glu.t, xt.t, norm, wgt.t, wut.t, up.t).ok());
        const std::vector<double> rg = LinearF64(xn, wg, T, F, K), ru = LinearF64(xn, wu, T, F, K);
        const std::vector<double> ng = LinearF64(xnb, wg, T, F, K),
                                  nu = LinearF64(xnb, wu, T, F, K);
        std::vector<double> ref_glu(rg.size());
        std::vector<float> naive_glu(rg.size());
        for (size_t i = 0; i < rg.size(); ++i) {
          ref_glu[i] = SiluTimes(rg[i], ru[i]);
          naive_glu[i] = static_cast<float>(SiluTimes(ng[i], nu[i]));
        }
        const std::vector<float> got_glu = Fetch(gpu_.get(), glu.t);
        if (T <= cuda::kGemvMaxT) {
          EXPECT_LE(MaxErrRatio(got_glu, ref_glu, got_glu.size()), 1e-3)
              << "RmsNormLinearSwiGlu " << what;
        } else {
          ExpectBf16Close(got_glu, ToFloat(ref_glu), naive_glu, "RmsNormLinearSwiGlu " + what);
        }
      }
    }
  }
}

// Above kGemvMmaMaxT rows (prefill) the norm is written straight in bf16 for
// the cuBLAS GEMMs, and RmsNormFeedForward also writes SwiGlu in bf16 for the
// down GEMM, which accumulates into x. At fewer rows it composes the few-row
// products. Both against f64 with the same bf16 roundings as the bound.
TEST_F(CudaGemvTest, RmsNormFeedForwardMatchesReference) {
  const float eps = 1e-5f;
  struct Case {
    int K, F;
    std::vector<int> rows;
  };
  // The default model's shapes; K = 522 (rows not 16-byte aligned: the
  // general norm kernel).
  const Case cases[] = {{576, 1536, {9, 64, 65, 200, 1024}}, {522, 256, {65, 130}}};
  for (const Case& cs : cases) {
    const int K = cs.K, F = cs.F;
    const std::vector<float> wg = Bf16Weights(F, K), wu = Bf16Weights(F, K), wd = Bf16Weights(K, F);
    const std::vector<float> g = RoundBf16(RandomVec(K, rng_));
    auto wgt = MakeTensor(gpu_.get(), DType::kBF16, F, K, wg);
    auto wut = MakeTensor(gpu_.get(), DType::kBF16, F, K, wu);
    auto wdt = MakeTensor(gpu_.get(), DType::kBF16, K, F, wd);
    auto gt = MakeTensor(gpu_.get(), DType::kBF16, 1, K, g);
    for (int T : cs.rows) {
      const std::string what = absl::StrCat("T=", T, " K=", K, " F=", F);
      const std::vector<float> x = RandomVec(static_cast<size_t>(T) * K, rng_, 4.f);
      std::vector<float> xn(x.size());
      ref::RmsNorm(xn.data(), x.data(), g.data(), T, K, eps);
      const std::vector<float> xnb = RoundBf16(xn);
      // The block's output (x after minus x before): exact, and with the
      // intermediate roundings the GPU may make (norm, gate and up's inputs,
      // the SwiGlu product in bf16).
      const std::vector<double> rg = LinearF64(xn, wg, T, F, K), ru = LinearF64(xn, wu, T, F, K);
      const std::vector<double> ng = LinearF64(xnb, wg, T, F, K), nu = LinearF64(xnb, wu, T, F, K);
      std::vector<float> h(rg.size()), hb(rg.size());
      for (size_t i = 0; i < rg.size(); ++i) {
        h[i] = static_cast<float>(SiluTimes(rg[i], ru[i]));
        hb[i] = RoundBf16(static_cast<float>(SiluTimes(ng[i], nu[i])));
      }
      const std::vector<float> ref = ToFloat(LinearF64(h, wd, T, K, F));
      const std::vector<float> naive = ToFloat(LinearF64(hb, wd, T, K, F));

      auto xt = MakeTensor(gpu_.get(), DType::kF32, T, K, x);
      auto scratch_xn = MakePoisoned(gpu_.get(), T, K);
      auto gate = MakePoisoned(gpu_.get(), T, F), up = MakePoisoned(gpu_.get(), T, F);
      ASSERT_TRUE(gpu_->RmsNormFeedForward(xt.t, RowNorm{gt.t, eps, scratch_xn.t}, wgt.t, wut.t,
                                           wdt.t, gate.t, up.t)
                      .ok())
          << what;
      std::vector<float> got = Fetch(gpu_.get(), xt.t);
      for (size_t i = 0; i < got.size(); ++i) got[i] -= x[i];
      ExpectBf16Close(got, ref, naive, "RmsNormFeedForward " + what);

      // RmsNormLinearMany at these rows: the norm in bf16 for cuBLAS.
      auto out = MakePoisoned(gpu_.get(), T, F);
      const LinearJob jobs[] = {{out.t, wgt.t, nullptr}};
      ASSERT_TRUE(gpu_->RmsNormLinearMany(jobs, xt.t, RowNorm{gt.t, eps, scratch_xn.t}).ok());
      const std::vector<float> xa = Fetch(gpu_.get(), xt.t);
      std::vector<float> xan(xa.size());
      ref::RmsNorm(xan.data(), xa.data(), g.data(), T, K, eps);
      ExpectBf16Close(Fetch(gpu_.get(), out.t), ToFloat(LinearF64(xan, wg, T, F, K)),
                      ToFloat(LinearF64(RoundBf16(xan), wg, T, F, K)), "RmsNormLinearMany " + what);
    }
  }
}

TEST_F(CudaGemvTest, RmsNormFusedProductsRejectScratchOverInput) {
  const int T = 32, K = 64, N = 32;
  const std::vector<float> x0 = RandomVec(static_cast<size_t>(T) * K, rng_);
  auto x = MakeTensor(gpu_.get(), DType::kF32, T, K, x0);
  auto w = MakeTensor(gpu_.get(), DType::kBF16, N, K, RandomVec(static_cast<size_t>(N) * K, rng_));
  auto g = MakeTensor(gpu_.get(), DType::kBF16, 1, K, RandomVec(K, rng_));
  auto out = MakePoisoned(gpu_.get(), T, N);
  const LinearJob jobs[] = {{out.t, w.t, nullptr}};
  EXPECT_EQ(gpu_->RmsNormLinearMany(jobs, x.t, RowNorm{g.t, 1e-5f, x.t}).code(),
            absl::StatusCode::kInvalidArgument);
  auto short_g = MakeTensor(gpu_.get(), DType::kBF16, 1, K - 8, RandomVec(K - 8, rng_));
  auto xn = MakePoisoned(gpu_.get(), T, K);
  EXPECT_EQ(gpu_->RmsNormLinearMany(jobs, x.t, RowNorm{short_g.t, 1e-5f, xn.t}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Fetch(gpu_.get(), x.t), x0);
}

}  // namespace
}  // namespace longctx

#endif  // LONGCTX_WITH_CUDA
