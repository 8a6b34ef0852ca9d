// The Infini window policy (engine/model/infini_window.*): KV range release,
// windowed DCA attention, fold of evicted chunks, mixing, bounded memory.
// Runs on a tiny random-weight Llama model (no model file needed).
#include "engine/model/infini_window.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/backend/cpu_backend.h"
#include "gtest/gtest.h"
#include "kernels/ref/ops_ref.h"
#ifdef LONGCTX_WITH_CUDA
#include <cuda_runtime_api.h>

#include "engine/backend/cuda/cuda_backend.h"
#endif

namespace longctx {
namespace {

using cpu::InfiniUpdateRule;

// ----------------------------------------------------------------------------
// KvCache::ReleaseRange

TEST(KvReleaseRangeTest, FreesMiddleBlocksAndKeepsLength) {
  CpuBackend backend;
  KvCacheConfig config;
  config.block_size = 4;
  config.max_bytes = 512 * 8;  // 2 layers · 2 · 4 slots · 1 head · 8 dims · 4 B = 512 B a block
  auto kv = KvCache::Create(&backend, 2, 1, 8, config);
  ASSERT_TRUE(kv.ok()) << kv.status();
  KvSequence seq;
  std::vector<int32_t> slots;
  ASSERT_TRUE((*kv)->Append(seq, 18, &slots).ok());  // 5 blocks, the last partial
  EXPECT_EQ((*kv)->free_blocks(), 3);
  ASSERT_TRUE((*kv)->ReleaseRange(seq, 4, 12).ok());
  EXPECT_EQ(seq.length(), 18);
  EXPECT_EQ(seq.resident_blocks(), 3);
  EXPECT_EQ((*kv)->free_blocks(), 5);
  EXPECT_EQ(seq.block_table()[1], kAbsentBlock);
  EXPECT_EQ(seq.block_table()[2], kAbsentBlock);
  // Releasing again is a no-op; misaligned or partial-block ranges are refused.
  ASSERT_TRUE((*kv)->ReleaseRange(seq, 4, 8).ok());
  EXPECT_EQ((*kv)->free_blocks(), 5);
  EXPECT_EQ((*kv)->ReleaseRange(seq, 2, 8).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*kv)->ReleaseRange(seq, 12, 20).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*kv)->ReleaseRange(seq, 8, 4).code(), absl::StatusCode::kInvalidArgument);
  // Appending after a hole uses fresh blocks at the end; slots of the new
  // tokens are in resident blocks.
  ASSERT_TRUE((*kv)->Append(seq, 4, &slots).ok());
  for (int32_t s : slots) EXPECT_NE(s / 4, kAbsentBlock);
  std::set<int32_t> held;
  for (int32_t b : seq.block_table()) {
    if (b != kAbsentBlock) {
      EXPECT_TRUE(held.insert(b).second);
    }
  }
  // Absent tokens append no blocks and must be whole blocks.
  EXPECT_EQ((*kv)->AppendAbsent(seq, 4).code(), absl::StatusCode::kInvalidArgument)
      << "length 22 is not block-aligned";
  KvSequence restored;
  EXPECT_EQ((*kv)->AppendAbsent(restored, 6).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE((*kv)->AppendAbsent(restored, 8).ok());
  EXPECT_EQ(restored.length(), 8);
  EXPECT_EQ(restored.resident_blocks(), 0);
  (*kv)->Release(restored);
  // Truncating over the hole and releasing return every block exactly once.
  (*kv)->Truncate(seq, 6);
  EXPECT_EQ(seq.resident_blocks(), 1);
  (*kv)->Release(seq);
  EXPECT_EQ((*kv)->free_blocks(), 8);
}

// ----------------------------------------------------------------------------
// DcaAttention with a window against the dense double reference

struct WindowCase {
  int H, n_kv, D, bs, L, C, sink, window_start, n, q_start;
};

void CheckWindowedDca(const WindowCase& c, uint32_t seed) {
  SCOPED_TRACE(testing::Message() << "L=" << c.L << " sink=" << c.sink << " window_start="
                                  << c.window_start << " n=" << c.n << " q_start=" << c.q_start);
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  const int H = c.H, n_kv = c.n_kv, D = c.D, bs = c.bs, L = c.L, C = c.C, sink = c.sink, n = c.n,
            q_start = c.q_start, window_start = c.window_start;
  const int n_blocks = (n + bs - 1) / bs;
  std::vector<float> inv_freq(D / 2);
  for (int i = 0; i < D / 2; ++i) inv_freq[i] = static_cast<float>(std::pow(1e4, -2.0 * i / D));
  // Physical blocks in shuffled order; absent blocks hold NaN.
  std::vector<int32_t> table(n_blocks);
  for (int b = 0; b < n_blocks; ++b) table[b] = b;
  std::shuffle(table.begin(), table.end(), rng);
  const int64_t stride = int64_t{bs} * n_kv * D;
  std::vector<float> k(n_blocks * stride), v(n_blocks * stride);
  std::vector<float> k_unrot(n * n_kv * D);
  for (float& x : k_unrot) x = nd(rng);
  for (int j = 0; j < n; ++j) {
    const int64_t base = table[j / bs] * stride + int64_t{j % bs} * n_kv * D;
    std::copy_n(k_unrot.data() + j * n_kv * D, n_kv * D, k.data() + base);
    const int32_t pos = j % L;
    cpu::Rope(k.data() + base, &pos, inv_freq.data(), 1, n_kv, D);
    for (int i = 0; i < n_kv * D; ++i) v[base + i] = nd(rng);
  }
  for (int j = sink; j < window_start; j += bs) {
    std::fill_n(k.data() + table[j / bs] * stride, stride, std::numeric_limits<float>::quiet_NaN());
    std::fill_n(v.data() + table[j / bs] * stride, stride, std::numeric_limits<float>::quiet_NaN());
  }
  const int n_q = n - q_start;
  std::vector<float> q(n_q * H * D);
  for (float& x : q) x = nd(rng);
  cpu::PagedKvView view{k.data(), v.data(), stride, table.data(), bs, n_kv};
  cpu::DcaParams p;
  p.chunk_len = L;
  p.chunk_size = C;
  p.softmax_scale = 1.f / std::sqrt(float(D));
  p.sink_tokens = sink;
  p.window_start = window_start;
  std::vector<float> out(n_q * H * D, std::numeric_limits<float>::quiet_NaN());
  cpu::DcaAttention(out.data(), q.data(), view, inv_freq.data(), p, n_q, q_start, H, D);

  // Reference: DCA positions over the visible keys only, in double
  // (ref::DcaAttention skips the absent range itself).
  std::vector<float> want(out.size(), std::numeric_limits<float>::quiet_NaN());
  ref::DcaAttention(want.data(), q.data(), view, inv_freq.data(), p, n_q, q_start, H, D);
  for (size_t e = 0; e < out.size(); ++e) {
    // f32 scores and online softmax over ≤ 61 keys of O(1) values.
    ASSERT_NEAR(out[e], want[e], 2e-5)
        << "query " << q_start + e / (H * D) << " head " << e / D % H;
  }
}

// Absent keys (NaN-poisoned) are skipped; visible keys keep absolute DCA
// positions. Cases: tiny chunks, key tiles straddling the window edges, a
// sink that is not tile-aligned, decode (one query: keys shared out over
// threads) and a prefill spanning chunks.
TEST(WindowedDcaAttentionTest, MatchesDenseReferenceOverSinksAndWindow) {
  const WindowCase cases[] = {
      {6, 2, 16, 4, 8, 11, 4, 24, 61, 40},
      {6, 2, 16, 16, 128, 160, 16, 256, 700, 699},
      {6, 2, 16, 16, 128, 160, 48, 384, 600, 520},
      {4, 4, 32, 16, 96, 120, 0, 192, 400, 300},
  };
  uint32_t seed = 21;
  for (const WindowCase& c : cases) CheckWindowedDca(c, seed++);
}

// ----------------------------------------------------------------------------
// A tiny random Llama model

HostModel RandomModel(int n_layers, int n_heads, int n_kv, int head_dim, uint32_t seed,
                      bool gates = false, float gate_value = 0.f) {
  HostModel m;
  ModelConfig& c = m.config;
  c.architecture = "llama";
  c.name = "random-tiny";
  c.n_layers = n_layers;
  c.n_heads = n_heads;
  c.n_kv_heads = n_kv;
  c.head_dim = head_dim;
  c.d_model = n_heads * head_dim;
  c.d_ff = 2 * c.d_model;
  c.vocab_size = 97;
  c.context_length = 64;
  c.rope_theta = 10000.f;
  c.tied_embeddings = true;
  std::mt19937 rng(seed);
  auto add = [&](const std::string& name, int64_t rows, int64_t cols, float scale, float offset) {
    HostTensor t;
    t.shape = rows == 1 ? std::vector<int64_t>{cols} : std::vector<int64_t>{rows, cols};
    t.data.assign(static_cast<size_t>(rows * cols), offset);
    if (scale > 0.f) {  // constant tensors draw nothing: the other weights stay the same
      std::normal_distribution<float> nd(0.f, scale);
      for (float& x : t.data) x += nd(rng);
    }
    m.tensors[name] = std::move(t);
  };
  const int64_t D = c.d_model, qw = int64_t{n_heads} * head_dim, kvw = int64_t{n_kv} * head_dim;
  const float w = 1.f / std::sqrt(float(D));
  add("token_embd.weight", c.vocab_size, D, 1.f, 0.f);
  add("output_norm.weight", 1, D, 0.1f, 1.f);
  for (int l = 0; l < n_layers; ++l) {
    const std::string p = absl::StrCat("blk.", l, ".");
    add(p + "attn_norm.weight", 1, D, 0.1f, 1.f);
    add(p + "attn_q.weight", qw, D, 2 * w, 0.f);
    add(p + "attn_k.weight", kvw, D, 2 * w, 0.f);
    add(p + "attn_v.weight", kvw, D, w, 0.f);
    add(p + "attn_output.weight", D, qw, w, 0.f);
    add(p + "ffn_norm.weight", 1, D, 0.1f, 1.f);
    add(p + "ffn_gate.weight", c.d_ff, D, w, 0.f);
    add(p + "ffn_up.weight", c.d_ff, D, w, 0.f);
    add(p + "ffn_down.weight", D, c.d_ff, w, 0.f);
    if (gates) add(p + "infini_beta", 1, n_heads, 0.f, gate_value);
  }
  return m;
}

std::vector<int32_t> RandomTokens(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> d(0, 96);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int32_t& x : t) x = d(rng);
  return t;
}

