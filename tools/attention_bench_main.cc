// Attention throughput of a backend: causal prefill of one sequence (TFLOP/s)
// and decode steps over batched sessions (GB/s of K and V read), plain RoPE and
// Dual Chunk Attention side by side, random q, K and V. Prints a Markdown table.
//
//   longctx-attention-bench --backend=cuda --lengths=8192,32768,131072
//       --heads=32 --kv_heads=8 --head_dim=128 [--decode_batch=1,32] [--reps=5]
//
// FLOPs of a causal prefill of T tokens: 4 * D * H * T * (T + 1) / 2 (QK^T and PV
// over the keys each query sees). Bytes of a decode step: every session's cached
// K and V in bf16 read once.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <span>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "engine/backend/backend.h"
#include "engine/backend/backend_factory.h"
#include "engine/backend/cpu_process.h"
#include "engine/backend/cuda/cuda_options.h"
#include "tools/tool_flags.h"
#ifdef LONGCTX_WITH_CUDA
#include "engine/backend/cuda/cuda_backend.h"
#endif

ABSL_FLAG(std::string, backend, "auto", "auto, cpu or cuda");
ABSL_FLAG(std::string, lengths, "8192,32768,131072", "sequence lengths (tokens)");
ABSL_FLAG(int, heads, 32, "query heads");
ABSL_FLAG(int, kv_heads, 8, "key/value heads");
ABSL_FLAG(int, head_dim, 128, "head dimension");
ABSL_FLAG(int, pretrain_len, 4096, "c of DCA: chunk_size = 3c/4, local_window = c/8");
ABSL_FLAG(std::string, decode_batch, "",
          "sessions per decode step to time, e.g. 1,32 (empty: none)");
ABSL_FLAG(bool, prefill, true, "time the causal prefill");
ABSL_FLAG(std::string, prefill_kernel, "auto",
          "CUDA prefill attention: auto (the Hopper wgmma kernel where it runs), "
          "wgmma-overlapped (the Hopper kernel with a tile's softmax under the previous "
          "tile's P V product) or mma.sync (the portable tiled kernel)");
ABSL_FLAG(int, reps, 5, "timed rounds (median reported); a decode round is 20 steps");
ABSL_FLAG(int, block_spacing, 1,
          "physical KV blocks between consecutive blocks of a session (1: back to back). "
          "N > 1 spreads a session's blocks of one layer N blocks apart, as a block-major "
          "arena of N layers would");

namespace longctx {
namespace {

constexpr int kBlockSize = 64;
constexpr int kFillRows = 4096;  // random rows uploaded once and written repeatedly

std::vector<int> ParseList(const std::string& s) {
  std::vector<int> out;
  for (absl::string_view p : absl::StrSplit(s, ',', absl::SkipEmpty())) {
    int v = 0;
    if (absl::SimpleAtoi(p, &v) && v > 0) out.push_back(v);
  }
  return out;
}

// Cheap deterministic normal-ish values (sum of uniforms).
std::vector<float> Noise(size_t n, uint64_t seed) {
  std::vector<float> v(n);
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (float& f : v) {
    float s = 0;
    for (int k = 0; k < 4; ++k) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      s += static_cast<float>(x >> 40) / static_cast<float>(1 << 24);
    }
    f = (s - 2.f) * 1.7f;
  }
  return v;
}

double Seconds(std::chrono::steady_clock::time_point a) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count();
}

struct Bench {
  Backend* b;
  int H, n_kv, D;
  int reps;
  std::vector<float> inv_freq;
  Tensor fill_k, fill_v;  // [kFillRows, n_kv * D]
};

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "%s\n", s.ToString().c_str());
  return 1;
}

// Seconds per call of `fn`: `rounds` rounds (after a warm-up round) of `calls`
// back-to-back calls between two synchronisations; the median round's average
// (the mean of the two middle rounds when even, as Python's statistics.median
// in the SDPA baseline, tools/bench/attention_sdpa.py).
// Back-to-back calls let the host prepare a call while the device runs the
// previous one, as an engine loop does.
template <typename Fn>
absl::StatusOr<double> Time(Backend* b, int rounds, int calls, Fn fn) {
  std::vector<double> t;
  for (int r = 0; r <= rounds; ++r) {
    if (auto s = b->Synchronize(); !s.ok()) return s;
    const auto t0 = std::chrono::steady_clock::now();
    for (int c = 0; c < calls; ++c) {
      if (auto s = fn(); !s.ok()) return s;
    }
    if (auto s = b->Synchronize(); !s.ok()) return s;
    if (r > 0) t.push_back(Seconds(t0) / calls);
  }
  std::sort(t.begin(), t.end());
  const size_t m = t.size() / 2;
  return t.size() % 2 == 1 ? t[m] : 0.5 * (t[m - 1] + t[m]);
}

