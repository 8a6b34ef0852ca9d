// CUDA context-parallel attention (docs/design.md §7): Backend::PartialAttention of every
// kernel (simple, tiled, split-KV, auto) against ref::DcaPartialAttention
// (kernels/ref/ops_ref.h, double), and Backend::MergeAttention of the GPU
// partials against single-pass attention over all keys (ref::DcaAttention). A
// sequence's keys are dealt to R ranks round-robin by span, as ChunkPlacement
// does; each rank's keys lie back to back in its own randomly paged block
// table. The GPU arena and every output start as NaN, so a kernel that reads an
// unheld slot or leaves an element unwritten fails.
//
// Bounds (STYLE rule 2). K and V are bf16 values on the GPU (its cache's
// precision) and given to the reference as the same bf16 values, so the
// reference is exact attention over the same keys. Partial o: relative L2 error
// ≤ 1e-2. Partial lse: the kernels round the rotated query to bf16 (relative
// 2^-9 per element) and, for the scores, nothing else, so |Δs| ≤ 2^-9 · scale ·
// |q| · max|k| per key and the log-sum-exp moves by no more than the largest
// |Δs|; the test allows twice that plus 1e-5. Rows that see no held key must be exactly lse = -inf,
// o = 0 on both. Merged output: relative error ≤ 1e-2 and ≤ 2× the error of the same kernel's
// single-pass attention over all keys (+1e-5). The merge alone, on f32 partials, is an f32 op: ≤
// 1e-5 against ref::MergeAttention.
#ifdef LONGCTX_WITH_CUDA

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/backend/cuda/cuda_backend.h"
#include "gtest/gtest.h"
#include "kernels/ops.h"
#include "kernels/ref/ops_ref.h"
#include "tests/cuda_test_util.h"

