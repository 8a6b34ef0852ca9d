// CUDA Infini-attention memory kernels (kernels/cuda/infini_memory.cu) against
// the reference ops (kernels/ref/ops_ref.h) on random inputs with GQA, outputs
// poisoned with NaN first. Built only with the CUDA backend; skipped without a GPU.
//
// Tolerance (relative L2 over the whole output, tests/cuda_test_util.h): the
// reference sums in double and rounds once to the fp32 memory and outputs, so
// the difference is the GPU's fp32 summation error alone (one fixed sequential
// sum per element, FMA contracted): every op, the delta fold's
// read-before-update correction included, must agree within kF32Bound = 1e-5.
// The sums are short (D ≤ 128 terms for retrieval, T ≤ 131 tokens plus the
// prior memory for a fold) and of same-signed weights, so there is no
// cancellation to amplify the error.
#ifdef LONGCTX_WITH_CUDA

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/backend/cuda/cuda_backend.h"
#include "gtest/gtest.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/ops.h"
#include "kernels/ref/ops_ref.h"
#include "tests/cuda_test_util.h"

namespace longctx {
namespace {

using testing_cuda::ExpectF32Close;
using testing_cuda::RandomVec;

// A device copy of a host vector; freed on destruction.
class DeviceVec {
 public:
  explicit DeviceVec(const std::vector<float>& host) : n_(host.size()) {
    EXPECT_EQ(cudaMalloc(&ptr_, std::max<size_t>(n_, 1) * sizeof(float)), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(ptr_, host.data(), n_ * sizeof(float), cudaMemcpyHostToDevice),
              cudaSuccess);
  }
  // An output of n floats, all NaN, so that elements a kernel fails to write fail the checks.
  static DeviceVec Poisoned(size_t n) {
    return DeviceVec(std::vector<float>(n, std::numeric_limits<float>::quiet_NaN()));
  }
  ~DeviceVec() { cudaFree(ptr_); }
  DeviceVec(const DeviceVec&) = delete;
  DeviceVec& operator=(const DeviceVec&) = delete;
  DeviceVec(DeviceVec&& o) noexcept : ptr_(o.ptr_), n_(o.n_) { o.ptr_ = nullptr; }

  float* get() { return ptr_; }
  std::vector<float> Fetch() const {
    std::vector<float> host(n_);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(host.data(), ptr_, n_ * sizeof(float), cudaMemcpyDeviceToHost),
              cudaSuccess);
    return host;
  }

 private:
  float* ptr_ = nullptr;
  size_t n_ = 0;
};

struct Shape {
  int H;     // q heads
  int n_kv;  // kv heads (H / n_kv q heads share one)
  int D;
};
// SmolLM2's heads, an MHA shape with a larger head, and an odd head size.
const Shape kShapes[] = {{9, 3, 64}, {4, 4, 128}, {6, 2, 40}};
const int kTokens[] = {1, 7, 64, 131};

class CudaInfiniTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  }

  // A memory that has seen `T` random tokens (reference fold from empty): M
  // [n_kv, D, D], z [n_kv, D].
  void FilledMemory(const Shape& s, int T, cpu::InfiniUpdateRule rule, std::vector<float>* mem,
                    std::vector<float>* z) {
    mem->assign(static_cast<size_t>(s.n_kv) * s.D * s.D, 0.f);
    z->assign(static_cast<size_t>(s.n_kv) * s.D, 0.f);
    const size_t n = static_cast<size_t>(T) * s.n_kv * s.D;
    const std::vector<float> k = RandomVec(n, rng_), v = RandomVec(n, rng_);
    ref::InfiniFold(mem->data(), z->data(), k.data(), v.data(), T, s.n_kv, s.D, rule, kEps);
  }

  static constexpr float kEps = 1e-6f;
  std::mt19937 rng_{4321};
};