constexpr int kBlock = 8, kChunkLen = 16, kChunkSize = 20;

cpu::DcaParams TestDca() {
  cpu::DcaParams p;
  p.chunk_len = kChunkLen;
  p.chunk_size = kChunkSize;
  return p;
}

class InfiniWindowTest : public ::testing::Test {
 protected:
  // `backend`: the backend to run on (default: a new CPU backend).
  void Build(const HostModel& host, int64_t kv_bytes = int64_t{4} << 20,
             std::unique_ptr<Backend> backend = nullptr) {
    KvCacheConfig kv;
    kv.block_size = kBlock;
    kv.max_bytes = kv_bytes;
    model_.reset();
    // A backend holds one KV arena.
    backend_ = backend ? std::move(backend) : std::make_unique<CpuBackend>();
    auto m = LlamaModel::Create(host, backend_.get(), kv);
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = std::move(*m);
  }
  std::unique_ptr<InfiniWindow> Window(const InfiniConfig& config) {
    auto w = InfiniWindow::Create(model_.get(), config, TestDca());
    EXPECT_TRUE(w.ok()) << w.status();
    return w.ok() ? std::move(*w) : nullptr;
  }
  static InfiniConfig Config(InfiniOverflow overflow, int window = 2 * kChunkLen,
                             int sinks = kBlock) {
    InfiniConfig c;
    c.window_tokens = window;
    c.sink_tokens = sinks;
    c.overflow = overflow;
    return c;
  }
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<LlamaModel> model_;
};

