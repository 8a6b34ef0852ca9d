// CUDA Dual Chunk Attention (all three kernels) against ref::DcaAttention
// (kernels/ref/ops_ref.h, double): random q, K, V over randomly paged block
// tables, sequences of awkward lengths, several chunk settings, prefill, decode
// and chunked prefill, batched in one call. The CUDA arena is poisoned with NaN
// before the writes, so a kernel that reads a slot past a sequence's end fails.
// Bound: the bf16 rule of tests/cuda_test_util.h, where the naive bf16
// attention rounds q, K, V, the rotated queries, the scores, the probabilities
// and the output to bf16.
#ifdef LONGCTX_WITH_CUDA

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/backend/cuda/cuda_backend.h"
#include "gtest/gtest.h"
#include "kernels/ops.h"
#include "kernels/ref/ops_ref.h"
#include "tests/cuda_test_util.h"

namespace longctx {
namespace {

using testing_cuda::ExpectBf16Close;
using testing_cuda::Fetch;
using testing_cuda::MakePoisoned;
using testing_cuda::MakeTensor;
using testing_cuda::OwnedTensor;
using testing_cuda::RandomVec;
using testing_cuda::RoundBf16;

struct SeqSpec {
  int ctx;  // tokens in the cache after the call
  int n_q;  // new tokens (the last n_q of ctx)
  int C;    // chunk_size; 0 = plain RoPE attention
  int w;    // local window
  // Infini window: keys sink <= j < window are absent; blocks wholly inside
  // get kAbsentBlock-style entries (-1) in the table handed to attention.
  int sink = 0;
  int window = 0;
};

struct AttnCase {
  std::string name;
  int H, n_kv, D, block_size;
  std::vector<SeqSpec> seqs;
  // Long cases: the reference runs on the sampled rows only, and only the
  // kernels worth running at that size.
  bool sampled_reference = false;
  std::vector<CudaAttentionKernels> kernels = {
      CudaAttentionKernels::kSimple,      CudaAttentionKernels::kTiled,
      CudaAttentionKernels::kSplit,       CudaAttentionKernels::kAuto,
      CudaAttentionKernels::kAutoMmaSync, CudaAttentionKernels::kAutoWgmmaOverlapped};
};

std::ostream& operator<<(std::ostream& os, const AttnCase& c) { return os << c.name; }

cpu::DcaParams DcaOf(const SeqSpec& s, int D) {
  cpu::DcaParams p;
  if (s.C > 0) {
    p.chunk_size = s.C;
    p.chunk_len = s.C - s.w;
  }
  p.softmax_scale = 1.f / std::sqrt(static_cast<float>(D));
  p.sink_tokens = s.sink;
  p.window_start = s.window;
  return p;
}

bool Absent(int j, const cpu::DcaParams& p) { return j >= p.sink_tokens && j < p.window_start; }

// Naive bf16 DCA attention of one (query, head): every tensor rounded to bf16.
std::vector<float> NaiveBf16Row(const float* q, const std::vector<float>& k,
                                const std::vector<float>& v, int i, int kvh, int n_kv, int D,
                                const cpu::DcaParams& p, const std::vector<float>& inv_freq) {
  const int L = p.chunk_len, C = p.chunk_size;
  std::vector<float> qr[3];
  const int t = i % L;
  const int pos[3] = {t, std::min(t + L, C), C};
  for (int part = 0; part < 3; ++part) {
    qr[part].resize(D);
    for (int d = 0; d < D / 2; ++d) {
      const double a = static_cast<double>(pos[part]) * inv_freq[d];
      const float c = static_cast<float>(std::cos(a)), s = static_cast<float>(std::sin(a));
      const float x = RoundBf16(q[d]), y = RoundBf16(q[d + D / 2]);
      qr[part][d] = RoundBf16(x * c - y * s);
      qr[part][d + D / 2] = RoundBf16(y * c + x * s);
    }
  }
  std::vector<float> s(i + 1, -std::numeric_limits<float>::infinity());
  float mx = -std::numeric_limits<float>::infinity();
  for (int j = 0; j <= i; ++j) {
    if (Absent(j, p)) continue;
    const int part = std::min(i / L - j / L, 2);
    const float* kj = k.data() + (int64_t{j} * n_kv + kvh) * D;
    float dot = 0;
    for (int d = 0; d < D; ++d) dot += qr[part][d] * RoundBf16(kj[d]);
    s[j] = RoundBf16(dot * p.softmax_scale);
    mx = std::max(mx, s[j]);
  }
  float sum = 0;
  for (float& x : s) sum += (x = std::exp(x - mx));
  std::vector<float> o(D, 0.f);
  for (int j = 0; j <= i; ++j) {
    if (Absent(j, p)) continue;
    const float pj = RoundBf16(s[j] / sum);
    const float* vj = v.data() + (int64_t{j} * n_kv + kvh) * D;
    for (int d = 0; d < D; ++d) o[d] += pj * RoundBf16(vj[d]);
  }
  return RoundBf16(o);
}

class CudaAttentionTest : public ::testing::TestWithParam<AttnCase> {
 protected:
  void SetUp() override {
    if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_P(CudaAttentionTest, MatchesCpu) {
  const AttnCase& c = GetParam();
  std::mt19937 rng(std::hash<std::string>()(c.name));
  const int width = c.n_kv * c.D;
  KvGeometry g{.n_layers = 2, .n_kv_heads = c.n_kv, .head_dim = c.D, .block_size = c.block_size};
  for (const SeqSpec& s : c.seqs) g.n_blocks += (s.ctx + c.block_size - 1) / c.block_size;
  g.n_blocks += 3;

  std::vector<std::unique_ptr<Backend>> gpus;
  const std::vector<float> nan_block(g.ElementsPerBlock(), std::numeric_limits<float>::quiet_NaN());
  for (CudaAttentionKernels m : c.kernels) {
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

  // Random paging: each sequence gets physical blocks in shuffled order.
  std::vector<int32_t> phys(g.n_blocks);
  std::iota(phys.begin(), phys.end(), 0);
  std::shuffle(phys.begin(), phys.end(), rng);
  std::vector<std::vector<int32_t>> tables;
  std::vector<std::vector<float>> keys, values;  // layer 1, [ctx, n_kv, D] per sequence
  size_t next = 0;
  for (const SeqSpec& s : c.seqs) {
    const int nb = (s.ctx + c.block_size - 1) / c.block_size;
    tables.emplace_back(phys.begin() + next, phys.begin() + next + nb);
    next += nb;
    std::vector<int32_t> slots(s.ctx);
    for (int j = 0; j < s.ctx; ++j) {
      slots[j] = tables.back()[j / c.block_size] * c.block_size + j % c.block_size;
    }
    for (int layer = 0; layer < 2; ++layer) {
      std::vector<float> k = RandomVec(static_cast<size_t>(s.ctx) * width, rng);
      std::vector<float> v = RandomVec(static_cast<size_t>(s.ctx) * width, rng);
      for (auto& gpu : gpus) {
        OwnedTensor kt = MakeTensor(gpu.get(), DType::kF32, s.ctx, width, k);
        OwnedTensor vt = MakeTensor(gpu.get(), DType::kF32, s.ctx, width, v);
        ASSERT_TRUE(gpu->KvWrite(layer, kt.t, vt.t, slots).ok());
      }
      if (layer == 1) {
        keys.push_back(std::move(k));
        values.push_back(std::move(v));
      }
    }
  }

  std::vector<AttentionSeq> seqs;
  int rows = 0;
  for (size_t si = 0; si < c.seqs.size(); ++si) {
    const SeqSpec& s = c.seqs[si];
    AttentionSeq a;
    a.q_row = rows;
    a.n_q = s.n_q;
    a.q_start = s.ctx - s.n_q;
    a.dca = DcaOf(s, c.D);
    // Blocks wholly inside the absent range are released: -1 in the table.
    for (size_t b = 0; b < tables[si].size(); ++b) {
      const int first = static_cast<int>(b) * c.block_size;
      if (first >= s.sink && first + c.block_size <= s.window) tables[si][b] = -1;
    }
    a.block_table = tables[si];
    seqs.push_back(a);
    rows += s.n_q;
  }
  const int64_t cols = int64_t{c.H} * c.D;
  const std::vector<float> q = RandomVec(static_cast<size_t>(rows) * cols, rng, 2.f);

  // Rows checked against the naive bf16 attention (all heads), for the 2x bound.
  std::vector<std::pair<int, int>> sample;  // (sequence, query)
  for (size_t si = 0; si < c.seqs.size(); ++si) {
    const int n = c.seqs[si].n_q;
    for (int r : {0, n / 2, n - 1}) sample.emplace_back(si, r);
    std::uniform_int_distribution<int> pick(0, n - 1);
    for (int k = 0; k < (c.sampled_reference ? 13 : 5); ++k) sample.emplace_back(si, pick(rng));
  }

  // The reference for query r of sequence si, over the layer-1 keys and values
  // as written (the cache holds keys as given). The window's absent keys are
  // skipped by the reference itself (their -1 blocks are a GPU matter).
  std::vector<float> ref(q.size(), std::numeric_limits<float>::quiet_NaN());
  auto reference = [&](size_t si, int r) {
    const AttentionSeq& a = seqs[si];
    const int64_t at = (a.q_row + int64_t{r}) * cols;
    ref::DcaAttention(ref.data() + at, q.data() + at,
                      ref::DenseKvView(keys[si].data(), values[si].data(), c.seqs[si].ctx, c.n_kv),
                      inv_freq.data(), a.dca, 1, a.q_start + r, c.H, c.D);
  };
  if (c.sampled_reference) {
    for (auto [si, r] : sample) reference(si, r);
  } else {
    // Rows in parallel: the reference is single-threaded and the 4097-token
    // prefills are several seconds of it.
    for (size_t si = 0; si < seqs.size(); ++si) {
#pragma omp parallel for schedule(dynamic, 1)
      for (int r = 0; r < seqs[si].n_q; ++r) reference(si, r);
    }
  }
  std::vector<float> naive_s, ref_s;
  for (auto [si, r] : sample) {
    const int row = seqs[si].q_row + r;
    for (int h = 0; h < c.H; ++h) {
      const std::vector<float> o = NaiveBf16Row(
          q.data() + row * cols + int64_t{h} * c.D, keys[si], values[si], seqs[si].q_start + r,
          h / (c.H / c.n_kv), c.n_kv, c.D, seqs[si].dca, inv_freq);
      naive_s.insert(naive_s.end(), o.begin(), o.end());
      ref_s.insert(ref_s.end(), ref.begin() + row * cols + int64_t{h} * c.D,
                   ref.begin() + row * cols + int64_t{h + 1} * c.D);
    }
  }

  for (size_t m = 0; m < gpus.size(); ++m) {
    Backend* gpu = gpus[m].get();
    OwnedTensor qt = MakeTensor(gpu, DType::kF32, rows, cols, q);
    OwnedTensor out = MakePoisoned(gpu, rows, cols);
    const absl::Status st = gpu->Attention(out.t, qt.t, 1, c.H, seqs, inv_freq);
    ASSERT_TRUE(st.ok()) << st;
    ASSERT_TRUE(gpu->Synchronize().ok());
    const std::vector<float> got = Fetch(gpu, out.t);
    std::vector<float> got_s;
    for (auto [si, r] : sample) {
      const int row = seqs[si].q_row + r;
      got_s.insert(got_s.end(), got.begin() + row * cols, got.begin() + (row + 1) * cols);
    }
    const std::string what =
        absl::StrCat(c.name, " kernels=", CudaAttentionKernelsName(c.kernels[m]));
    // The whole output against f32, the sampled rows also against naive bf16.
    if (!c.sampled_reference) {
      EXPECT_LE(testing_cuda::RelErr(got, ref), testing_cuda::kBf16Bound) << what << " (all rows)";
    }
    ExpectBf16Close(got_s, ref_s, naive_s, what + " (sampled rows)");
    std::printf("[attn] %s rel_err_sampled=%.3e naive_bf16=%.3e\n", what.c_str(),
                testing_cuda::RelErr(got_s, ref_s), testing_cuda::RelErr(naive_s, ref_s));
  }
}

std::vector<AttnCase> Cases() {
  // Head layouts: SmolLM2 (9 q / 3 kv, D 64), GQA D 128, MHA D 128.
  struct Heads {
    const char* name;
    int H, n_kv, D;
  };
  const Heads gqa64{"gqa64", 9, 3, 64}, gqa128{"gqa128", 8, 2, 128}, mha128{"mha128", 4, 4, 128};
  std::vector<AttnCase> cases;
  // Small prefill at every awkward length, plain and DCA (L = 192, 64).
  for (const Heads& h : {gqa64, gqa128}) {
    for (int len : {1, 63, 64, 65, 1000}) {
      for (SeqSpec s :
           {SeqSpec{len, len, 0, 0}, SeqSpec{len, len, 256, 64}, SeqSpec{len, len, 128, 64}}) {
        cases.push_back({absl::StrCat(len <= 65 ? "Small_" : "", "prefill", len, "_", h.name, "_C",
                                      s.C, "w", s.w),
                         h.H,
                         h.n_kv,
                         h.D,
                         64,
                         {s}});
      }
    }
  }
  // Long prefill: 4097 tokens, DCA with L = 768 and plain with 128-token blocks.
  cases.push_back({"prefill4097_gqa64_C1000w232", 9, 3, 64, 64, {{4097, 4097, 1000, 232}}});
  cases.push_back({"prefill4097_gqa128_plain_bs128", 8, 2, 128, 128, {{4097, 4097, 0, 0}}});
  // Decode: one new token over each awkward context, all in one batch.
  for (const Heads& h : {gqa64, gqa128, mha128}) {
    cases.push_back({absl::StrCat("decode_batch_", h.name),
                     h.H,
                     h.n_kv,
                     h.D,
                     64,
                     {{1, 1, 256, 64},
                      {63, 1, 0, 0},
                      {64, 1, 128, 64},
                      {65, 1, 256, 64},
                      {1000, 1, 1000, 232},
                      {4097, 1, 256, 64},
                      {4097, 1, 0, 0}}});
  }
  // Chunked prefill appended to a cached context; mixed batches.
  cases.push_back({"chunked_gqa64", 9, 3, 64, 64, {{1000, 65, 256, 64}, {4097, 63, 1000, 232}}});
  cases.push_back({"chunked_gqa128", 8, 2, 128, 64, {{1000, 65, 128, 64}, {4097, 64, 0, 0}}});
  cases.push_back({"Small_mixed_batch_gqa64",
                   9,
                   3,
                   64,
                   64,
                   {{65, 65, 0, 0},
                    {200, 1, 256, 64},
                    {193, 63, 128, 64},
                    {1, 1, 256, 64},
                    {130, 2, 128, 64}}});
  cases.push_back({"Small_mixed_batch_mha128",
                   4,
                   4,
                   128,
                   64,
                   {{130, 2, 0, 0}, {64, 64, 128, 64}, {300, 3, 256, 64}}});
  // Infini window: sinks, then keys from a chunk boundary on; released blocks
  // are -1 in the table. Sink 32 leaves a block half absent.
  cases.push_back({"window_chunk_gqa64",
                   9,
                   3,
                   64,
                   64,
                   {{4097, 65, 1000, 232, 64, 1536}, {3000, 1, 1000, 232, 32, 768}}});
  cases.push_back({"window_decode_gqa128",
                   8,
                   2,
                   128,
                   64,
                   {{4097, 1, 1000, 232, 0, 2304},
                    {2000, 2, 0, 0, 128, 1024},
                    {1500, 100, 1000, 232, 64, 768}}});
  cases.push_back({"window_fallback_bs16_gqa64",
                   9,
                   3,
                   64,
                   16,
                   {{1000, 33, 256, 64, 48, 384}, {700, 1, 0, 0, 16, 400}}});
  // Where the fast kernels' tiling does not apply: 16-token blocks, L = 150.
  cases.push_back({"fallback_bs16_gqa64", 9, 3, 64, 16, {{1000, 1000, 256, 64}, {300, 1, 0, 0}}});
  cases.push_back(
      {"fallback_L150_gqa128", 8, 2, 128, 64, {{1000, 1000, 200, 50}, {999, 1, 200, 50}}});
  // 32k tokens with the default DCA settings of an 8k model (C = 6144, w = 1024):
  // a full prefill, and a chunk plus decode steps appended to a 32k context.
  AttnCase prefill32k{"long32k_prefill_gqa64_C6144w1024", 9, 3, 64, 64,
                      {{32768, 32768, 6144, 1024}}};
  prefill32k.sampled_reference = true;
  prefill32k.kernels = {CudaAttentionKernels::kTiled, CudaAttentionKernels::kAuto};
  cases.push_back(prefill32k);
  AttnCase prefill32k_128{"long32k_prefill_gqa128_C6144w1024", 8, 2, 128, 64,
                          {{32768, 32768, 6144, 1024}}};
  prefill32k_128.sampled_reference = true;
  prefill32k_128.kernels = {CudaAttentionKernels::kAuto};
  cases.push_back(prefill32k_128);
  AttnCase tail32k{"long32k_chunk_and_decode_gqa64",
                   9,
                   3,
                   64,
                   64,
                   {{32768, 100, 6144, 1024}, {32769, 1, 6144, 1024}, {32000, 1, 0, 0}}};
  tail32k.sampled_reference = true;
  cases.push_back(tail32k);
  // A prefill piece after a long context with few heads: too few query tiles
  // to fill the GPU, so the automatic choice cuts the keys into parts (partial
  // attentions in one launch, merged by log-sum-exp). Also with 16-token blocks
  // (the simple kernel's partials) and plain RoPE.
  for (const auto& [name, heads, bs, spec] :
       std::vector<std::tuple<std::string, Heads, int, SeqSpec>>{
           {"long_prefix_piece_gqa64_keysplit", gqa64, 64, {20480, 1024, 6144, 1024}},
           {"long_prefix_piece_gqa128_keysplit", gqa128, 64, {20480, 1024, 6144, 1024}},
           {"long_prefix_piece_bs16_plain_keysplit", gqa64, 16, {17000, 600, 0, 0}}}) {
    AttnCase c{name, heads.H, heads.n_kv, heads.D, bs, {spec}};
    c.sampled_reference = true;
    c.kernels = {CudaAttentionKernels::kTiled, CudaAttentionKernels::kAuto};
    cases.push_back(c);
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Cases, CudaAttentionTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<AttnCase>& info) {
                           return info.param.name;
                         });

TEST(CudaAttentionRejectTest, BadSequencesAreInvalidArgument) {
  if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  auto b = CreateCudaBackend();
  ASSERT_TRUE(b.ok()) << b.status();
  Backend* gpu = b->get();
  KvGeometry g{.n_layers = 1, .n_kv_heads = 2, .head_dim = 64, .block_size = 64, .n_blocks = 4};
  ASSERT_TRUE(gpu->InitKv(g).ok());
  std::vector<float> inv_freq(32, 0.5f);
  OwnedTensor q = MakeTensor(gpu, DType::kF32, 100, 4 * 64, {});
  OwnedTensor out = MakeTensor(gpu, DType::kF32, 100, 4 * 64, {});
  const std::vector<int32_t> table = {0, 1};
  AttentionSeq s;
  s.n_q = 100;
  s.block_table = table;
  s.dca.softmax_scale = 0.125f;
  std::vector<AttentionSeq> seqs = {s};
  EXPECT_TRUE(gpu->Attention(out.t, q.t, 0, 4, seqs, inv_freq).ok());
  seqs[0].q_start = 100;  // 200 tokens do not fit two blocks
  EXPECT_EQ(gpu->Attention(out.t, q.t, 0, 4, seqs, inv_freq).code(),
            absl::StatusCode::kInvalidArgument);
  seqs[0].q_start = 0;
  seqs[0].q_row = 1;  // rows 1..100 exceed q
  EXPECT_EQ(gpu->Attention(out.t, q.t, 0, 4, seqs, inv_freq).code(),
            absl::StatusCode::kInvalidArgument);
  seqs[0].q_row = 0;
  const std::vector<int32_t> bad_table = {0, 4};  // block 4 is outside the arena
  seqs[0].block_table = bad_table;
  EXPECT_EQ(gpu->Attention(out.t, q.t, 0, 4, seqs, inv_freq).code(),
            absl::StatusCode::kInvalidArgument);
  seqs[0].block_table = table;
  EXPECT_EQ(gpu->Attention(out.t, q.t, 0, 3, seqs, inv_freq).code(),  // 3 heads over 2 kv heads
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(gpu->Synchronize().ok());
}

}  // namespace
}  // namespace longctx

#endif  // LONGCTX_WITH_CUDA