TEST_F(CudaInfiniTest, RetrieveMatchesCpu) {
  for (const Shape& s : kShapes) {
    std::vector<float> mem, z;
    FilledMemory(s, 50, cpu::InfiniUpdateRule::kLinear, &mem, &z);
    for (int T : kTokens) {
      const size_t n = static_cast<size_t>(T) * s.H * s.D;
      const std::vector<float> q = RandomVec(n, rng_);
      std::vector<float> ref(n);
      ref::InfiniRetrieve(ref.data(), q.data(), mem.data(), z.data(), T, s.H, s.n_kv, s.D, kEps);
      DeviceVec dq(q), dmem(mem), dz(z);
      DeviceVec out = DeviceVec::Poisoned(n);
      ASSERT_EQ(cuda::InfiniRetrieve(out.get(), dq.get(), dmem.get(), dz.get(), T, s.H, s.n_kv, s.D,
                                     kEps, nullptr),
                cudaSuccess);
      ExpectF32Close(out.Fetch(), ref,
                     absl::StrCat("retrieve H=", s.H, " kv=", s.n_kv, " D=", s.D, " T=", T));
    }
  }
}

TEST_F(CudaInfiniTest, RetrieveIsZeroWhileEmpty) {
  const Shape s = kShapes[0];
  const int T = 5;
  const size_t n = static_cast<size_t>(T) * s.H * s.D;
  DeviceVec dq(RandomVec(n, rng_));
  DeviceVec dmem(std::vector<float>(static_cast<size_t>(s.n_kv) * s.D * s.D, 0.f));
  DeviceVec dz(std::vector<float>(static_cast<size_t>(s.n_kv) * s.D, 0.f));
  DeviceVec out = DeviceVec::Poisoned(n);
  ASSERT_EQ(cuda::InfiniRetrieve(out.get(), dq.get(), dmem.get(), dz.get(), T, s.H, s.n_kv, s.D,
                                 kEps, nullptr),
            cudaSuccess);
  EXPECT_EQ(out.Fetch(), std::vector<float>(n, 0.f));
}

TEST_F(CudaInfiniTest, FoldMatchesCpuForBothRules) {
  for (const auto rule : {cpu::InfiniUpdateRule::kLinear, cpu::InfiniUpdateRule::kDelta}) {
    const bool delta = rule == cpu::InfiniUpdateRule::kDelta;
    for (const Shape& s : kShapes) {
      for (int T : kTokens) {
        // Start from a memory that already holds a segment, so the delta
        // correction has something to subtract.
        std::vector<float> mem, z;
        FilledMemory(s, 40, rule, &mem, &z);
        const size_t n = static_cast<size_t>(T) * s.n_kv * s.D;
        const std::vector<float> k = RandomVec(n, rng_), v = RandomVec(n, rng_);
        DeviceVec dmem(mem), dz(z), dk(k), dv(v);
        DeviceVec scratch = DeviceVec::Poisoned(n);
        std::vector<float> ref_mem = mem, ref_z = z;
        ref::InfiniFold(ref_mem.data(), ref_z.data(), k.data(), v.data(), T, s.n_kv, s.D, rule,
                        kEps);
        cuda::InfiniFoldParams p;
        p.mem = dmem.get();
        p.z = dz.get();
        p.k = dk.get();
        p.v = dv.get();
        p.scratch = delta ? scratch.get() : nullptr;
        p.T = T;
        p.n_kv_heads = s.n_kv;
        p.D = s.D;
        p.delta = delta;
        p.eps = kEps;
        ASSERT_EQ(cuda::InfiniFold(p, nullptr), cudaSuccess);
        const std::string what =
            absl::StrCat(delta ? "delta" : "linear", " fold kv=", s.n_kv, " D=", s.D, " T=", T);
        const std::vector<float> got_mem = dmem.Fetch(), got_z = dz.Fetch();
        ExpectF32Close(got_mem, ref_mem, what + " (M)");
        ExpectF32Close(got_z, ref_z, what + " (z)");
      }
    }
  }
}

