// CUDA backend ops against the CPU reference ops (kernels/ops.h) on random
// inputs of awkward sizes, outputs poisoned with NaN; error bounds per op as in
// tests/cuda_test_util.h. Built only with the CUDA backend; skipped without a GPU.
#ifdef LONGCTX_WITH_CUDA

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
    for (int D : {64, 576, 4097}) {
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
  KvGeometry g;
  g.n_layers = 3;
  g.n_kv_heads = 3;
  g.head_dim = 64;
  g.block_size = 16;
  g.n_blocks = 70;
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
  KvGeometry g;
  g.n_layers = 70;
  g.n_kv_heads = 8;
  g.head_dim = 128;
  g.block_size = 64;
  g.n_blocks = 3;
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
