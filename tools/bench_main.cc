// Engine throughput on this machine: prefill tokens/s at several prompt lengths
// and decode tokens/s after each, single session, greedy. Prints a table.
//
//   longctx-bench --model=M.gguf [--backend=cpu] [--lengths=512,2048,8192] [--decode=64]
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "engine/backend/cpu_process.h"
#include "engine/backend/backend.h"
#include "engine/model/host_weights.h"
#include "engine/model/llama_model.h"
#include "tools/tool_flags.h"

ABSL_FLAG(std::string, model, "", "model file (GGUF) or Hugging Face directory");
ABSL_FLAG(std::string, backend, "auto", "auto, cpu or cuda");
ABSL_FLAG(std::string, lengths, "512,2048,8192", "prompt lengths to prefill");
ABSL_FLAG(int, decode, 64, "tokens to decode after each prefill");
ABSL_FLAG(int, chunk, 512, "prefill piece size (tokens per forward call)");
ABSL_FLAG(int, repeats, 1, "runs per length; the best is reported");

namespace longctx {
namespace {

double Seconds(std::chrono::steady_clock::time_point a) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count();
}

int Run() {
  auto kind = ParseBackendKind(absl::GetFlag(FLAGS_backend));
  if (!kind.ok()) return std::fprintf(stderr, "%s\n", kind.status().ToString().c_str()), 2;
  auto backend = CreateBackend(*kind);
  if (!backend.ok()) return std::fprintf(stderr, "%s\n", backend.status().ToString().c_str()), 1;
  auto host = LoadHostModel(absl::GetFlag(FLAGS_model));
  if (!host.ok()) return std::fprintf(stderr, "%s\n", host.status().ToString().c_str()), 1;
  std::vector<int> lengths;
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_lengths), ',')) {
    int n = 0;
    if (!absl::SimpleAtoi(s, &n) || n <= 0) return std::fprintf(stderr, "bad --lengths\n"), 2;
    lengths.push_back(n);
  }
  int max_len = 0;
  for (int n : lengths) max_len = std::max(max_len, n);
  const int decode = absl::GetFlag(FLAGS_decode);
  const int chunk = absl::GetFlag(FLAGS_chunk);
  KvCacheConfig kv;
  kv.max_bytes = KvBytesForTokens(host->config, **backend, max_len + decode);
  auto model = LlamaModel::Create(*host, backend->get(), kv);
  if (!model.ok()) return std::fprintf(stderr, "%s\n", model.status().ToString().c_str()), 1;
  host->tensors.clear();

  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> tok(100, host->config.vocab_size - 1);
  std::printf("backend=%s model=%s layers=%d\n", (*backend)->Name().c_str(),
              host->config.name.c_str(), host->config.n_layers);
  std::printf("| prompt tokens | prefill s | prefill tok/s | decode tokens | decode tok/s |\n");
  std::printf("|---:|---:|---:|---:|---:|\n");
  for (int n : lengths) {
    double best_prefill = 1e30, best_decode = 1e30;
    for (int rep = 0; rep < absl::GetFlag(FLAGS_repeats); ++rep) {
      std::vector<int32_t> prompt(static_cast<size_t>(n));
      for (auto& t : prompt) t = tok(rng);
      KvSequence seq;
      std::vector<float> logits;
      auto t0 = std::chrono::steady_clock::now();
      for (int first = 0; first < n; first += chunk) {
        const int len = std::min(chunk, n - first);
        StepItem item{&seq, {prompt.data() + first, static_cast<size_t>(len)},
                      first + len == n ? LogitsMode::kLast : LogitsMode::kNone, {}};
        auto s = (*model)->Forward({&item, 1}, &logits);
        if (!s.ok()) return std::fprintf(stderr, "%s\n", s.ToString().c_str()), 1;
      }
      best_prefill = std::min(best_prefill, Seconds(t0));
      t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < decode; ++i) {
        int32_t next = static_cast<int32_t>(
            std::max_element(logits.begin(), logits.end()) - logits.begin());
        StepItem item{&seq, {&next, 1}, LogitsMode::kLast, {}};
        auto s = (*model)->Forward({&item, 1}, &logits);
        if (!s.ok()) return std::fprintf(stderr, "%s\n", s.ToString().c_str()), 1;
      }
      best_decode = std::min(best_decode, Seconds(t0));
      (*model)->kv_cache().Release(seq);
    }
    std::printf("| %d | %.3f | %.1f | %d | %.1f |\n", n, best_prefill, n / best_prefill, decode,
                decode > 0 ? decode / best_decode : 0.0);
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace
}  // namespace longctx

int main(int argc, char** argv) {
  longctx::PrepareCpuProcess(argv);
  longctx::ParseToolFlags(argc, argv,
      "Engine throughput: prefill and decode tokens/s by prompt length.\n  longctx-bench --model=FILE [flags]");
  return longctx::Run();
}