// Writes random K/V for the first `n` tokens of a sequence with block table `table`.
absl::Status FillKv(const Bench& bn, std::span<const int32_t> table, int n) {
  std::vector<int32_t> slots;
  for (int at = 0; at < n; at += kFillRows) {
    const int m = std::min(kFillRows, n - at);
    slots.resize(m);
    for (int j = 0; j < m; ++j) {
      const int64_t tok = at + j;
      slots[j] =
          static_cast<int32_t>(int64_t{table[tok / kBlockSize]} * kBlockSize + tok % kBlockSize);
    }
    if (auto s = bn.b->KvWrite(0, bn.fill_k.Rows(0, m), bn.fill_v.Rows(0, m), slots); !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

cpu::DcaParams Dca(bool on, int D) {
  cpu::DcaParams p;
  if (on) {
    const int c = absl::GetFlag(FLAGS_pretrain_len);
    p.chunk_size = 3 * c / 4;
    p.chunk_len = p.chunk_size - c / 8;
  }
  p.softmax_scale = 1.f / std::sqrt(static_cast<float>(D));
  return p;
}

int Run() {
  auto kind = ParseBackendKind(absl::GetFlag(FLAGS_backend));
  if (!kind.ok()) return std::fprintf(stderr, "%s\n", kind.status().ToString().c_str()), 2;
  absl::StatusOr<std::unique_ptr<Backend>> backend;
  const std::string prefill_kernel = absl::GetFlag(FLAGS_prefill_kernel);
  CudaAttentionKernels kernels = CudaAttentionKernels::kAuto;
  if (!PrefillKernelsByName(prefill_kernel, &kernels)) {
    return std::fprintf(stderr, "--prefill_kernel: %s\n", kPrefillKernelNames), 2;
  }
  if (kernels != CudaAttentionKernels::kAuto) {
#ifdef LONGCTX_WITH_CUDA
    CudaBackendOptions options;
    options.attention = kernels;
    backend = CreateCudaBackend(options);
#else
    return std::fprintf(stderr, "--prefill_kernel=%s needs the CUDA backend\n",
                        prefill_kernel.c_str()),
           2;
#endif
  } else {
    backend = CreateBackend(*kind);
  }
  if (!backend.ok()) return std::fprintf(stderr, "%s\n", backend.status().ToString().c_str()), 1;
  Backend* b = backend->get();
  Bench bn{b,
           absl::GetFlag(FLAGS_heads),
           absl::GetFlag(FLAGS_kv_heads),
           absl::GetFlag(FLAGS_head_dim),
           std::max(1, absl::GetFlag(FLAGS_reps)),
           {},
           {},
           {}};
  const std::vector<int> lengths = ParseList(absl::GetFlag(FLAGS_lengths));
  const std::vector<int> batches = ParseList(absl::GetFlag(FLAGS_decode_batch));
  if (lengths.empty() || bn.H % bn.n_kv != 0) return std::fprintf(stderr, "bad flags\n"), 2;
  const int max_len = *std::max_element(lengths.begin(), lengths.end());
  const int max_batch = batches.empty() ? 1 : *std::max_element(batches.begin(), batches.end());
  bn.inv_freq.resize(bn.D / 2);
  for (int i = 0; i < bn.D / 2; ++i) bn.inv_freq[i] = std::pow(1e4f, -2.f * i / bn.D);

  const int width = bn.n_kv * bn.D;
  const int64_t blocks_per_seq = (max_len + kBlockSize) / kBlockSize + 1;
  const int spacing = std::max(1, absl::GetFlag(FLAGS_block_spacing));
  KvGeometry g;
  g.n_layers = 1;
  g.n_kv_heads = bn.n_kv;
  g.head_dim = bn.D;
  g.block_size = kBlockSize;
  g.n_blocks = blocks_per_seq * std::max(1, max_batch) * spacing;
  if (auto s = b->InitKv(g); !s.ok()) return Fail(s);
  auto kbuf = b->Allocate(size_t{kFillRows} * width * 4);
  auto vbuf = b->Allocate(size_t{kFillRows} * width * 4);
  if (!kbuf.ok() || !vbuf.ok()) return std::fprintf(stderr, "allocation failed\n"), 1;
  bn.fill_k = Tensor{kbuf->data(), DType::kF32, kFillRows, width};
  bn.fill_v = Tensor{vbuf->data(), DType::kF32, kFillRows, width};
  if (auto s = b->Upload(bn.fill_k, Noise(size_t{kFillRows} * width, 1).data()); !s.ok()) return 1;
  if (auto s = b->Upload(bn.fill_v, Noise(size_t{kFillRows} * width, 2).data()); !s.ok()) return 1;

  std::printf(
      "backend=%s prefill_kernel=%s heads=%d kv_heads=%d head_dim=%d dca: c=%d C=%d w=%d "
      "block_spacing=%d\n\n",
      b->Name().c_str(), prefill_kernel.c_str(), bn.H, bn.n_kv, bn.D,
      absl::GetFlag(FLAGS_pretrain_len), Dca(true, bn.D).chunk_size,
      Dca(true, bn.D).chunk_size - Dca(true, bn.D).chunk_len, spacing);
  std::printf("| run | tokens | sessions | attention | ms | TFLOP/s | GB/s |\n");
  std::printf("|---|---:|---:|---|---:|---:|---:|\n");

  // Session s holds blocks s * blocks_per_seq + i, i = 0, 1, ..., each `spacing` apart.
  std::vector<int32_t> table;
  for (int64_t blk = 0; blk < g.n_blocks / spacing; ++blk) {
    table.push_back(static_cast<int32_t>(blk * spacing));
  }
  for (int64_t s = 0; s < std::max(1, max_batch); ++s) {
    const auto session =
        std::span<const int32_t>(table).subspan(s * blocks_per_seq, blocks_per_seq);
    if (auto st = FillKv(bn, session, max_len + 1); !st.ok()) return Fail(st);
  }
  const int64_t cols = int64_t{bn.H} * bn.D;

  for (int T : lengths) {
    if (absl::GetFlag(FLAGS_prefill)) {
      auto qbuf = b->Allocate(static_cast<size_t>(T) * cols * 4);
      auto obuf = b->Allocate(static_cast<size_t>(T) * cols * 4);
      if (!qbuf.ok() || !obuf.ok()) return Fail(qbuf.ok() ? obuf.status() : qbuf.status());
      Tensor q{qbuf->data(), DType::kF32, T, cols}, out{obuf->data(), DType::kF32, T, cols};
      const int fill = std::min(T, kFillRows);
      const std::vector<float> noise = Noise(static_cast<size_t>(fill) * cols, 3);
      for (int at = 0; at < T; at += fill) {
        const int m = std::min(fill, T - at);
        if (auto s = b->Upload(q.Rows(at, m), noise.data()); !s.ok()) return Fail(s);
      }
      for (bool dca : {false, true}) {
        AttentionSeq seq;
        seq.n_q = T;
        seq.block_table = std::span<const int32_t>(table).subspan(0, blocks_per_seq);
        seq.dca = Dca(dca, bn.D);
        auto t = Time(b, bn.reps, 1, [&] {
          return b->Attention(out, q, 0, bn.H, std::span<const AttentionSeq>(&seq, 1), bn.inv_freq);
        });
        if (!t.ok()) return Fail(t.status());
        const double flops = 4.0 * bn.D * bn.H * double(T) * (T + 1) / 2;
        std::printf("| prefill | %d | 1 | %s | %.3f | %.1f | |\n", T, dca ? "DCA" : "RoPE",
                    *t * 1e3, flops / *t / 1e12);
        std::fflush(stdout);
      }
    }
    for (int B : batches) {
      auto qbuf = b->Allocate(static_cast<size_t>(B) * cols * 4);
      auto obuf = b->Allocate(static_cast<size_t>(B) * cols * 4);
      if (!qbuf.ok() || !obuf.ok()) return 1;
      Tensor q{qbuf->data(), DType::kF32, B, cols}, out{obuf->data(), DType::kF32, B, cols};
      if (auto s = b->Upload(q, Noise(static_cast<size_t>(B) * cols, 4).data()); !s.ok()) return 1;
      for (bool dca : {false, true}) {
        std::vector<AttentionSeq> seqs(B);
        for (int s = 0; s < B; ++s) {
          seqs[s].q_row = s;
          seqs[s].n_q = 1;
          seqs[s].q_start = T;  // the step's token is number T, after T cached ones
          seqs[s].block_table =
              std::span<const int32_t>(table).subspan(s * blocks_per_seq, blocks_per_seq);
          seqs[s].dca = Dca(dca, bn.D);
        }
        auto t =
            Time(b, bn.reps, 20, [&] { return b->Attention(out, q, 0, bn.H, seqs, bn.inv_freq); });
        if (!t.ok()) return Fail(t.status());
        const double bytes = 2.0 * B * double(T + 1) * width * DTypeSize(b->WeightType());
        std::printf("| decode | %d | %d | %s | %.3f | | %.0f |\n", T, B, dca ? "DCA" : "RoPE",
                    *t * 1e3, bytes / *t / 1e9);
        std::fflush(stdout);
      }
    }
  }
  return 0;
}

}  // namespace
}  // namespace longctx

int main(int argc, char** argv) {
  longctx::PrepareCpuProcess(argv);
  longctx::ParseToolFlags(
      argc, argv,
      "Attention throughput of a backend, RoPE vs DCA.\n  longctx-attention-bench [flags]");
  return longctx::Run();
}