TEST_F(InfiniWindowTest, ConfigValidation) {
  const cpu::DcaParams dca = TestDca();
  InfiniConfig c;
  EXPECT_TRUE(c.Validate(dca, kBlock).ok());
  c.window_tokens = 24;  // not a multiple of L = 16
  EXPECT_EQ(c.Validate(dca, kBlock).code(), absl::StatusCode::kInvalidArgument);
  c.window_tokens = 32;
  c.sink_tokens = 3;  // not whole blocks
  EXPECT_EQ(c.Validate(dca, kBlock).code(), absl::StatusCode::kInvalidArgument);
  c.sink_tokens = 8;
  EXPECT_TRUE(c.Validate(dca, kBlock).ok());
  EXPECT_EQ(c.Validate(cpu::DcaParams{}, kBlock).code(), absl::StatusCode::kInvalidArgument)
      << "a window needs DCA chunks";
  c.mix = true;
  c.overflow = InfiniOverflow::kSlide;
  EXPECT_EQ(c.Validate(dca, kBlock).code(), absl::StatusCode::kInvalidArgument);
  c.overflow = InfiniOverflow::kCompress;
  c.eps = 0.f;
  EXPECT_EQ(c.Validate(dca, kBlock).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*ParseInfiniOverflow("slide"), InfiniOverflow::kSlide);
  EXPECT_EQ(*ParseInfiniUpdateRule("delta"), InfiniUpdateRule::kDelta);
  EXPECT_EQ(ParseInfiniOverflow("drop").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(InfiniWindowTest, MixWithoutGatesIsRefused) {
  Build(RandomModel(2, 6, 2, 8, 1));
  EXPECT_FALSE(model_->has_infini_gates());
  InfiniConfig c = Config(InfiniOverflow::kCompress);
  c.mix = true;
  EXPECT_EQ(InfiniWindow::Create(model_.get(), c, TestDca()).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(InfiniWindowTest, PartialGatesAreRefused) {
  HostModel host = RandomModel(2, 6, 2, 8, 1, /*gates=*/true);
  host.tensors.erase("blk.1.infini_beta");
  KvCacheConfig kv;
  kv.block_size = kBlock;
  CpuBackend backend;
  EXPECT_EQ(LlamaModel::Create(host, &backend, kv).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Mixing off: the output is DCA over sinks + window. Compress and slide give
// bit-identical logits (the memory is kept, not read), and both equal a
// sequence that keeps every block but masks the same keys, so freed and
// reused blocks are never read.
TEST_F(InfiniWindowTest, MixingOffIsExactlyDcaOverTheWindow) {
  Build(RandomModel(2, 6, 2, 8, 2));
  const std::vector<int32_t> tokens = RandomTokens(150, 3);
  auto compress = Window(Config(InfiniOverflow::kCompress));
  auto slide = Window(Config(InfiniOverflow::kSlide));
  std::vector<float> lc, ls;
  ASSERT_TRUE(compress->Ingest(tokens, LogitsMode::kAll, &lc).ok());
  ASSERT_TRUE(slide->Ingest(tokens, LogitsMode::kAll, &ls).ok());
  ASSERT_EQ(lc.size(), tokens.size() * 97);
  EXPECT_EQ(lc, ls);
  EXPECT_GT(compress->memory()->folded_tokens(), 0);
  EXPECT_EQ(slide->memory(), nullptr);

  // Masked reference: the same steps (one chunk each), nothing released.
  KvSequence ref;
  std::vector<float> lr, rows;
  const int W = 2 * kChunkLen, sink = kBlock;
  for (size_t i = 0; i < tokens.size(); i += kChunkLen) {
    StepItem item;
    item.seq = &ref;
    item.tokens =
        std::span<const int32_t>(tokens).subspan(i, std::min<size_t>(kChunkLen, tokens.size() - i));
    item.logits = LogitsMode::kAll;
    item.dca = TestDca();
    item.dca.sink_tokens = sink;
    item.dca.window_start =
        std::max(sink, (static_cast<int>(i) / kChunkLen - W / kChunkLen + 1) * kChunkLen);
    ASSERT_TRUE(model_->Forward(std::span<const StepItem>(&item, 1), &rows).ok());
    lr.insert(lr.end(), rows.begin(), rows.end());
  }
  EXPECT_EQ(lc, lr);
  model_->kv_cache().Release(ref);

  // And the window matters: full DCA differs once keys leave the window.
  auto full = Window(InfiniConfig{});
  std::vector<float> lf;
  ASSERT_TRUE(full->Ingest(tokens, LogitsMode::kAll, &lf).ok());
  // Full DCA runs the 150 tokens as one step (other sgemm shapes), so compare
  // with a tolerance: equal while nothing has left the window (tokens < W),
  // clearly different after.
  double before = 0, after = 0;
  for (size_t i = 0; i < lf.size(); ++i) {
    double& worst = i < static_cast<size_t>(W) * 97 ? before : after;
    worst = std::max(worst, double{std::abs(lf[i] - lc[i])});
  }
  EXPECT_LT(before, 1e-4);
  EXPECT_GT(after, 1e-2);
}

TEST_F(InfiniWindowTest, FoldMatchesPaperEquationsOnUnrotatedCachedKeys) {
  Build(RandomModel(2, 6, 2, 8, 4));
  for (InfiniUpdateRule rule : {InfiniUpdateRule::kLinear, InfiniUpdateRule::kDelta}) {
    InfiniConfig c = Config(InfiniOverflow::kCompress);
    c.update = rule;
    auto w = Window(c);
    const KvGeometry& g = model_->kv_cache().geometry();
    const int D = g.head_dim, n_kv = g.n_kv_heads, width = n_kv * D;
    const int64_t plane = int64_t{g.block_size} * width;
    // Double reference state per layer, fed with the cached keys rotated back
    // in double precision, chunk by chunk as they leave.
    std::vector<std::vector<double>> M(g.n_layers, std::vector<double>(n_kv * D * D, 0.0)),
        Z(g.n_layers, std::vector<double>(n_kv * D, 0.0));
    const std::vector<int32_t> tokens = RandomTokens(5 * kChunkLen, 5);
    std::vector<float> block(g.ElementsPerBlock());
    int folded_end = kBlock;
    for (int n = 0; n < static_cast<int>(tokens.size()); n += kChunkLen) {
      // Snapshot the chunks about to leave before the step that evicts them.
      const int leave_to = std::max(kBlock, w->WindowStart(n));
      for (; folded_end < leave_to; folded_end = (folded_end / kChunkLen + 1) * kChunkLen) {
        const int end = (folded_end / kChunkLen + 1) * kChunkLen;
        const int T = end - folded_end;
        for (int l = 0; l < g.n_layers; ++l) {
          std::vector<double> sk(T * width), vv(T * width);
          for (int j = folded_end; j < end; ++j) {
            ASSERT_TRUE(
                backend_->KvReadBlock(w->sequence().block_table()[j / kBlock], block.data()).ok());
            const float* kj = block.data() + l * 2 * plane + (j % kBlock) * width;
            const float* vj = kj + plane;
            for (int h = 0; h < n_kv; ++h) {
              for (int i = 0; i < D / 2; ++i) {
                const double a = -double(j % kChunkLen) * model_->inv_freq()[i];
                const double x = kj[h * D + i], y = kj[h * D + i + D / 2];
                const double ux = x * std::cos(a) - y * std::sin(a),
                             uy = y * std::cos(a) + x * std::sin(a);
                sk[(j - folded_end) * width + h * D + i] = ux > 0 ? ux + 1 : std::exp(ux);
                sk[(j - folded_end) * width + h * D + i + D / 2] = uy > 0 ? uy + 1 : std::exp(uy);
              }
              for (int d = 0; d < D; ++d) vv[(j - folded_end) * width + h * D + d] = vj[h * D + d];
            }
          }
          for (int h = 0; h < n_kv; ++h) {
            std::vector<double> dM(D * D, 0.0);
            for (int t = 0; t < T; ++t) {
              const double* s = sk.data() + t * width + h * D;
              std::vector<double> u(vv.begin() + t * width + h * D,
                                    vv.begin() + t * width + h * D + D);
              if (rule == InfiniUpdateRule::kDelta) {
                double den = 0;
                for (int i = 0; i < D; ++i) den += s[i] * Z[l][h * D + i];
                for (int e = 0; e < D; ++e) {
                  double num = 0;
                  for (int i = 0; i < D; ++i) num += s[i] * M[l][(h * D + i) * D + e];
                  u[e] -= num / std::max(den, 1e-6);
                }
              }
              for (int i = 0; i < D; ++i) {
                for (int e = 0; e < D; ++e) dM[i * D + e] += s[i] * u[e];
              }
            }
            for (int t = 0; t < T; ++t) {
              for (int i = 0; i < D; ++i) Z[l][h * D + i] += sk[t * width + h * D + i];
            }
            for (int i = 0; i < D * D; ++i) M[l][h * D * D + i] += dM[i];
          }
        }
      }
      ASSERT_TRUE(w->Ingest(std::span<const int32_t>(tokens).subspan(n, kChunkLen),
                            LogitsMode::kNone, nullptr)
                      .ok());
    }
    const InfiniMemory& mem = *w->memory();
    ASSERT_EQ(mem.folded_tokens(), folded_end - kBlock);
    ASSERT_GT(mem.folded_tokens(), 2 * kChunkLen);
    for (int l = 0; l < g.n_layers; ++l) {
      double mmax = 0, zmax = 0;
      for (double x : M[l]) mmax = std::max(mmax, std::abs(x));
      for (double x : Z[l]) zmax = std::max(zmax, std::abs(x));
      // f32 rotation and sgemm against double: within 1e-5 of the largest entry.
      for (int i = 0; i < n_kv * D * D; ++i) ASSERT_NEAR(mem.mem(l)[i], M[l][i], 1e-5 * mmax);
      for (int i = 0; i < n_kv * D; ++i) ASSERT_NEAR(mem.z(l)[i], Z[l][i], 1e-5 * zmax);
    }
  }
}

TEST_F(InfiniWindowTest, StepsNeverCrossChunksAndBlocksAreFreed) {
  Build(RandomModel(2, 6, 2, 8, 6));
  auto w = Window(Config(InfiniOverflow::kCompress));
  // Inside a chunk the capacity is the rest of the chunk.
  EXPECT_EQ(*w->StepCapacity(100), kChunkLen);
  const std::vector<int32_t> tokens = RandomTokens(5 * kChunkLen + 3, 7);
  ASSERT_TRUE(w->Ingest(tokens, LogitsMode::kLast, nullptr).ok());
  EXPECT_EQ(*w->StepCapacity(100), kChunkLen - 3);
  // Sinks (1 block) + chunks 4, 5 (partial): the W/L = 2 most recent chunks.
  EXPECT_EQ(w->evicted_end(), 4 * kChunkLen);
  EXPECT_EQ(w->sequence().resident_blocks(), 1 + 3);
  EXPECT_EQ(w->counters().chunks_folded, 4);
  EXPECT_EQ(w->counters().folded_tokens, 4 * kChunkLen - kBlock);
  StepItem item;
  EXPECT_EQ(w->PrepareStep(1, &item).code(), absl::StatusCode::kInvalidArgument)
      << "the step's DCA chunks must be the session's";
  item.dca = TestDca();
  EXPECT_EQ(w->PrepareStep(kChunkLen, &item).code(), absl::StatusCode::kInvalidArgument)
      << "a step may not cross a chunk boundary";
  // The forward refuses to read released blocks: a step over the windowed
  // sequence without (or with a too small) window is rejected before running.
  ASSERT_TRUE(w->PrepareStep(1, &item).ok());
  const int32_t token = 5;
  item.tokens = std::span<const int32_t>(&token, 1);
  for (int window_start : {0, 2 * kChunkLen}) {
    StepItem bad = item;
    bad.dca.window_start = window_start;
    EXPECT_EQ(model_->Forward(std::span<const StepItem>(&bad, 1), nullptr).code(),
              absl::StatusCode::kInvalidArgument);
  }
  StepItem late = item;
  late.dca.window_start = w->length() + 1;
  EXPECT_EQ(model_->Forward(std::span<const StepItem>(&late, 1), nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(model_->Forward(std::span<const StepItem>(&item, 1), nullptr).ok());
}

TEST_F(InfiniWindowTest, RejectRefusesWhatDoesNotFitAndChangesNothing) {
  Build(RandomModel(2, 6, 2, 8, 8));
  auto w = Window(Config(InfiniOverflow::kReject));
  const std::vector<int32_t> tokens = RandomTokens(3 * kChunkLen, 9);
  // Chunks 0 and 1 fit (W = 2 chunks); the first token of chunk 2 would push
  // tokens 8..15 of chunk 0 out of the window.
  ASSERT_TRUE(
      w->Ingest(std::span<const int32_t>(tokens).first(2 * kChunkLen), LogitsMode::kNone, nullptr)
          .ok());
  const int64_t free_before = model_->kv_cache().free_blocks();
  const auto s = w->Ingest(std::span<const int32_t>(tokens).subspan(2 * kChunkLen, 1),
                           LogitsMode::kNone, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_EQ(w->length(), 2 * kChunkLen);
  EXPECT_EQ(model_->kv_cache().free_blocks(), free_before);
  EXPECT_EQ(w->counters().rejected_steps, 1);
  EXPECT_EQ(w->StepCapacity(1).status().code(), absl::StatusCode::kResourceExhausted);
  // A session with a whole-chunk sink region keeps it: with sinks = L, the
  // first chunk never leaves, so one more chunk fits.
  auto sunk = Window(Config(InfiniOverflow::kReject, 2 * kChunkLen, kChunkLen));
  EXPECT_TRUE(sunk->Ingest(tokens, LogitsMode::kNone, nullptr).ok());
}

TEST_F(InfiniWindowTest, TruncateOnlyWithinTheCurrentWindow) {
  Build(RandomModel(2, 6, 2, 8, 10));
  auto w = Window(Config(InfiniOverflow::kCompress));
  const std::vector<int32_t> tokens = RandomTokens(4 * kChunkLen, 11);
  ASSERT_TRUE(w->Ingest(std::span<const int32_t>(tokens).first(3 * kChunkLen - 4),
                        LogitsMode::kNone, nullptr)
                  .ok());
  // A rollback inside the chunk is fine.
  ASSERT_TRUE(w->Ingest(std::span<const int32_t>(tokens).subspan(3 * kChunkLen - 4, 2),
                        LogitsMode::kNone, nullptr)
                  .ok());
  EXPECT_TRUE(w->Truncate(3 * kChunkLen - 4).ok());
  // Crossing into chunk 3 folds chunk 1; rolling back before it cannot be undone.
  ASSERT_TRUE(w->Ingest(std::span<const int32_t>(tokens).subspan(3 * kChunkLen - 4, 8),
                        LogitsMode::kNone, nullptr)
                  .ok());
  EXPECT_EQ(w->Truncate(3 * kChunkLen - 4).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(w->Truncate(3 * kChunkLen + 1).ok());
  EXPECT_EQ(w->length(), 3 * kChunkLen + 1);
}

// Rollback (a generation that is not kept) keeps the evictions it caused: the
// window stays moved, the memory keeps what was folded, the session goes on.
TEST_F(InfiniWindowTest, RollbackKeepsEvictionsAndContinues) {
  Build(RandomModel(2, 6, 2, 8, 10));
  auto w = Window(Config(InfiniOverflow::kCompress));
  const std::vector<int32_t> tokens = RandomTokens(5 * kChunkLen, 12);
  const std::span<const int32_t> all(tokens);
  ASSERT_TRUE(w->Ingest(all.first(3 * kChunkLen - 4), LogitsMode::kNone, nullptr).ok());
  const int evicted_before = w->evicted_end();
  // "Generate" 8 tokens across the chunk boundary: chunk 1 leaves the window.
  ASSERT_TRUE(w->Ingest(all.subspan(3 * kChunkLen - 4, 8), LogitsMode::kNone, nullptr).ok());
  ASSERT_GT(w->evicted_end(), evicted_before);
  const int evicted = w->evicted_end();
  const int64_t folded = w->memory()->folded_tokens();
  const int64_t free_blocks = model_->kv_cache().free_blocks();
  ASSERT_TRUE(w->Rollback(3 * kChunkLen - 4).ok());
  EXPECT_EQ(w->length(), 3 * kChunkLen - 4);
  EXPECT_EQ(w->evicted_end(), evicted);
  EXPECT_EQ(w->memory()->folded_tokens(), folded);
  EXPECT_GT(model_->kv_cache().free_blocks(), free_blocks);  // the rolled-back block is back
  // Below the evicted tokens there is nothing to roll back to.
  EXPECT_EQ(w->Rollback(evicted - 1).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(w->length(), 3 * kChunkLen - 4);
  // The session goes on from the moved window, and keeps folding.
  std::vector<float> logits;
  ASSERT_TRUE(
      w->Ingest(all.subspan(3 * kChunkLen - 4, 2 * kChunkLen + 4), LogitsMode::kLast, &logits)
          .ok());
  EXPECT_EQ(w->length(), 5 * kChunkLen);
  EXPECT_GT(w->memory()->folded_tokens(), folded);
  for (float x : logits) ASSERT_TRUE(std::isfinite(x));
}

// Gates: sigmoid(β) = 0 exactly (β = −1e4) reproduces mixing off bit for bit;
// β = 0 changes the output once the memory holds something, never before.
TEST_F(InfiniWindowTest, MixingGoesThroughTheGates) {
  const std::vector<int32_t> tokens = RandomTokens(4 * kChunkLen, 12);
  auto run = [&](bool gates, float beta, bool mix) {
    Build(RandomModel(2, 6, 2, 8, 13, gates, beta));
    InfiniConfig c = Config(InfiniOverflow::kCompress);
    c.mix = mix;
    auto w = Window(c);
    std::vector<float> logits;
    EXPECT_TRUE(w->Ingest(tokens, LogitsMode::kAll, &logits).ok());
    EXPECT_EQ(w->mixing(), mix);
    return logits;
  };
  const std::vector<float> off = run(false, 0.f, false);
  EXPECT_EQ(run(true, -1e4f, true), off);
  EXPECT_EQ(run(true, 0.f, false), off) << "gates present but mixing off";
  const std::vector<float> half = run(true, 0.f, true);
  const size_t empty_rows = 2 * kChunkLen;  // tokens before the first fold (at token W)
  const size_t V = 97;
  // Before the first fold the memory is empty: A = (1 − s)·A_dca, not A_dca.
  EXPECT_NE(std::vector<float>(half.begin(), half.begin() + empty_rows * V),
            std::vector<float>(off.begin(), off.begin() + empty_rows * V));
  for (float x : half) ASSERT_TRUE(std::isfinite(x));
}

TEST_F(InfiniWindowTest, MemorySerializationRoundTripIsBitIdentical) {
  Build(RandomModel(2, 6, 2, 8, 14));
  InfiniConfig c = Config(InfiniOverflow::kCompress);
  c.update = InfiniUpdateRule::kDelta;
  auto w = Window(c);
  ASSERT_TRUE(w->Ingest(RandomTokens(6 * kChunkLen, 15), LogitsMode::kNone, nullptr).ok());
  const InfiniMemory& mem = *w->memory();
  ASSERT_FALSE(mem.empty());
  const std::string bytes = mem.Serialize();
  auto back = InfiniMemory::Deserialize(bytes);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(*back == mem);
  EXPECT_EQ(back->Serialize(), bytes);
  EXPECT_EQ(back->rule(), InfiniUpdateRule::kDelta);
  EXPECT_EQ(back->folded_tokens(), mem.folded_tokens());
  // Restored into another session, it is that session's memory.
  auto other = Window(c);
  ASSERT_TRUE(other->RestoreMemory(*std::move(back)).ok());
  EXPECT_TRUE(*other->memory() == mem);
  InfiniConfig linear = c;
  linear.update = InfiniUpdateRule::kLinear;
  EXPECT_EQ(Window(linear)->RestoreMemory(*InfiniMemory::Deserialize(bytes)).code(),
            absl::StatusCode::kInvalidArgument);

  std::string corrupt = bytes;
  corrupt[bytes.size() / 2] ^= 0x20;
  EXPECT_EQ(InfiniMemory::Deserialize(corrupt).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(InfiniMemory::Deserialize(bytes.substr(0, bytes.size() - 1)).status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(InfiniMemory::Deserialize(bytes.substr(0, 10)).status().code(),
            absl::StatusCode::kDataLoss);
  std::string magic = bytes;
  magic[0] = 'X';
  EXPECT_EQ(InfiniMemory::Deserialize(magic).status().code(), absl::StatusCode::kInvalidArgument);
  // A header asking for a huge state with a short payload fails before allocating.
  std::string huge = bytes.substr(0, 40);
  const uint32_t big = 1024;
  std::memcpy(huge.data() + 8, &big, 4);
  std::memcpy(huge.data() + 12, &big, 4);
  std::memcpy(huge.data() + 16, &big, 4);
  EXPECT_EQ(InfiniMemory::Deserialize(huge).status().code(), absl::StatusCode::kDataLoss);
}

// Export/import: memory bytes + resume point + token log rebuild a session
// with the same memory, window and block count.
TEST_F(InfiniWindowTest, ResumeRebuildsTheWindowFromTheLog) {
  Build(RandomModel(2, 6, 2, 8, 18));
  const InfiniConfig c = Config(InfiniOverflow::kCompress);
  const std::vector<int32_t> tokens = RandomTokens(8 * kChunkLen, 19);
  const std::span<const int32_t> log(tokens);
  auto a = Window(c);
  ASSERT_TRUE(a->Ingest(log.first(6 * kChunkLen), LogitsMode::kNone, nullptr).ok());
  const int resume_at = a->evicted_end();
  ASSERT_EQ(resume_at, 4 * kChunkLen);
  const std::string exported = a->memory()->Serialize();

  auto b = Window(c);
  EXPECT_EQ(b->Resume(resume_at, InfiniMemory::Deserialize(exported).value()).code(),
            absl::StatusCode::kFailedPrecondition)
      << "the sinks come first";
  ASSERT_TRUE(b->Ingest(log.first(kBlock), LogitsMode::kNone, nullptr).ok());
  EXPECT_EQ(b->Resume(resume_at + 1, InfiniMemory::Deserialize(exported).value()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(b->Resume(resume_at, std::nullopt).code(), absl::StatusCode::kInvalidArgument);
  const int64_t free_before = model_->kv_cache().free_blocks();
  ASSERT_TRUE(b->Resume(resume_at, InfiniMemory::Deserialize(exported).value()).ok());
  EXPECT_EQ(model_->kv_cache().free_blocks(), free_before) << "absent tokens take no blocks";
  ASSERT_TRUE(
      b->Ingest(log.subspan(resume_at, 6 * kChunkLen - resume_at), LogitsMode::kNone, nullptr)
          .ok());
  EXPECT_EQ(b->length(), a->length());
  EXPECT_EQ(b->evicted_end(), a->evicted_end());
  EXPECT_EQ(b->sequence().resident_blocks(), a->sequence().resident_blocks());
  EXPECT_TRUE(*b->memory() == *a->memory()) << "re-ingesting the window folds nothing";
  // Both go on; the next fold takes chunk 4, whose KV b recomputed.
  std::vector<float> la, lb;
  ASSERT_TRUE(a->Ingest(log.subspan(6 * kChunkLen), LogitsMode::kLast, &la).ok());
  ASSERT_TRUE(b->Ingest(log.subspan(6 * kChunkLen), LogitsMode::kLast, &lb).ok());
  EXPECT_EQ(b->memory()->folded_tokens(), a->memory()->folded_tokens());
  ASSERT_EQ(la.size(), lb.size());
  for (float x : lb) ASSERT_TRUE(std::isfinite(x));
}

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kAddressSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kAddressSanitizer = true;
#else
constexpr bool kAddressSanitizer = false;
#endif
#else
constexpr bool kAddressSanitizer = false;
#endif

int64_t ResidentSetBytes() {
  std::ifstream in("/proc/self/statm");
  int64_t size = 0, resident = 0;
  in >> size >> resident;
  return resident * 4096;
}

// Streaming 10·W tokens: the KV blocks held, the pool's free count and the
// memory's bytes stay exactly flat once the window is full, and so do the
// process RSS (the leak it guards against would add ~20 MB of KV here) and, on
// a GPU, the device's free memory. `device_free` reads the device's free bytes;
// null on the CPU.
void StreamTenWindows(LlamaModel* model, int64_t (*device_free)()) {
  const int L = 64;
  cpu::DcaParams dca;
  dca.chunk_len = L;
  dca.chunk_size = 80;
  InfiniConfig c;
  c.window_tokens = 4 * L;
  c.sink_tokens = kBlock;
  auto created = InfiniWindow::Create(model, c, dca);
  ASSERT_TRUE(created.ok()) << created.status();
  InfiniWindow& w = **created;
  const int W = c.window_tokens;
  const std::vector<int32_t> tokens = RandomTokens(10 * W, 17);
  const int64_t per_token_kv = model->kv_cache().BytesPerBlock() / kBlock;
  if (device_free == nullptr) {  // host KV: the RSS check below must be able to see a leak
    ASSERT_GE(per_token_kv * 10 * W, int64_t{16} << 20) << "the test must be able to see a leak";
  }
  int64_t rss_warm = 0, free_warm = 0, resident_warm = 0, device_free_warm = 0;
  const int64_t memory_bytes = w.memory()->bytes();
  for (int n = 0; n < 10 * W; n += L / 2) {
    ASSERT_TRUE(
        w.Ingest(std::span<const int32_t>(tokens).subspan(n, L / 2), LogitsMode::kLast, nullptr)
            .ok());
    const int len = n + L / 2;
    if (len == 2 * W) {
      rss_warm = ResidentSetBytes();
      free_warm = model->kv_cache().free_blocks();
      resident_warm = w.sequence().resident_blocks();
      if (device_free != nullptr) device_free_warm = device_free();
    }
    if (len > 2 * W && len % L == 0) {
      EXPECT_EQ(model->kv_cache().free_blocks(), free_warm) << "at " << len;
      EXPECT_EQ(w.sequence().resident_blocks(), resident_warm) << "at " << len;
    }
    // Never more than sinks + W tokens of KV.
    ASSERT_LE(w.sequence().resident_blocks() * kBlock, c.sink_tokens + W);
    ASSERT_EQ(w.memory()->bytes(), memory_bytes);
  }
  EXPECT_EQ(w.memory()->folded_tokens(), 10 * W - W - c.sink_tokens);
  EXPECT_EQ(memory_bytes, int64_t{4} * 4 * (64 * 64 + 64) * 4);
  if (device_free != nullptr) {
    const int64_t device_growth = device_free_warm - device_free();
    std::printf("device memory in use grew by %lld bytes over 8 windows\n",
                static_cast<long long>(device_growth));
    // A leak would grow with every window; allow one allocation granule of slack.
    EXPECT_LE(device_growth, int64_t{2} << 20) << "device memory grew by " << device_growth;
  }
  const int64_t growth = ResidentSetBytes() - rss_warm;
  if (kAddressSanitizer) {
    // ASan quarantines freed memory, so RSS follows allocation volume, not leaks.
    std::printf("RSS grew by %lld bytes (not checked under ASan)\n",
                static_cast<long long>(growth));
  } else {
    EXPECT_LT(growth, int64_t{4} << 20) << "RSS grew by " << growth << " bytes";
  }
}

TEST_F(InfiniWindowTest, StreamingTenWindowsKeepsMemoryFlat) {
  Build(RandomModel(4, 4, 4, 64, 16), int64_t{64} << 20);
  StreamTenWindows(model_.get(), nullptr);
}

#ifdef LONGCTX_WITH_CUDA
TEST_F(InfiniWindowTest, CudaStreamingTenWindowsKeepsDeviceMemoryFlat) {
  if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  auto backend = CreateCudaBackend();
  ASSERT_TRUE(backend.ok()) << backend.status();
  Build(RandomModel(4, 4, 4, 64, 16), int64_t{64} << 20, std::move(*backend));
  StreamTenWindows(model_.get(), [] {
    size_t free_bytes = 0, total = 0;
    EXPECT_EQ(cudaMemGetInfo(&free_bytes, &total), cudaSuccess);
    return static_cast<int64_t>(free_bytes);
  });
}
#endif

}  // namespace
}  // namespace longctx
