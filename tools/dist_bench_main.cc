// Context-parallel sessions (docs/design.md §7), two modes.
//
// --mode=comm: communication cost. Times the collectives of one layer — the
// home's broadcasts of the new tokens' q, k, v and the gather of every rank's
// partial (o, lse) — at several step sizes, and prints a table (rank 0). Shapes
// default to Llama-2-7B (32 heads, no GQA, head_dim 128, 32 layers) with f32
// activations, as the CUDA backend keeps them.
//   NCCL, one process per GPU (rank r on device r unless --device):
//     NCCL_NVLS_ENABLE=0 longctx-dist-bench --comm=nccl --world_size=2 --rank=R
//         --rendezvous=tcp://127.0.0.1:29511   (one such process per rank)
//   In-process (threads as ranks, host memory):
//     longctx-dist-bench --comm=inproc --world_size=2
//
// --mode=model (CUDA, NCCL; one process per GPU, rank 0 the session's home):
// prefills sessions of --contexts tokens (random token ids, DCA at the model's
// defaults) in steps of --step tokens as context-parallel sessions over the
// ranks, timing each and the per-layer phases (broadcast, partial attention,
// gather) on the home; then, with --single, the same sessions on the home GPU
// alone where its KV holds them, comparing the last step's logits (max
// |Δlogit| / max |logit|, argmax) and the prefill times. --model names a GGUF
// file or Hugging Face directory (default $LONGCTX_MODEL) or
// "synthetic:llama2-7b" (or "synthetic-llama2-7b"): Llama-2-7B's shape with
// random bf16 weights made on the device (engine/model/synthetic_model.h), for
// throughput and capacity only (its logits mean nothing).
//     longctx-dist-bench --mode=model --comm=nccl --world_size=2 --rank=R
//         --rendezvous=file:///tmp/rdv --model=/tmp/model.gguf --contexts=32768
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/backend/cpu_process.h"
#include "engine/dist/communicator.h"
#include "engine/dist/inproc_communicator.h"
#include "engine/dist/rendezvous.h"
#include "tools/tool_flags.h"
#ifdef LONGCTX_WITH_NCCL
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdlib>
#include <random>

#include "absl/time/clock.h"
#include "engine/backend/cuda/cuda_backend.h"
#include "engine/dist/context_parallel.h"
#include "engine/dist/nccl_communicator.h"
#include "engine/model/dca_config.h"
#include "engine/model/host_weights.h"
#include "engine/model/llama_model.h"
#include "engine/model/load_model.h"
#include "engine/model/synthetic_model.h"
#endif

ABSL_FLAG(std::string, comm, "inproc", "inproc (threads, host memory) or nccl (GPUs)");
ABSL_FLAG(int, world_size, 2, "ranks");
ABSL_FLAG(int, rank, 0, "this process's rank (nccl)");
ABSL_FLAG(std::string, rendezvous, "tcp://127.0.0.1:29511",
          "tcp://HOST:PORT or file://PATH (nccl)");
ABSL_FLAG(int, device, -1, "CUDA device (nccl); -1: the rank");
ABSL_FLAG(std::string, tokens, "1,512,2048,8192", "new tokens per step");
ABSL_FLAG(int, heads, 32, "query heads");
ABSL_FLAG(int, kv_heads, 32, "key/value heads");
ABSL_FLAG(int, head_dim, 128, "head dimension");
ABSL_FLAG(int, layers, 32, "layers per step");
ABSL_FLAG(int, act_bytes, 4, "bytes per q/k/v element (4: f32 activations)");
ABSL_FLAG(int, reps, 20, "timed repetitions per size (median reported)");
ABSL_FLAG(std::string, mode, "comm", "comm (collective timings) or model (a model's sessions)");
ABSL_FLAG(std::string, model, "",
          "--mode=model: GGUF file or HF directory (empty: $LONGCTX_MODEL), or "
          "synthetic:llama2-7b (random bf16 weights of Llama-2-7B's shape; also "
          "synthetic-llama2-7b)");
