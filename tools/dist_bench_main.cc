// Communication cost of context-parallel attention (DESIGN §7): times the
// collectives of one layer — the home's broadcasts of the new tokens' q, k, v
// and the gather of every rank's partial (o, lse) — at several step sizes, and
// prints a table (rank 0). Shapes default to Llama-2-7B (32 heads, no GQA,
// head_dim 128, 32 layers) with f32 activations, as the CUDA backend keeps them.
//
// NCCL, one process per GPU (rank r on device r unless --device):
//   NCCL_NVLS_ENABLE=0 longctx-dist-bench --comm=nccl --world_size=2 --rank=R
//       --rendezvous=tcp://127.0.0.1:29511   (one such process per rank)
// In-process (threads as ranks, host memory):
//   longctx-dist-bench --comm=inproc --world_size=2
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
#include "absl/strings/str_split.h"
#include "engine/backend/cpu_process.h"
#include "engine/dist/communicator.h"
#include "engine/dist/inproc_communicator.h"
#include "engine/dist/rendezvous.h"
#include "tools/tool_flags.h"
#ifdef LONGCTX_WITH_NCCL
#include <cuda_runtime_api.h>

#include "engine/dist/nccl_communicator.h"
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

int Run() {
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
  longctx::ParseToolFlags(argc, argv,
      "Communication cost of context-parallel attention per layer.\n  longctx-dist-bench [flags]");
  return longctx::Run();
}