TEST_F(CudaInfiniTest, MixMatchesCpu) {
  const Shape s = kShapes[0];
  for (int T : kTokens) {
    const size_t n = static_cast<size_t>(T) * s.H * s.D;
    const std::vector<float> a_mem = RandomVec(n, rng_), a_dca = RandomVec(n, rng_);
    const std::vector<float> beta = RandomVec(static_cast<size_t>(s.H), rng_, 3.f);
    std::vector<float> ref(n);
    ref::InfiniMix(ref.data(), a_mem.data(), a_dca.data(), beta.data(), T, s.H, s.D);
    DeviceVec dm(a_mem), dd(a_dca), db(beta);
    DeviceVec out = DeviceVec::Poisoned(n);
    ASSERT_EQ(cuda::InfiniMix(out.get(), dm.get(), dd.get(), db.get(), T, s.H, s.D, nullptr),
              cudaSuccess);
    ExpectF32Close(out.Fetch(), ref, absl::StrCat("mix T=", T));
  }
}

// The CUDA backend's fold straight from the bf16 paged cache: the keys of the
// leaving blocks, rotated back to un-rotated, folded into a host memory. The
// reference reads the same blocks back (bf16 values), rotates with ref::Rope
// and folds with ref::InfiniFold. The GPU RoPE uses single-precision sincos
// after a double range reduction (absolute error about 5e-7, docs/cuda.md), so
// keys differ slightly before the fold: bound 1e-4.
TEST_F(CudaInfiniTest, BackendFoldKvMatchesHostFold) {
  auto b = CreateCudaBackend();
  ASSERT_TRUE(b.ok()) << b.status();
  Backend& gpu = **b;
  KvGeometry g{.n_layers = 2, .n_kv_heads = 3, .head_dim = 64, .block_size = 16, .n_blocks = 8};
  ASSERT_TRUE(gpu.InitKv(g).ok());
  for (int64_t blk = 0; blk < g.n_blocks; ++blk) {
    const std::vector<float> data = RandomVec(static_cast<size_t>(g.ElementsPerBlock()), rng_);
    ASSERT_TRUE(gpu.KvWriteBlock(blk, data.data()).ok());
  }
  const Shape s{9, g.n_kv_heads, g.head_dim};
  const int width = g.n_kv_heads * g.head_dim, L = 32, begin = 64;
  const std::vector<int32_t> blocks = {5, 2, 7};  // physical blocks of tokens 64 .. 111
  const int T = static_cast<int>(blocks.size()) * g.block_size;
  std::vector<int32_t> back(static_cast<size_t>(T));
  for (int j = 0; j < T; ++j) back[static_cast<size_t>(j)] = -((begin + j) % L);
  std::vector<float> inv_freq(static_cast<size_t>(g.head_dim / 2));
  for (int i = 0; i < g.head_dim / 2; ++i) {
    inv_freq[static_cast<size_t>(i)] = std::pow(1e4f, -2.f * i / g.head_dim);
  }
  for (const auto rule : {cpu::InfiniUpdateRule::kLinear, cpu::InfiniUpdateRule::kDelta}) {
    for (int layer = 0; layer < g.n_layers; ++layer) {
      // Reference: the cached rows of `layer`, keys rotated back on the host.
      std::vector<float> k(static_cast<size_t>(T) * width), v(k.size());
      std::vector<float> block(static_cast<size_t>(g.ElementsPerBlock()));
      const int64_t plane = int64_t{g.block_size} * width;
      for (size_t i = 0; i < blocks.size(); ++i) {
        ASSERT_TRUE(gpu.KvReadBlock(blocks[i], block.data()).ok());
        const float* src = block.data() + int64_t{layer} * 2 * plane;
        std::copy(src, src + plane, k.begin() + static_cast<int64_t>(i) * plane);
        std::copy(src + plane, src + 2 * plane, v.begin() + static_cast<int64_t>(i) * plane);
      }
      ref::Rope(k.data(), back.data(), inv_freq.data(), T, g.n_kv_heads, g.head_dim);
      std::vector<float> mem, z;
      FilledMemory(s, 30, rule, &mem, &z);
      std::vector<float> ref_mem = mem, ref_z = z;
      ref::InfiniFold(ref_mem.data(), ref_z.data(), k.data(), v.data(), T, g.n_kv_heads, g.head_dim,
                      rule, kEps);
      ASSERT_TRUE(
          gpu.InfiniFoldKv(mem.data(), z.data(), layer, blocks, back, inv_freq, rule, kEps).ok());
      const std::string what = absl::StrCat(
          rule == cpu::InfiniUpdateRule::kDelta ? "delta" : "linear", " layer ", layer);
      EXPECT_LE(testing_cuda::RelErr(mem, ref_mem), 1e-4) << what << " (M)";
      EXPECT_LE(testing_cuda::RelErr(z, ref_z), 1e-4) << what << " (z)";
    }
  }
  // A block outside the arena is refused before any launch.
  std::vector<float> mem(static_cast<size_t>(g.n_kv_heads) * g.head_dim * g.head_dim), z(width);
  const std::vector<int32_t> bad = {int32_t{8}};
  EXPECT_EQ(gpu.InfiniFoldKv(mem.data(), z.data(), 0, bad, std::span<const int32_t>(back).first(16),
                             inv_freq, cpu::InfiniUpdateRule::kLinear, kEps)
                .code(),
            absl::StatusCode::kOutOfRange);
}