ABSL_FLAG(std::string, contexts, "32768,131072", "--mode=model: session lengths in tokens");
ABSL_FLAG(int, step, 8192, "--mode=model: prefill tokens per forward step");
ABSL_FLAG(bool, single, true,
          "--mode=model: also run each session on the home GPU alone and compare");
ABSL_FLAG(double, kv_gib, 0,
          "--mode=model: KV arena per GPU in GiB; 0: free memory less the weights and "
          "--reserve_gib");
ABSL_FLAG(double, reserve_gib, 6, "--mode=model: device memory kept for activations");
ABSL_FLAG(int, collective_timeout_s, 120, "--mode=model: NCCL collective timeout");
ABSL_FLAG(bool, print_steps, false, "--mode=model: the home prints a line after each step");

namespace longctx {
namespace {

using Clock = std::chrono::steady_clock;

struct Memory {
  std::function<void*(size_t)> alloc;
  std::function<void(void*)> free;
};

struct Row {
  int tokens = 0;
  double bcast_bytes = 0, gather_bytes = 0, bcast_us = 0, gather_us = 0;
};

double Median(std::vector<double> x) {
  std::sort(x.begin(), x.end());
  return x[x.size() / 2];
}

// One rank's measurement; every rank runs it, rank 0's rows are printed.
absl::StatusOr<std::vector<Row>> Measure(Communicator& comm, const Memory& mem,
                                         const std::vector<int>& sizes) {
  const int H = absl::GetFlag(FLAGS_heads), Hkv = absl::GetFlag(FLAGS_kv_heads);
  const int D = absl::GetFlag(FLAGS_head_dim), reps = absl::GetFlag(FLAGS_reps);
  const size_t act = static_cast<size_t>(absl::GetFlag(FLAGS_act_bytes));
  const int world = comm.world_size(), home = 0;
  std::vector<Row> rows;
  for (int n : sizes) {
    const size_t q_bytes = size_t(n) * H * D * act, kv_bytes = size_t(n) * Hkv * D * act;
    const size_t part_bytes = size_t(n) * H * (D + 1) * sizeof(float);
    void* q = mem.alloc(q_bytes);
    void* k = mem.alloc(kv_bytes);
    void* v = mem.alloc(kv_bytes);
    void* all = mem.alloc(part_bytes * world);
    if (q == nullptr || k == nullptr || v == nullptr || all == nullptr) {
      return absl::ResourceExhaustedError("dist bench: allocation failed");
    }
    void* mine = static_cast<char*>(all) + part_bytes * comm.rank();
    std::vector<double> bcast, gather;
    for (int it = 0; it < reps + 3; ++it) {
      const auto t0 = Clock::now();
      for (void* p : {q, k, v}) {
        const size_t bytes = p == q ? q_bytes : kv_bytes;
        if (absl::Status s = comm.Broadcast(p, bytes, home); !s.ok()) return s;
      }
      const auto t1 = Clock::now();
      if (absl::Status s = comm.Gather(mine, all, part_bytes, home); !s.ok()) return s;
      const auto t2 = Clock::now();
      if (it < 3) continue;  // warm-up: connections, skew between ranks
      bcast.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
      gather.push_back(std::chrono::duration<double, std::micro>(t2 - t1).count());
    }
    for (void* p : {q, k, v, all}) mem.free(p);
    rows.push_back(
        Row{n, double(q_bytes + 2 * kv_bytes), double(part_bytes), Median(bcast), Median(gather)});
  }
  return rows;
}

void Print(const std::string& comm, int world, const std::vector<Row>& rows) {
  const int layers = absl::GetFlag(FLAGS_layers);
  std::printf("comm=%s world_size=%d heads=%d kv_heads=%d head_dim=%d act_bytes=%d layers=%d\n",
              comm.c_str(), world, absl::GetFlag(FLAGS_heads), absl::GetFlag(FLAGS_kv_heads),
              absl::GetFlag(FLAGS_head_dim), absl::GetFlag(FLAGS_act_bytes), layers);
  std::printf(
      "| new tokens | bcast q,k,v MB | bcast us | gather MB/rank | gather us | "
      "per layer us | per step ms |\n|---|---|---|---|---|---|---|\n");
  for (const Row& r : rows) {
    const double layer = r.bcast_us + r.gather_us;
    std::printf("| %d | %.2f | %.1f | %.2f | %.1f | %.1f | %.2f |\n", r.tokens, r.bcast_bytes / 1e6,
                r.bcast_us, r.gather_bytes / 1e6, r.gather_us, layer, layer * layers / 1e3);
  }
}

#ifdef LONGCTX_WITH_NCCL
// ---------------------------------------------------------------------------
// --mode=model

// The synthetic model this bench accepts under its older name too.
constexpr char kSynthetic[] = "synthetic-llama2-7b";

struct SessionResult {
  absl::Status status;
  double seconds = 0;
  std::vector<float> logits;  // last step, last token (home only)
  ContextParallelStats stats;
};

std::vector<int32_t> SessionTokens(int n, int vocab) {
  std::mt19937 rng(static_cast<uint32_t>(n));
  std::uniform_int_distribution<int32_t> id(0, vocab - 1);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int32_t& x : t) x = id(rng);
  return t;
}

// One context-parallel session of n tokens; every rank calls it.
SessionResult RunSpread(ContextParallelAttention& cp, LlamaModel* model, const ModelConfig& c,
                        const DcaConfig& dca_config, int n, int step) {
  SessionResult res;
  const int world = cp.comm().world_size(), rank = cp.comm().rank();
  const cpu::DcaParams dca = dca_config.ToParams(c.head_dim, n);
  auto placement = ChunkPlacement::Create(world, /*home=*/0, PlacementSpan(dca));
  if (!placement.ok()) {
    res.status = placement.status();
    return res;
  }
  ShardedSequence seq(*placement);
  const std::vector<int32_t> tokens =
      rank == 0 ? SessionTokens(n, c.vocab_size) : std::vector<int32_t>();
  cp.ResetStats();
  const absl::Time start = absl::Now();
  for (int at = 0; at < n && res.status.ok(); at += step) {
    const int len = std::min(step, n - at);
    if (rank != 0) {
      res.status = cp.ServeStep(seq, len, c.n_layers, dca);
      continue;
    }
    res.status = cp.BeginStep(seq, len);
    if (!res.status.ok()) break;
    ContextParallelStep cps(&cp, &seq, dca, c.n_layers);
    StepItem item;
    item.external = &cps;
    item.tokens = std::span<const int32_t>(tokens).subspan(static_cast<size_t>(at), len);
    item.dca = dca;
    res.status = cps.Finish(model->Forward({&item, 1}, at + len == n ? &res.logits : nullptr));
    if (absl::GetFlag(FLAGS_print_steps)) {
      std::printf("step done: %d of %d tokens, %s\n", at + len, n, res.status.ToString().c_str());
      std::fflush(stdout);
    }
  }
  res.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  res.stats = cp.stats();
  cp.Release(seq);
  return res;
}

// The same session on the home GPU alone.
SessionResult RunSingle(LlamaModel* model, const ModelConfig& c, const DcaConfig& dca_config, int n,
                        int step) {
  SessionResult res;
  const cpu::DcaParams dca = dca_config.ToParams(c.head_dim, n);
  const std::vector<int32_t> tokens = SessionTokens(n, c.vocab_size);
  KvSequence seq;
  const absl::Time start = absl::Now();
  for (int at = 0; at < n && res.status.ok(); at += step) {
    const int len = std::min(step, n - at);
    StepItem item;
    item.seq = &seq;
    item.tokens = std::span<const int32_t>(tokens).subspan(static_cast<size_t>(at), len);
    item.dca = dca;
    res.status = model->Forward({&item, 1}, at + len == n ? &res.logits : nullptr);
  }
  res.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  model->kv_cache().Release(seq);
  return res;
}

int RunModel() {
  const int world = absl::GetFlag(FLAGS_world_size), rank = absl::GetFlag(FLAGS_rank);
  const int device = absl::GetFlag(FLAGS_device) < 0 ? rank : absl::GetFlag(FLAGS_device);
  const int step = absl::GetFlag(FLAGS_step);
  std::vector<int> contexts;
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_contexts), ',')) {
    int n = 0;
    if (!absl::SimpleAtoi(s, &n) || n <= 0) return std::fprintf(stderr, "bad --contexts\n"), 2;
    contexts.push_back(n);
  }
  if (step <= 0) return std::fprintf(stderr, "bad --step\n"), 2;
  std::string path = absl::GetFlag(FLAGS_model);
  if (path.empty() && std::getenv("LONGCTX_MODEL") != nullptr) path = std::getenv("LONGCTX_MODEL");
  if (path.empty()) return std::fprintf(stderr, "--model or LONGCTX_MODEL needed\n"), 2;
  auto fail = [rank](const char* what, const absl::Status& s) {
    std::fprintf(stderr, "rank %d: %s: %s\n", rank, what, s.ToString().c_str());
    return 1;
  };

  // The device first: no point in building weights for a missing GPU.
  CudaBackendOptions bo;
  bo.device = device;
  auto backend = CreateCudaBackend(bo);
  if (!backend.ok()) return fail("CUDA backend", backend.status());
  size_t free_bytes = 0, total_bytes = 0;
  if (cudaSetDevice(device) != cudaSuccess ||
      cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) {
    return fail("cudaMemGetInfo", absl::InternalError("failed"));
  }

  // The weights (only the home runs the model; the other ranks need the shape).
  // A synthetic model's tensors are made on the device (engine/model/synthetic_model.h).
  const std::string model_path =
      path == kSynthetic ? absl::StrCat(kSyntheticModelPrefix, "llama2-7b") : path;
  const bool synthetic = model_path.rfind(kSyntheticModelPrefix, 0) == 0;
  const absl::Time t_load = absl::Now();
  absl::StatusOr<LoadedModel> loaded = OpenModel(model_path, std::move(*backend));
  if (!loaded.ok()) return fail("loading the model", loaded.status());
  Backend* const device_backend = loaded->backend.get();
  const ModelConfig c = loaded->host.config;
  auto dca_config = DcaConfig::Resolve(c, DcaOverrides());
  if (!dca_config.ok()) return fail("DCA defaults", dca_config.status());

  // Every rank sizes its KV as if it held the weights (they are replicated in
  // serving), so one GPU's capacity is the same on each.
  KvCacheConfig kv_config;
  kv_config.block_size = 64;
  const double gib = double(int64_t{1} << 30);
  kv_config.max_bytes = absl::GetFlag(FLAGS_kv_gib) > 0
                            ? static_cast<int64_t>(absl::GetFlag(FLAGS_kv_gib) * gib)
                            : static_cast<int64_t>(free_bytes) - WeightBytes(c, 2) -
                                  static_cast<int64_t>(absl::GetFlag(FLAGS_reserve_gib) * gib);
  if (kv_config.max_bytes <= 0) {
    return fail("KV budget", absl::ResourceExhaustedError("no device memory left for KV"));
  }
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<KvCache> worker_kv;
  KvCache* kv = nullptr;
  if (rank == 0) {
    if (absl::Status m = BuildModel(*loaded, kv_config); !m.ok()) return fail("model upload", m);
    model = std::move(loaded->model);
    kv = &model->kv_cache();
  } else {
    auto k = KvCache::Create(device_backend, c.n_layers, c.n_kv_heads, c.head_dim, kv_config);
    if (!k.ok()) return fail("KV arena", k.status());
    worker_kv = std::move(k).value();
    kv = worker_kv.get();
  }
  loaded->host = HostModel();  // the host copy of the weights is no longer needed
  const int64_t capacity = kv->total_blocks() * kv_config.block_size;
  if (rank == 0) {
    std::printf(
        "model=%s%s layers=%d heads=%d kv_heads=%d head_dim=%d vocab=%d device=%d "
        "load_s=%.1f\nDCA %s\nKV per GPU: %.1f GiB = %lld tokens (one GPU's capacity)\n",
        path.c_str(), synthetic ? " (RANDOM WEIGHTS: throughput and capacity only)" : "",
        c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size, device,
        absl::ToDoubleSeconds(absl::Now() - t_load), dca_config->DebugString().c_str(),
        double(kv_config.max_bytes) / gib, static_cast<long long>(capacity));
    std::fflush(stdout);
  }

  std::vector<SessionResult> spread(contexts.size());
  if (world > 1) {
    DistOptions o;
    o.world_size = world;
    o.rank = rank;
    o.rendezvous = absl::GetFlag(FLAGS_rendezvous);
    o.collective_timeout = absl::Seconds(absl::GetFlag(FLAGS_collective_timeout_s));
    auto comm = NcclCommunicator::Connect(o, device);
    if (!comm.ok()) return fail("NCCL connect", comm.status());
    const auto inv = rank == 0
                         ? std::vector<float>(model->inv_freq().begin(), model->inv_freq().end())
                         : RopeInverseFrequencies(c, dca_config->compose_rope_scaling);
    ContextParallelAttention cp(comm->get(), device_backend, kv, c.n_heads, inv);
    for (size_t i = 0; i < contexts.size(); ++i) {
      spread[i] = RunSpread(cp, model.get(), c, *dca_config, contexts[i], step);
      const SessionResult& r = spread[i];
      const double layers = std::max<int64_t>(r.stats.layers, 1);
      std::printf(
          "rank %d: %d tokens over %d GPUs: %s, %.2f s; per layer: broadcast %.2f ms, partial "
          "attention %.2f ms, gather %.2f ms\n",
          rank, contexts[i], world, r.status.ToString().c_str(), r.seconds,
          1e3 * r.stats.broadcast_s / layers, 1e3 * r.stats.partial_s / layers,
          1e3 * r.stats.gather_s / layers);
      std::fflush(stdout);
      if (!r.status.ok()) return 1;
    }
  }
  if (rank != 0) return 0;

  std::printf(
      "\n| tokens | GPUs | prefill s | tokens/s | speed-up | broadcast ms/layer | partial ms/layer "
      "| gather ms/layer | max abs dlogit / max abs logit | argmax |\n"
      "|---|---|---|---|---|---|---|---|---|---|\n");
  int rc = 0;
  for (size_t i = 0; i < contexts.size(); ++i) {
    const int n = contexts[i];
    SessionResult single;
    const bool fits = n <= capacity;
    if (absl::GetFlag(FLAGS_single) && fits) {
      single = RunSingle(model.get(), c, *dca_config, n, step);
      if (!single.status.ok()) {
        std::printf("| %d | 1 | failed: %s |\n", n, single.status.ToString().c_str());
        rc = 1;
      } else {
        std::printf("| %d | 1 | %.2f | %.0f | | | | | | |\n", n, single.seconds,
                    n / single.seconds);
      }
    } else if (absl::GetFlag(FLAGS_single)) {
      std::printf("| %d | 1 | exceeds one GPU's KV (%lld tokens) | | | | | | | |\n", n,
                  static_cast<long long>(capacity));
    }
    if (world > 1) {
      const SessionResult& r = spread[i];
      const double layers = std::max<int64_t>(r.stats.layers, 1);
      std::string cmp = "", arg = "";
      if (single.status.ok() && !single.logits.empty() && single.logits.size() == r.logits.size()) {
        float scale = 0.f, diff = 0.f;
        for (size_t k = 0; k < r.logits.size(); ++k) {
          scale = std::max(scale, std::abs(single.logits[k]));
          diff = std::max(diff, std::abs(r.logits[k] - single.logits[k]));
        }
        const auto argmax = [](const std::vector<float>& x) {
          return std::max_element(x.begin(), x.end()) - x.begin();
        };
        cmp = absl::StrCat(absl::SixDigits(diff), " / ", absl::SixDigits(scale), " = ",
                           absl::SixDigits(diff / scale));
        arg = argmax(r.logits) == argmax(single.logits) ? "same" : "DIFFERENT";
      }
      const std::string speedup =
          single.status.ok() && single.seconds > 0
              ? absl::StrCat(absl::SixDigits(single.seconds / r.seconds), "x")
              : "";
      std::printf("| %d | %d | %.2f | %.0f | %s | %.2f | %.2f | %.2f | %s | %s |\n", n, world,
                  r.seconds, n / r.seconds, speedup.c_str(), 1e3 * r.stats.broadcast_s / layers,
                  1e3 * r.stats.partial_s / layers, 1e3 * r.stats.gather_s / layers, cmp.c_str(),
                  arg.c_str());
    }
    std::fflush(stdout);
  }
  return rc;
}
#endif  // LONGCTX_WITH_NCCL

