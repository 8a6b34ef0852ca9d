// Micro-benchmark of the CPU attention kernel (cpu::DcaAttention): one layer's
// causal prefill of T tokens and one decode step at length T, for plain RoPE and
// DCA settings, on random data in a paged KV cache. Prints a table.
//
//   longctx-attention-bench [--lengths=2048,8192,16384] [--modes=rope,dca]
//       [--heads=9] [--kv_heads=3] [--head_dim=64] [--block_size=64]
//       [--pretrain_len=8192] [--reps=3] [--decode_reps=50]
//
// FLOPs count the two matrix products only: 4·D per (query, key, head) pair;
// GFLOP/s is over wall time. CPU time is the process's, all threads together,
// which stays meaningful when other work shares the cores.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "engine/model/dca_config.h"
#include "engine/model/model_config.h"
#include "kernels/ops.h"

ABSL_FLAG(std::string, lengths, "2048,8192,16384", "sequence lengths T");
ABSL_FLAG(std::string, modes, "rope,dca", "attention modes to time: rope, dca");
ABSL_FLAG(int, heads, 9, "query heads");
ABSL_FLAG(int, kv_heads, 3, "key/value heads");
ABSL_FLAG(int, head_dim, 64, "head dimension");
ABSL_FLAG(int, block_size, 64, "KV block size");
ABSL_FLAG(int, pretrain_len, 8192, "DCA pretraining length c (C and w take their defaults)");
ABSL_FLAG(int, reps, 3, "prefill runs per length; the best is reported");
ABSL_FLAG(int, decode_reps, 50, "decode steps averaged per timing");

namespace longctx {
namespace {

struct Timing {
  double wall = 1e30;  // seconds
  double cpu = 1e30;   // process CPU seconds, all threads
};

// Best wall and CPU time of `reps` runs of fn.
template <typename Fn>
Timing Best(int reps, Fn fn) {
  Timing best;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    const std::clock_t c0 = std::clock();
    fn();
    const std::clock_t c1 = std::clock();
    const auto t1 = std::chrono::steady_clock::now();
    best.wall = std::min(best.wall, std::chrono::duration<double>(t1 - t0).count());
    best.cpu = std::min(best.cpu, static_cast<double>(c1 - c0) / CLOCKS_PER_SEC);
  }
  return best;
}

int Run() {
  std::vector<int> lengths;
  for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_lengths), ',')) {
    int n = 0;
    if (!absl::SimpleAtoi(part, &n) || n <= 0) return std::fprintf(stderr, "bad --lengths\n"), 2;
    lengths.push_back(n);
  }
  std::vector<DcaMode> modes;
  for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_modes), ',')) {
    auto mode = ParseDcaMode(part);
    if (!mode.ok()) return std::fprintf(stderr, "%s\n", mode.status().ToString().c_str()), 2;
    modes.push_back(*mode);
  }
  const int H = absl::GetFlag(FLAGS_heads), Hkv = absl::GetFlag(FLAGS_kv_heads);
  const int D = absl::GetFlag(FLAGS_head_dim), B = absl::GetFlag(FLAGS_block_size);
  const int reps = absl::GetFlag(FLAGS_reps), decode_reps = absl::GetFlag(FLAGS_decode_reps);
  if (H <= 0 || Hkv <= 0 || H % Hkv != 0 || D <= 0 || D % 2 != 0 || B <= 0 || reps <= 0 ||
      decode_reps <= 0) {
    return std::fprintf(stderr, "bad shape or repetition flags\n"), 2;
  }
  const int max_len = *std::max_element(lengths.begin(), lengths.end());

  ModelConfig model;
  model.name = "bench";
  model.n_heads = H;
  model.n_kv_heads = Hkv;
  model.head_dim = D;
  model.context_length = absl::GetFlag(FLAGS_pretrain_len);
  model.rope_theta = 100000.f;
  auto dca = DcaConfig::Resolve(model, {});
  if (!dca.ok()) return std::fprintf(stderr, "%s\n", dca.status().ToString().c_str()), 2;
  if (auto s = dca->Validate(B); !s.ok()) {
    return std::fprintf(stderr, "%s\n", s.ToString().c_str()), 2;
  }
  DcaConfig rope = *dca;
  rope.mode = DcaMode::kRope;

  // Random K/V in a shuffled paged layout (one layer's K then V per block).
  const int n_blocks = (max_len + B - 1) / B;
  const int64_t plane = int64_t{B} * Hkv * D;
  std::vector<float> arena(size_t(n_blocks) * 2 * plane);
  std::vector<float> q(size_t(max_len) * H * D), out(q.size());
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (float& x : arena) x = u(rng);
  for (float& x : q) x = u(rng);
  std::vector<int32_t> table(n_blocks);
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), rng);
  cpu::PagedKvView kv;
  kv.k = arena.data();
  kv.v = arena.data() + plane;
  kv.block_stride = 2 * plane;
  kv.block_table = table.data();
  kv.block_size = B;
  kv.n_kv_heads = Hkv;
  const std::vector<float> inv_freq = RopeInverseFrequencies(model, true);

  std::printf("attention, one layer: H=%d Hkv=%d D=%d block=%d threads=%d\n", H, Hkv, D, B,
              omp_get_max_threads());
  std::printf("dca: %s\n\n", dca->DebugString().c_str());
  std::printf("| mode | phase   | tokens |      wall |  CPU time | GFLOP/s |\n");
  std::printf("|------|---------|-------:|----------:|----------:|--------:|\n");
  for (DcaMode mode : modes) {
    const DcaConfig& config = mode == DcaMode::kDca ? *dca : rope;
    for (int T : lengths) {
      const cpu::DcaParams p = config.ToParams(D, T);
      const double prefill_flops = 4.0 * D * H * (double(T) * (T + 1) / 2);
      const Timing prefill = Best(reps, [&] {
        cpu::DcaAttention(out.data(), q.data(), kv, inv_freq.data(), p, T, 0, H, D);
      });
      std::printf("| %-4s | prefill | %6d | %7.3f s | %7.3f s | %7.1f |\n", DcaModeName(mode), T,
                  prefill.wall, prefill.cpu, prefill_flops / prefill.wall * 1e-9);
      const double decode_flops = 4.0 * D * H * T;
      Timing decode = Best(3, [&] {
        for (int r = 0; r < decode_reps; ++r) {
          cpu::DcaAttention(out.data(), q.data(), kv, inv_freq.data(), p, 1, T - 1, H, D);
        }
      });
      decode.wall /= decode_reps;
      decode.cpu /= decode_reps;
      std::printf("| %-4s | decode  | %6d | %6.2f ms | %6.2f ms | %7.1f |\n", DcaModeName(mode), T,
                  decode.wall * 1e3, decode.cpu * 1e3, decode_flops / decode.wall * 1e-9);
    }
  }
  return 0;
}

}  // namespace
}  // namespace longctx

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return longctx::Run();
}