// The CUDA backend's mix on device tensors against retrieval and mix on the host.
TEST_F(CudaInfiniTest, BackendMixMatchesHost) {
  auto b = CreateCudaBackend();
  ASSERT_TRUE(b.ok()) << b.status();
  Backend& gpu = **b;
  const Shape s = kShapes[0];
  std::vector<float> mem, z;
  FilledMemory(s, 50, cpu::InfiniUpdateRule::kLinear, &mem, &z);
  const std::vector<float> beta = RandomVec(static_cast<size_t>(s.H), rng_, 2.f);
  for (int T : kTokens) {
    const int64_t cols = int64_t{s.H} * s.D;
    const std::vector<float> q = RandomVec(static_cast<size_t>(T * cols), rng_);
    const std::vector<float> attn = RandomVec(q.size(), rng_);
    std::vector<float> a_mem(q.size()), ref(q.size());
    ref::InfiniRetrieve(a_mem.data(), q.data(), mem.data(), z.data(), T, s.H, s.n_kv, s.D, kEps);
    ref::InfiniMix(ref.data(), a_mem.data(), attn.data(), beta.data(), T, s.H, s.D);
    auto dq = testing_cuda::MakeTensor(&gpu, DType::kF32, T, cols, q);
    auto da = testing_cuda::MakeTensor(&gpu, DType::kF32, T, cols, attn);
    ASSERT_TRUE(gpu.InfiniMix(da.t, dq.t, s.H, s.n_kv, mem.data(), z.data(), beta, kEps).ok());
    ExpectF32Close(testing_cuda::Fetch(&gpu, da.t), ref, absl::StrCat("backend mix T=", T));
  }
  // Shapes that do not pair are refused.
  auto dq = testing_cuda::MakeTensor(&gpu, DType::kF32, 1, 8 * s.D, {});
  EXPECT_EQ(
      gpu.InfiniMix(dq.t, dq.t, 8, s.n_kv, mem.data(), z.data(), std::vector<float>(8, 0.f), kEps)
          .code(),
      absl::StatusCode::kInvalidArgument);
}

TEST_F(CudaInfiniTest, RejectsShapesItCannotRun) {
  DeviceVec buf(std::vector<float>(64, 0.f));
  // 9 q heads cannot pair evenly with 2 kv heads.
  EXPECT_EQ(
      cuda::InfiniRetrieve(buf.get(), buf.get(), buf.get(), buf.get(), 1, 9, 2, 8, kEps, nullptr),
      cudaErrorInvalidValue);
  // The delta rule needs its scratch buffer.
  cuda::InfiniFoldParams p;
  p.mem = buf.get();
  p.z = buf.get();
  p.k = buf.get();
  p.v = buf.get();
  p.T = 1;
  p.n_kv_heads = 1;
  p.D = 8;
  p.delta = true;
  EXPECT_EQ(cuda::InfiniFold(p, nullptr), cudaErrorInvalidValue);
  // Head sizes past the kernels' limit.
  p.delta = false;
  p.D = 2048;
  EXPECT_EQ(cuda::InfiniFold(p, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace longctx

#endif  // LONGCTX_WITH_CUDA