int Run() {
  if (absl::GetFlag(FLAGS_mode) == "model") {
#ifdef LONGCTX_WITH_NCCL
    return RunModel();
#else
    return std::fprintf(stderr, "--mode=model: this build has no CUDA/NCCL\n"), 2;
#endif
  }
  if (absl::GetFlag(FLAGS_mode) != "comm") return std::fprintf(stderr, "bad --mode\n"), 2;
  std::vector<int> sizes;
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_tokens), ',')) {
    int n = 0;
    if (!absl::SimpleAtoi(s, &n) || n <= 0) return std::fprintf(stderr, "bad --tokens\n"), 2;
    sizes.push_back(n);
  }
  const std::string kind = absl::GetFlag(FLAGS_comm);
  const int world = absl::GetFlag(FLAGS_world_size);
  if (kind == "inproc") {
    auto comms = InProcessCommunicator::CreateGroup(world, absl::Seconds(60));
    const Memory host{[](size_t n) { return static_cast<void*>(new char[n]); },
                      [](void* p) { delete[] static_cast<char*>(p); }};
    std::vector<absl::StatusOr<std::vector<Row>>> out(world, absl::UnknownError("not run"));
    std::vector<std::thread> threads;
    for (int r = 0; r < world; ++r) {
      threads.emplace_back([&, r] { out[r] = Measure(*comms[r], host, sizes); });
    }
    for (std::thread& t : threads) t.join();
    if (!out[0].ok()) return std::fprintf(stderr, "%s\n", out[0].status().ToString().c_str()), 1;
    Print(kind, world, *out[0]);
    return 0;
  }
  if (kind == "nccl") {
#ifdef LONGCTX_WITH_NCCL
    DistOptions o;
    o.world_size = world;
    o.rank = absl::GetFlag(FLAGS_rank);
    o.rendezvous = absl::GetFlag(FLAGS_rendezvous);
    const int device = absl::GetFlag(FLAGS_device) < 0 ? o.rank : absl::GetFlag(FLAGS_device);
    auto comm = NcclCommunicator::Connect(o, device);
    if (!comm.ok()) return std::fprintf(stderr, "%s\n", comm.status().ToString().c_str()), 1;
    const Memory gpu{[](size_t n) {
                       void* p = nullptr;
                       return cudaMalloc(&p, n) == cudaSuccess ? p : nullptr;
                     },
                     [](void* p) { cudaFree(p); }};
    auto rows = Measure(**comm, gpu, sizes);
    if (!rows.ok()) return std::fprintf(stderr, "%s\n", rows.status().ToString().c_str()), 1;
    if (o.rank == 0) Print(kind, world, *rows);
    return 0;
#else
    return std::fprintf(stderr, "--comm=nccl: this build has no NCCL (LONGCTX_WITH_NCCL)\n"), 2;
#endif
  }
  return std::fprintf(stderr, "--comm must be inproc or nccl\n"), 2;
}

}  // namespace
}  // namespace longctx

int main(int argc, char** argv) {
  longctx::PrepareCpuProcess(argv);
  longctx::ParseToolFlags(
      argc, argv,
      "Context-parallel attention: the communication of one layer (--mode=comm) or a model's\n"
      "sessions over GPUs (--mode=model).\n  longctx-dist-bench [flags]");
  return longctx::Run();
}