namespace longctx {
namespace {

using testing_cuda::Fetch;
using testing_cuda::MakePoisoned;
using testing_cuda::MakeTensor;
using testing_cuda::OwnedTensor;
using testing_cuda::RandomVec;
using testing_cuda::RelErr;
using testing_cuda::RoundBf16;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct PartialCase {
  std::string name;
  int H, n_kv, D, block_size;
  int ctx;   // tokens after the call
  int n_q;   // new tokens (the last n_q of ctx)
  int C, w;  // chunk_size and local window; C = 0: plain RoPE
  int span;  // placement span; 0: the chunk length
  int world, home;
};

std::ostream& operator<<(std::ostream& os, const PartialCase& c) { return os << c.name; }

cpu::DcaParams DcaOf(const PartialCase& c) {
  cpu::DcaParams p;
  if (c.C > 0) {
    p.chunk_size = c.C;
    p.chunk_len = c.C - c.w;
  }
  p.softmax_scale = 1.f / std::sqrt(static_cast<float>(c.D));
  return p;
}

// Held runs of `rank`: spans c with (home + c) mod world == rank, clipped to ctx.
void HeldRuns(const PartialCase& c, int span, int rank, std::vector<int32_t>* first,
              std::vector<int32_t>* count) {
  first->clear();
  count->clear();
  for (int s = 0; int64_t{s} * span < c.ctx; ++s) {
    if ((c.home + s) % c.world != rank) continue;
    first->push_back(s * span);
    count->push_back(std::min(span, c.ctx - s * span));
  }
}

class CudaAttentionPartialTest : public ::testing::TestWithParam<PartialCase> {
 protected:
  void SetUp() override {
    if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_P(CudaAttentionPartialTest, PartialsAndMergeMatchCpu) {
  const PartialCase& c = GetParam();
  std::mt19937 rng(static_cast<uint32_t>(std::hash<std::string>()(c.name)));
  const cpu::DcaParams dca = DcaOf(c);
  const int span = c.span > 0 ? c.span : dca.chunk_len;
  const int width = c.n_kv * c.D, bs = c.block_size;
  const int64_t cols = int64_t{c.H} * c.D, part_cols = int64_t{c.H} * (c.D + 1);
  const int q_start = c.ctx - c.n_q;

  // Runs and local block counts per rank; rank `world` is the whole sequence
  // (the single-pass reference).
  std::vector<std::vector<int32_t>> run_first(c.world), run_count(c.world);
  std::vector<int> held(c.world + 1);
  for (int r = 0; r < c.world; ++r) {
    HeldRuns(c, span, r, &run_first[r], &run_count[r]);
    held[r] = std::accumulate(run_count[r].begin(), run_count[r].end(), 0);
  }
  held[c.world] = c.ctx;
  KvGeometry g{.n_layers = 2, .n_kv_heads = c.n_kv, .head_dim = c.D, .block_size = bs};
  for (int h : held) g.n_blocks += (h + bs - 1) / bs;
  g.n_blocks += 2;
  std::vector<int32_t> phys(g.n_blocks);
  std::iota(phys.begin(), phys.end(), 0);
  std::shuffle(phys.begin(), phys.end(), rng);
  std::vector<std::vector<int32_t>> tables(c.world + 1);
  size_t next = 0;
  for (int r = 0; r <= c.world; ++r) {
    const size_t nb = static_cast<size_t>((held[r] + bs - 1) / bs);
    tables[r].assign(phys.begin() + next, phys.begin() + next + nb);
    next += nb;
  }

  const std::vector<CudaAttentionKernels> modes = {
      CudaAttentionKernels::kSimple,      CudaAttentionKernels::kTiled,
      CudaAttentionKernels::kSplit,       CudaAttentionKernels::kAuto,
      CudaAttentionKernels::kAutoMmaSync, CudaAttentionKernels::kAutoWgmmaOverlapped};
  std::vector<std::unique_ptr<Backend>> gpus;
  const std::vector<float> nan_block(g.ElementsPerBlock(), std::numeric_limits<float>::quiet_NaN());
  for (CudaAttentionKernels m : modes) {
    CudaBackendOptions o;
    o.attention = m;
    auto b = CreateCudaBackend(o);
    ASSERT_TRUE(b.ok()) << b.status();
    ASSERT_TRUE((*b)->InitKv(g).ok());
    for (int64_t blk = 0; blk < g.n_blocks; ++blk) {
      ASSERT_TRUE((*b)->KvWriteBlock(blk, nan_block.data()).ok());
    }
    gpus.push_back(std::move(*b));
  }
  std::vector<float> inv_freq(c.D / 2);
  for (int i = 0; i < c.D / 2; ++i) inv_freq[i] = std::pow(1e4f, -2.f * i / c.D);

  // Keys and values of layer 1 (bf16 values), stored in every table; kept per
  // rank (held keys back to back) for the reference.
  const std::vector<float> k = RoundBf16(RandomVec(static_cast<size_t>(c.ctx) * width, rng));
  const std::vector<float> v = RoundBf16(RandomVec(static_cast<size_t>(c.ctx) * width, rng));
  std::vector<std::vector<float>> held_k(c.world + 1), held_v(c.world + 1);
  for (int r = 0; r <= c.world; ++r) {
    if (held[r] == 0) continue;
    std::vector<float>& kr = held_k[r];
    std::vector<float>& vr = held_v[r];
    std::vector<int32_t> slots;
    auto add = [&](int j) {
      const int lj = static_cast<int>(slots.size());
      slots.push_back(tables[r][lj / bs] * bs + lj % bs);
      kr.insert(kr.end(), k.begin() + int64_t{j} * width, k.begin() + int64_t{j + 1} * width);
      vr.insert(vr.end(), v.begin() + int64_t{j} * width, v.begin() + int64_t{j + 1} * width);
    };
    if (r == c.world) {
      for (int j = 0; j < c.ctx; ++j) add(j);
    } else {
      for (size_t s = 0; s < run_first[r].size(); ++s) {
        for (int j = run_first[r][s]; j < run_first[r][s] + run_count[r][s]; ++j) add(j);
      }
    }
    const int n = held[r];
    for (auto& gpu : gpus) {
      OwnedTensor kt = MakeTensor(gpu.get(), DType::kF32, n, width, kr);
      OwnedTensor vt = MakeTensor(gpu.get(), DType::kF32, n, width, vr);
      ASSERT_TRUE(gpu->KvWrite(1, kt.t, vt.t, slots).ok());
    }
  }

  std::vector<float> q = RandomVec(static_cast<size_t>(c.n_q) * cols, rng, 2.f);
  auto partial_seq = [&](int r) {
    PartialAttentionSeq s;
    s.n_q = c.n_q;
    s.q_start = q_start;
    s.block_table = tables[r];
    s.run_first = run_first[r];
    s.run_count = run_count[r];
    s.dca = dca;
    return s;
  };
  AttentionSeq full;
  full.n_q = c.n_q;
  full.q_start = q_start;
  full.block_table = tables[c.world];
  full.dca = dca;

  // Reference: the partials (packed [o | lse] per rank, as the backends write
  // them) and single-pass attention. Query rows in parallel: the reference is
  // single-threaded and the 4097-token prefills are seconds of it.
  auto view = [&](int r) {
    return ref::DenseKvView(held_k[r].data(), held_v[r].data(), held[r], c.n_kv);
  };
  std::vector<float> ref_parts(static_cast<size_t>(c.world) * c.n_q * part_cols, std::nanf(""));
  std::vector<float> ref(static_cast<size_t>(c.n_q) * cols, std::nanf(""));
  for (int r = 0; r < c.world; ++r) {
    float* o = ref_parts.data() + int64_t{r} * c.n_q * part_cols;
    const cpu::KeyRuns runs{run_first[r].data(), run_count[r].data(),
                            static_cast<int>(run_first[r].size())};
#pragma omp parallel for schedule(dynamic, 1)
    for (int row = 0; row < c.n_q; ++row) {
      ref::DcaPartialAttention(o + row * cols, o + int64_t{c.n_q} * cols + int64_t{row} * c.H,
                               q.data() + row * cols, view(r), runs, inv_freq.data(), dca, 1,
                               q_start + row, c.H, c.D);
    }
  }
#pragma omp parallel for schedule(dynamic, 1)
  for (int row = 0; row < c.n_q; ++row) {
    ref::DcaAttention(ref.data() + row * cols, q.data() + row * cols, view(c.world),
                      inv_freq.data(), dca, 1, q_start + row, c.H, c.D);
  }

  // The lse bound of the header, per (query, head) row.
  float k_max = 0.f;
  for (int j = 0; j < c.ctx; ++j) {
    for (int h = 0; h < c.n_kv; ++h) {
      double n2 = 0;
      for (int d = 0; d < c.D; ++d)
        n2 +=
            double{k[(int64_t{j} * c.n_kv + h) * c.D + d]} * k[(int64_t{j} * c.n_kv + h) * c.D + d];
      k_max = std::max(k_max, static_cast<float>(std::sqrt(n2)));
    }
  }
  std::vector<float> lse_bound(static_cast<size_t>(c.n_q) * c.H);
  for (int64_t n = 0; n < int64_t{c.n_q} * c.H; ++n) {
    double n2 = 0;
    for (int d = 0; d < c.D; ++d) n2 += double{q[n * c.D + d]} * q[n * c.D + d];
    lse_bound[n] =
        2.f * std::ldexp(1.f, -9) * dca.softmax_scale * static_cast<float>(std::sqrt(n2)) * k_max +
        1e-5f;
  }

  for (size_t m = 0; m < gpus.size(); ++m) {
    Backend* gpu = gpus[m].get();
    const std::string what = absl::StrCat(c.name, " kernels=", CudaAttentionKernelsName(modes[m]));
    SCOPED_TRACE(what);
    OwnedTensor qt = MakeTensor(gpu, DType::kF32, c.n_q, cols, q);
    std::vector<float> gathered;
    double worst_lse = 0;
    for (int r = 0; r < c.world; ++r) {
      const PartialAttentionSeq s = partial_seq(r);
      OwnedTensor part = MakePoisoned(gpu, c.n_q, part_cols);
      const absl::Status st = gpu->PartialAttention(part.t, qt.t, 1, c.H, {&s, 1}, inv_freq);
      ASSERT_TRUE(st.ok()) << st;
      ASSERT_TRUE(gpu->Synchronize().ok());
      const std::vector<float> got = Fetch(gpu, part.t);
      const float* want = ref_parts.data() + int64_t{r} * c.n_q * part_cols;
      const int64_t n_o = int64_t{c.n_q} * cols;
      const std::vector<float> got_o(got.begin(), got.begin() + n_o), want_o(want, want + n_o);
      EXPECT_LE(RelErr(got_o, want_o), testing_cuda::kBf16Bound) << "rank " << r << " o";
      for (int64_t n = 0; n < int64_t{c.n_q} * c.H; ++n) {
        const float gl = got[n_o + n], wl = want[n_o + n];
        if (wl == kNegInf) {
          ASSERT_EQ(gl, kNegInf) << "rank " << r << " row " << n << " sees no key";
          for (int d = 0; d < c.D; ++d) ASSERT_EQ(got[n * c.D + d], 0.f) << "rank " << r;
          continue;
        }
        ASSERT_TRUE(std::isfinite(gl)) << "rank " << r << " row " << n << " lse " << gl;
        ASSERT_LE(std::abs(gl - wl), lse_bound[n]) << "rank " << r << " row " << n;
        worst_lse = std::max(worst_lse, double{std::abs(gl - wl)});
      }
      gathered.insert(gathered.end(), got.begin(), got.end());
    }

    // Merge of the GPU partials vs single-pass attention (reference and this GPU).
    OwnedTensor parts = MakeTensor(gpu, DType::kF32, int64_t{c.world} * c.n_q, part_cols, gathered);
    OwnedTensor merged = MakePoisoned(gpu, c.n_q, cols);
    ASSERT_TRUE(gpu->MergeAttention(merged.t, parts.t, c.world, c.H).ok());
    OwnedTensor single = MakePoisoned(gpu, c.n_q, cols);
    ASSERT_TRUE(gpu->Attention(single.t, qt.t, 1, c.H, {&full, 1}, inv_freq).ok());
    ASSERT_TRUE(gpu->Synchronize().ok());
    const double e_merged = RelErr(Fetch(gpu, merged.t), ref);
    const double e_single = RelErr(Fetch(gpu, single.t), ref);
    EXPECT_LE(e_merged, testing_cuda::kBf16Bound);
    EXPECT_LE(e_merged, 2 * e_single + 1e-5) << "single-pass error " << e_single;
    std::printf("[partial] %s merged_err=%.3e single_err=%.3e max_dlse=%.3e\n", what.c_str(),
                e_merged, e_single, worst_lse);
  }
}

std::vector<PartialCase> Cases() {
  std::vector<PartialCase> cases;
  // Prefill at awkward lengths: SmolLM2 heads, DCA L = 192 dealt by chunk over 2
  // ranks; GQA 8:2 at D = 128, plain RoPE in 128-token spans over 3 ranks.
  for (int len : {1, 63, 65, 1000, 4097}) {
    cases.push_back({absl::StrCat("prefill", len, "_gqa64_C256w64_R2"), 9, 3, 64, 64, len, len, 256,
                     64, 0, 2, 0});
    cases.push_back({absl::StrCat("prefill", len, "_gqa128_plain_span128_R3"), 8, 2, 128, 64, len,
                     len, 0, 0, 128, 3, 1});
  }
  // Appends that cross chunk boundaries, and decode (the split-KV kernel).
  cases.push_back({"append100_at900_gqa64_C256w64_R2", 9, 3, 64, 64, 1000, 100, 256, 64, 0, 2, 1});
  cases.push_back(
      {"append200_at3897_gqa128_C256w64_R3", 8, 2, 128, 64, 4097, 200, 256, 64, 0, 3, 2});
  cases.push_back({"append65_mha128_C1000w232_R2", 4, 4, 128, 64, 4097, 65, 1000, 232, 0, 2, 0});
  cases.push_back({"decode_at4096_gqa64_C256w64_R2", 9, 3, 64, 64, 4097, 1, 256, 64, 0, 2, 0});
  cases.push_back({"decode_at999_gqa128_plain_span64_R4", 8, 2, 128, 64, 1000, 1, 0, 0, 64, 4, 3});
  cases.push_back(
      {"decode2_at1000_mha128_C1000w232_R2", 4, 4, 128, 64, 1002, 2, 1000, 232, 0, 2, 1});
  // A rank that holds nothing (span 64 over 3 ranks, 65 tokens), and rows of a
  // rank that see none of its keys.
  cases.push_back({"empty_rank_gqa64_span64_R3", 9, 3, 64, 64, 65, 65, 0, 0, 64, 3, 0});
  cases.push_back({"empty_rows_decode_gqa64_span64_R3", 9, 3, 64, 64, 65, 2, 0, 0, 64, 3, 0});
  // Spans off the key tile (the fast kernels fall back to the simple one) and
  // 16-token blocks.
  cases.push_back({"span100_gqa64_plain_R2", 9, 3, 64, 64, 1000, 1000, 0, 0, 100, 2, 0});
  cases.push_back({"span100_decode_gqa128_plain_R2", 8, 2, 128, 64, 1000, 3, 0, 0, 100, 2, 1});
  cases.push_back({"bs16_gqa64_C256w64_R2", 9, 3, 64, 16, 1000, 65, 256, 64, 0, 2, 0});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Cases, CudaAttentionPartialTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<PartialCase>& info) {
                           return info.param.name;
                         });

// The merge alone on f32 partials with empty ranks and empty rows, vs ref::MergeAttention.
TEST(CudaAttentionMergeTest, MatchesCpuMergeWithEmptyPartials) {
  if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  auto b = CreateCudaBackend();
  ASSERT_TRUE(b.ok()) << b.status();
  Backend* gpu = b->get();
  std::mt19937 rng(7);
  for (int R : {1, 2, 3, 5}) {
    for (int D : {64, 128}) {
      const int rows = 37, H = 3;
      const int64_t N = int64_t{rows} * H, part_cols = int64_t{H} * (D + 1);
      std::vector<float> parts = RandomVec(static_cast<size_t>(R * rows * part_cols), rng);
      std::uniform_real_distribution<float> lse(-20.f, 20.f);
      std::uniform_int_distribution<int> pick(0, 3);
      for (int r = 0; r < R; ++r) {
        float* o = parts.data() + int64_t{r} * rows * part_cols;
        for (int64_t n = 0; n < N; ++n) {
          // About one row in four of a partial is empty; rows n % 7 == 0 are
          // empty in every partial.
          const bool empty = n % 7 == 0 || pick(rng) == 0;
          o[N * D + n] = empty ? kNegInf : lse(rng);
          if (empty) std::fill(o + n * D, o + (n + 1) * D, 0.f);
        }
      }
      std::vector<float> want(static_cast<size_t>(N * D), std::nanf(""));
      ref::MergeAttention(want.data(), nullptr, parts.data(), parts.data() + N * D,
                          int64_t{rows} * part_cols, R, N, D);
      OwnedTensor pt = MakeTensor(gpu, DType::kF32, int64_t{R} * rows, part_cols, parts);
      OwnedTensor out = MakePoisoned(gpu, rows, int64_t{H} * D);
      ASSERT_TRUE(gpu->MergeAttention(out.t, pt.t, R, H).ok());
      ASSERT_TRUE(gpu->Synchronize().ok());
      const std::vector<float> got = Fetch(gpu, out.t);
      testing_cuda::ExpectF32Close(got, want, absl::StrCat("R=", R, " D=", D));
      for (int64_t n = 0; n < N; n += 7) {
        for (int d = 0; d < D; ++d) ASSERT_EQ(got[n * D + d], 0.f) << "empty row " << n;
      }
    }
  }
}

TEST(CudaAttentionPartialRejectTest, BadRunsAndShapesAreInvalidArgument) {
  if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  auto b = CreateCudaBackend();
  ASSERT_TRUE(b.ok()) << b.status();
  Backend* gpu = b->get();
  KvGeometry g{.n_layers = 1, .n_kv_heads = 2, .head_dim = 64, .block_size = 64, .n_blocks = 4};
  ASSERT_TRUE(gpu->InitKv(g).ok());
  const std::vector<float> inv_freq(32, 0.5f);
  OwnedTensor q = MakeTensor(gpu, DType::kF32, 10, 4 * 64, {});
  OwnedTensor part = MakeTensor(gpu, DType::kF32, 10, 4 * 65, {});
  const std::vector<int32_t> table = {0, 1};
  std::vector<int32_t> first = {0, 128}, count = {64, 10};
  PartialAttentionSeq s;
  s.n_q = 10;
  s.q_start = 128;
  s.block_table = table;
  s.dca.softmax_scale = 0.125f;
  auto run = [&](std::vector<int32_t> f, std::vector<int32_t> n) {
    first = std::move(f);
    count = std::move(n);
    s.run_first = first;
    s.run_count = count;
    return gpu->PartialAttention(part.t, q.t, 0, 4, {&s, 1}, inv_freq).code();
  };
  EXPECT_EQ(run({0, 128}, {64, 10}), absl::StatusCode::kOk);
  EXPECT_EQ(run({0, 32}, {64, 10}), absl::StatusCode::kInvalidArgument);   // overlapping runs
  EXPECT_EQ(run({0, 128}, {64, 0}), absl::StatusCode::kInvalidArgument);   // an empty run
  EXPECT_EQ(run({0, 128}, {64, 65}), absl::StatusCode::kInvalidArgument);  // 129 keys, 2 blocks
  EXPECT_EQ(run({0, 128}, {64}), absl::StatusCode::kInvalidArgument);  // starts and counts differ
  EXPECT_EQ(run({0, 128}, {64, 10}), absl::StatusCode::kOk);
  OwnedTensor narrow = MakeTensor(gpu, DType::kF32, 10, 4 * 64, {});  // no room for lse
  EXPECT_EQ(gpu->PartialAttention(narrow.t, q.t, 0, 4, {&s, 1}, inv_freq).code(),
            absl::StatusCode::kInvalidArgument);
  OwnedTensor out = MakeTensor(gpu, DType::kF32, 10, 4 * 64, {});
  EXPECT_EQ(gpu->MergeAttention(out.t, part.t, 2, 4).code(),  // 2 parts need 20 rows
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(gpu->MergeAttention(out.t, part.t, 1, 4).ok());
  EXPECT_TRUE(gpu->Synchronize().ok());
}

}  // namespace
}  // namespace longctx

#endif  // LONGCTX_WITH_CUDA
