// Engine throughput on this machine: prefill tokens/s at several context
// lengths, then decode steps of 1 or more sessions batched into one step, and
// what the KV cache costs per token. On the CUDA backend also: decode with and
// without step graphs, the memory-bandwidth floor of a decode step (weights and
// KV read once, over the measured device-to-device copy bandwidth) and the
// longest single session that fits the device. Prints Markdown tables.
//
//   longctx-bench --model=M.gguf [--backend=cpu] [--lengths=512,2048,8192] [--decode=64]
//   longctx-bench --backend=cuda --model=synthetic:llama2-7b --lengths=4096,8192,32768,131072
//       --batch=1,32 --chunk=4096 --max_context
//
// Prefill at each length: one untimed run at that length (--warmup), then
// --repeats timed runs; the table gives the median (and the fastest and the
// slowest), as the transformers and PyTorch baselines in tools/bench do.
//
// Session 1 of a length is prefilled for real (timed). The other sessions of a
// batch get KV slots reserved to the same length without computing them: a
// decode step reads every key and value whatever they hold, so its cost is that
// of real sessions, without prefilling each one.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "engine/backend/backend.h"
#include "engine/backend/backend_factory.h"
#include "engine/backend/cpu_process.h"
#include "engine/model/dca_config.h"
#include "engine/model/host_weights.h"
#include "engine/model/llama_model.h"
#include "engine/model/load_model.h"
#include "engine/model/synthetic_model.h"
#include "engine/util/status_macros.h"
#include "kernels/ops.h"
#include "tools/tool_flags.h"
#ifdef LONGCTX_WITH_CUDA
#include "engine/backend/cuda/cuda_backend.h"
#endif

ABSL_FLAG(std::string, model, "",
          "model file (GGUF), Hugging Face directory, or synthetic:llama2-7b (random weights)");
ABSL_FLAG(std::string, backend, "auto", "auto, cpu or cuda");
ABSL_FLAG(std::string, cpu_weights, "f32",
          "CPU: f32 (dequantized at load, BLAS) or quantized (GGUF blocks, int8 activations)");
ABSL_FLAG(std::string, cpu_isa, "auto", "CPU: quantized products on auto, avx512, avx2 or scalar");
ABSL_FLAG(std::string, cpu_kv, "f32", "CPU: KV cache elements, f32 or f16");
ABSL_FLAG(std::string, lengths, "512,2048,8192", "context lengths to prefill");
ABSL_FLAG(int, decode, 64, "decode steps timed per batch size (and per graph setting)");
ABSL_FLAG(int, chunk, 512, "prefill piece size (tokens per forward call)");
ABSL_FLAG(int, repeats, 3,
          "timed prefill runs per length; the median is reported, with the fastest and the "
          "slowest");
ABSL_FLAG(bool, warmup, true,
          "one untimed prefill at each length before its timed runs (false: only the first "
          "length is preceded by an untimed prefill of one piece)");
ABSL_FLAG(std::string, batch, "1", "sessions decoded together in one step, e.g. 1,32");
ABSL_FLAG(std::string, attention, "dca", "dca (the model's default DCA settings) or rope");
ABSL_FLAG(std::string, graphs, "both",
          "CUDA step graphs during decode: on, off, or both (each timed)");
ABSL_FLAG(std::string, tokens, "device",
          "decode: device (each session's greedy token picked on the device, as longctxd does "
          "for greedy requests) or host (all logits downloaded, argmax on the host, not timed)");
ABSL_FLAG(bool, dependent_launch, true,
          "CUDA: launch the decode-path kernels as programmatic dependents (overlapping the "
          "kernel ahead)");
ABSL_FLAG(std::string, prefill_kernel, "auto",
          "CUDA prefill attention: auto (the default kernels), wgmma-overlapped (the "
          "Hopper kernel's overlapped schedule) or mma.sync (the portable tiled kernel)");
ABSL_FLAG(bool, profile_step, false,
          "CUDA: open the profiler's capture range around the first timed decode step of each "
          "series (for `ncu --profile-from-start off`)");
ABSL_FLAG(int, copy_mib, 1024,
          "CUDA: MiB per device-to-device copy measuring bandwidth (0: no floor columns)");
ABSL_FLAG(bool, max_context, false,
          "CUDA: give the KV arena all free memory and report the longest single session, "
          "checked with decode steps at that length");
ABSL_FLAG(double, reserve_gib, 4.0,
          "CUDA: device memory left free for activations and scratch when the KV arena takes "
          "the rest");

namespace longctx {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a) {
  return std::chrono::duration<double>(Clock::now() - a).count();
}

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
// Untimed decode steps before each timed series: with graphs, the first runs op
// by op, the second is captured, the third is the first replay.
constexpr int kWarmupSteps = 3;

struct Options {
  std::vector<int> lengths;
  std::vector<int> batches;
  std::vector<bool> graph_settings;  // false = off, true = on (CUDA only)
  int decode = 64;
  int chunk = 512;
  int repeats = 3;
  bool warmup = true;  // an untimed prefill at each length before the timed ones
  bool dca = true;
  bool device_tokens = true;  // --tokens=device
};

absl::StatusOr<std::vector<int>> ParseList(const std::string& s, const char* flag) {
  std::vector<int> out;
  for (absl::string_view part : absl::StrSplit(s, ',')) {
    int n = 0;
    if (!absl::SimpleAtoi(part, &n) || n <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("bad --", flag, ": ", s));
    }
    out.push_back(n);
  }
  return out;
}

struct DecodeRow {
  int length = 0;
  int sessions = 0;
  std::string graphs;  // "-", "off", "on"
  std::string note;    // set when the row did not run
  double step_ms = 0;
  int64_t kernels = 0;
  int64_t replayed = 0;
  double floor_ms = 0;
  double gb_per_step = 0;
};

struct PrefillRow {
  int length = 0;
  double seconds = 0;  // median of the timed runs
  double min_seconds = 0;
  double max_seconds = 0;
};

// The middle value of sorted `v` (the mean of the two middle ones when even),
// as Python's statistics.median, which the baselines in tools/bench use.
// REQUIRES: v sorted, not empty.
double Median(const std::vector<double>& v) {
  const size_t m = v.size() / 2;
  return v.size() % 2 == 1 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

struct KvRow {
  int length = 0;
  double session_bytes_per_token = 0;
};

// CreateBackend(kind), with the CPU and CUDA options of the flags.
absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(BackendKind kind) {
  ASSIGN_OR_RETURN(
      const CpuBackendOptions cpu,
      ParseCpuBackendOptions(absl::GetFlag(FLAGS_cpu_weights), absl::GetFlag(FLAGS_cpu_isa),
                             absl::GetFlag(FLAGS_cpu_kv)));
#ifdef LONGCTX_WITH_CUDA
  if (kind == BackendKind::kCuda || (kind == BackendKind::kAuto && CudaDeviceAvailable())) {
    CudaBackendOptions options;
    options.dependent_launch = absl::GetFlag(FLAGS_dependent_launch);
    if (!PrefillKernelsByName(absl::GetFlag(FLAGS_prefill_kernel), &options.attention)) {
      return absl::InvalidArgumentError(absl::StrCat("--prefill_kernel: ", kPrefillKernelNames));
    }
    return CreateCudaBackend(options);
  }
#endif
  return CreateBackend(kind, cpu);
}

// Bytes of the weights as the host holds them (blocks or f32); 0 for
// synthetic weights, which only the backend makes.
int64_t HostWeightBytes(const HostModel& host, bool* blocks) {
  int64_t bytes = 0;
  *blocks = false;
  for (const auto& [name, t] : host.tensors) {
    bytes += static_cast<int64_t>(t.raw.size() + t.data.size() * sizeof(float));
    *blocks = *blocks || !t.raw.empty();
  }
  return bytes;
}

class Bench {
 public:
  Bench(Options opt, LoadedModel loaded) : opt_(std::move(opt)), loaded_(std::move(loaded)) {}

  absl::Status Run();

 private:
  cpu::DcaParams Dca(int total_len) const {
    return dca_.ToParams(loaded_.host.config.head_dim, total_len);
  }
  int StepsPerSession() const {
    return static_cast<int>(opt_.graph_settings.size()) * (opt_.decode + kWarmupSteps);
  }
  int64_t BlocksFor(int64_t tokens) const {
    const int bs = loaded_.model->kv_cache().geometry().block_size;
    return (tokens + bs - 1) / bs;
  }
  absl::Status Prefill(KvSequence& seq, int n, std::mt19937& rng, std::vector<float>* logits,
                       double* seconds);
  // Checks that the weights and *kv_bytes of KV fit host memory (CPU) or the
  // device (CUDA, which also measures the copy bandwidth); on the device, a KV
  // arena that does not fit, or --max_context, gets all free memory instead.
  absl::Status FitArena(int64_t* kv_bytes, bool* whole_device);
  // Prefills every length in turn (timed), then decodes each batch size at it.
  absl::Status RunLengths();
  // Prefills `seq` to n tokens opt_.repeats times (after one untimed run when
  // opt_.warmup) and records the median; `seq` holds the last run's tokens.
  absl::Status TimePrefill(KvSequence& seq, int n, std::mt19937& rng, std::vector<float>* logits);
  // Times decode steps of `seq` (prefilled to n tokens) with b - 1 sessions
  // reserved to the same length, once per graph setting.
  absl::Status DecodeBatch(KvSequence& seq, int n, int b, int32_t first, int64_t session_tokens);
  // Times `opt_.decode` steps of all `seqs` together after kWarmupSteps.
  absl::Status Decode(std::vector<KvSequence*> seqs, std::vector<int32_t>& next, DecodeRow* row);
  double FloorMs(int sessions, double mean_len) const;
  absl::Status MaxContext();
  void PrintTables() const;

  Options opt_;
  LoadedModel loaded_;  // the backend, the host weights and (built in Run) the model
  DcaConfig dca_;
  bool cuda_ = false;
  double copy_bw_ = 0;  // bytes/s, read + write
  int64_t weight_bytes_ = 0;
  int64_t kv_theory_ = 0;  // bytes per token
  int64_t free_before_ = 0;
  std::vector<PrefillRow> prefill_;
  std::vector<DecodeRow> decode_;
  std::vector<KvRow> kv_rows_;
  std::string max_context_line_;
};

absl::Status Bench::Prefill(KvSequence& seq, int n, std::mt19937& rng, std::vector<float>* logits,
                            double* seconds) {
  std::uniform_int_distribution<int32_t> tok(100, loaded_.host.config.vocab_size - 1);
  std::vector<int32_t> prompt(static_cast<size_t>(n));
  for (auto& t : prompt) t = tok(rng);
  const auto t0 = Clock::now();
  for (int first = 0; first < n; first += opt_.chunk) {
    const int len = std::min(opt_.chunk, n - first);
    StepItem item{&seq,
                  {prompt.data() + first, static_cast<size_t>(len)},
                  first + len == n ? LogitsMode::kLast : LogitsMode::kNone,
                  Dca(first + len)};
    RETURN_IF_ERROR(loaded_.model->Forward({&item, 1}, logits));
  }
  *seconds = Seconds(t0);
  return absl::OkStatus();
}

absl::Status Bench::Decode(std::vector<KvSequence*> seqs, std::vector<int32_t>& next,
                           DecodeRow* row) {
  const int64_t V = loaded_.host.config.vocab_size;
  std::vector<StepItem> items(seqs.size());
  std::vector<float> logits;
  double timed = 0;
#ifdef LONGCTX_WITH_CUDA
  int64_t replays_before = 0;
#endif
  for (int step = 0; step < kWarmupSteps + opt_.decode; ++step) {
#ifdef LONGCTX_WITH_CUDA
    if (cuda_ && step == kWarmupSteps) {
      ASSIGN_OR_RETURN(CudaStepGraphStats st, GetCudaStepGraphStats(*loaded_.backend));
      replays_before = st.replays;
    }
#endif
    for (size_t i = 0; i < seqs.size(); ++i) {
      items[i] = StepItem{seqs[i],
                          {&next[i], 1},
                          opt_.device_tokens ? LogitsMode::kGreedy : LogitsMode::kLast,
                          Dca(seqs[i]->length() + 1)};
      // Written after the step has read every item's input token.
      items[i].greedy_token = &next[i];
    }
#ifdef LONGCTX_WITH_CUDA
    const bool profile = cuda_ && step == kWarmupSteps && absl::GetFlag(FLAGS_profile_step);
    if (profile) RETURN_IF_ERROR(SetCudaProfilerCapture(*loaded_.backend, true));
#endif
    const auto t0 = Clock::now();
    RETURN_IF_ERROR(loaded_.model->Forward(items, &logits));
    if (step >= kWarmupSteps) timed += Seconds(t0);
#ifdef LONGCTX_WITH_CUDA
    if (profile) RETURN_IF_ERROR(SetCudaProfilerCapture(*loaded_.backend, false));
#endif
    if (opt_.device_tokens) continue;
    for (size_t i = 0; i < seqs.size(); ++i) next[i] = cpu::ArgMax(logits.data() + i * V, V);
  }
  row->step_ms = timed * 1e3 / opt_.decode;
#ifdef LONGCTX_WITH_CUDA
  if (cuda_ && row->graphs == "on") {
    ASSIGN_OR_RETURN(CudaStepGraphStats st, GetCudaStepGraphStats(*loaded_.backend));
    row->kernels = st.graph_kernels;
    row->replayed = st.replays - replays_before;
    if (row->graphs == "on" && !st.disabled_reason.empty()) {
      row->note = absl::StrCat("graphs disabled: ", st.disabled_reason);
    } else if (row->graphs == "on" && row->replayed < opt_.decode && !st.last_abort.empty()) {
      row->note = absl::StrCat("last re-record: ", st.last_abort);
    }
  }
#endif
  return absl::OkStatus();
}

double Bench::FloorMs(int sessions, double mean_len) const {
  if (copy_bw_ <= 0) return 0;
  const ModelConfig& c = loaded_.host.config;
  const int64_t elt = static_cast<int64_t>(DTypeSize(loaded_.backend->WeightType()));
  // Every weight is read once per step, except the embedding table, of which
  // only the rows of the step's tokens are (unless it is also the lm head).
  int64_t weights = weight_bytes_;
  if (!c.tied_embeddings) weights -= int64_t{c.vocab_size} * c.d_model * elt;
  weights += int64_t{sessions} * c.d_model * elt;
  const double kv = static_cast<double>(sessions) * mean_len * static_cast<double>(kv_theory_);
  return (static_cast<double>(weights) + kv) / copy_bw_ * 1e3;
}

absl::Status Bench::MaxContext() {
  KvCache& kv = loaded_.model->kv_cache();
  const int bs = kv.geometry().block_size;
  // All of the arena to one session, the last slot left for the decode steps.
  const int64_t tokens = kv.free_blocks() * bs - 4;
  if (tokens <= 0) return absl::ResourceExhaustedError("max context: no free KV blocks");
  KvSequence seq;
  std::vector<int32_t> slots;
  RETURN_IF_ERROR(kv.Append(seq, static_cast<int>(tokens), &slots));
  std::vector<int32_t> next = {100};
  std::vector<float> logits;
  const int steps = 3;
  double timed = 0;
  for (int s = 0; s < steps; ++s) {
    StepItem item{&seq, {next.data(), 1}, LogitsMode::kLast, Dca(seq.length() + 1)};
    const auto t0 = Clock::now();
    absl::Status st = loaded_.model->Forward({&item, 1}, &logits);
    if (!st.ok()) {
      kv.Release(seq);
      return st;
    }
    timed += Seconds(t0);
  }
  const int64_t reached = seq.length();
  kv.Release(seq);
  max_context_line_ = absl::StrFormat(
      "Longest single-session context: %d tokens (KV arena %.2f GiB = %.2f GiB free before the "
      "model - %.2f GiB weights - %.2f GiB kept for activations; %d decode steps run at that "
      "length, %.2f ms each).",
      reached, static_cast<double>(kv.total_blocks() * kv.BytesPerBlock()) / kGiB,
      static_cast<double>(free_before_) / kGiB, static_cast<double>(weight_bytes_) / kGiB,
      absl::GetFlag(FLAGS_reserve_gib), steps, timed * 1e3 / steps);
  std::fprintf(stderr, "%s\n", max_context_line_.c_str());
  return absl::OkStatus();
}

absl::Status Bench::Run() {
  const ModelConfig& c = loaded_.host.config;
  ASSIGN_OR_RETURN(dca_, DcaConfig::Resolve(c, {}));
  if (!opt_.dca) dca_.mode = DcaMode::kRope;
  cuda_ = loaded_.backend->Name().rfind("cuda", 0) == 0;
  bool blocks = false;
  weight_bytes_ = HostWeightBytes(loaded_.host, &blocks);
  if (weight_bytes_ == 0 || cuda_) {
    weight_bytes_ = WeightBytes(c, static_cast<int>(DTypeSize(loaded_.backend->WeightType())));
  }
  const char* weight_format = blocks && !cuda_                                ? "GGUF blocks"
                              : loaded_.backend->WeightType() == DType::kBF16 ? "bf16"
                                                                              : "f32";
  kv_theory_ = int64_t{2} * c.n_layers * c.n_kv_heads * c.head_dim *
               static_cast<int64_t>(DTypeSize(loaded_.backend->KvType()));
  const int block_size = KvCacheConfig{}.block_size;
  int max_len = 0, max_batch = 0;
  for (int n : opt_.lengths) max_len = std::max(max_len, n);
  for (int b : opt_.batches) max_batch = std::max(max_batch, b);
  const int64_t per_session = max_len + StepsPerSession() + 2 * block_size;
  int64_t kv_bytes = kv_theory_ * per_session * max_batch;
  bool whole_device = false;
  RETURN_IF_ERROR(FitArena(&kv_bytes, &whole_device));
  KvCacheConfig kv;
  kv.max_bytes = kv_bytes;
  RETURN_IF_ERROR(BuildModel(loaded_, kv));
  RETURN_IF_ERROR(loaded_.backend->Synchronize());
  KvCache& cache = loaded_.model->kv_cache();

  std::printf(
      "backend=%s model=%s layers=%d d_model=%d heads=%d kv_heads=%d head_dim=%d "
      "d_ff=%d vocab=%d\n",
      loaded_.backend->Name().c_str(), c.name.c_str(), c.n_layers, c.d_model, c.n_heads,
      c.n_kv_heads, c.head_dim, c.d_ff, c.vocab_size);
  if (c.name.find("synthetic") != std::string::npos) {
    std::printf("NOTE: synthetic model, random weights: timings only, outputs meaningless.\n");
  }
  std::printf("attention: %s; weights %.2f GiB (%s); KV arena %.2f GiB (%lld blocks of %d)%s\n",
              dca_.DebugString().c_str(), weight_bytes_ / kGiB, weight_format,
              static_cast<double>(cache.total_blocks() * cache.BytesPerBlock()) / kGiB,
              static_cast<long long>(cache.total_blocks()), cache.geometry().block_size,
              whole_device ? ", all free device memory" : "");
  if (copy_bw_ > 0) {
    std::printf(
        "device-to-device copy bandwidth: %.1f GB/s (cudaMemcpyAsync D2D of %d MiB, "
        "read + write bytes)\n",
        copy_bw_ / 1e9, absl::GetFlag(FLAGS_copy_mib));
  }
  std::printf("\n");
  std::fflush(stdout);

  RETURN_IF_ERROR(RunLengths());
#ifdef LONGCTX_WITH_CUDA
  if (cuda_) RETURN_IF_ERROR(SetCudaStepGraphs(*loaded_.backend, true));
#endif
  if (absl::GetFlag(FLAGS_max_context) && !cuda_) {
    max_context_line_ = "Longest single-session context: measured on the CUDA backend only.";
  } else if (absl::GetFlag(FLAGS_max_context)) {
    absl::Status s = MaxContext();
    if (!s.ok())
      max_context_line_ = absl::StrCat("Longest single-session context: failed: ", s.ToString());
  }
  PrintTables();
  return absl::OkStatus();
}

absl::Status Bench::RunLengths() {
  KvCache& cache = loaded_.model->kv_cache();
  const int block_size = cache.geometry().block_size;
  int max_len = 0;
  for (int n : opt_.lengths) max_len = std::max(max_len, n);
  std::mt19937 rng(7);
  {
    // Untimed: first use of the GEMM shapes and kernels, scratch growth.
    KvSequence warm;
    std::vector<float> logits;
    double s = 0;
    RETURN_IF_ERROR(Prefill(warm, std::min(opt_.chunk, max_len), rng, &logits, &s));
    cache.Release(warm);
  }
  for (int n : opt_.lengths) {
    const int64_t session_tokens = n + StepsPerSession() + block_size;
    if (cache.free_blocks() < BlocksFor(session_tokens)) {
      DecodeRow row;
      row.length = n;
      row.sessions = 1;
      row.graphs = "-";
      row.note = absl::StrFormat("does not fit: %.2f GiB of KV for one session, arena %.2f GiB",
                                 session_tokens * kv_theory_ / kGiB,
                                 cache.total_blocks() * cache.BytesPerBlock() / kGiB);
      decode_.push_back(row);
      continue;
    }
    KvSequence seq;
    std::vector<float> logits;
    RETURN_IF_ERROR(TimePrefill(seq, n, rng, &logits));
    const int32_t first = cpu::ArgMax(logits.data(), loaded_.host.config.vocab_size);
    for (int b : opt_.batches) RETURN_IF_ERROR(DecodeBatch(seq, n, b, first, session_tokens));
    // After the decode steps, so the last block is partly filled as in use.
    kv_rows_.push_back(
        {seq.length(),
         static_cast<double>(seq.resident_blocks() * cache.BytesPerBlock()) / seq.length()});
    cache.Release(seq);
  }
  return absl::OkStatus();
}

absl::Status Bench::TimePrefill(KvSequence& seq, int n, std::mt19937& rng,
                                std::vector<float>* logits) {
  KvCache& cache = loaded_.model->kv_cache();
  double s = 0;
  if (opt_.warmup) {
    // Untimed, at this length: the attention shapes, scratch and allocator
    // state of an n-token prefill are in place before the timed runs.
    RETURN_IF_ERROR(Prefill(seq, n, rng, logits, &s));
    cache.Release(seq);
  }
  std::vector<double> runs;
  for (int rep = 0; rep < opt_.repeats; ++rep) {
    // The session of the last run stays for the decode steps.
    if (rep > 0) cache.Release(seq);
    RETURN_IF_ERROR(Prefill(seq, n, rng, logits, &s));
    runs.push_back(s);
  }
  std::sort(runs.begin(), runs.end());
  PrefillRow row;
  row.length = n;
  row.seconds = Median(runs);
  row.min_seconds = runs.front();
  row.max_seconds = runs.back();
  prefill_.push_back(row);
  std::fprintf(stderr, "prefill %d tokens: median %.3f s of %d (min %.3f, max %.3f), %.1f tok/s\n",
               n, row.seconds, opt_.repeats, row.min_seconds, row.max_seconds, n / row.seconds);
  return absl::OkStatus();
}

absl::Status Bench::DecodeBatch(KvSequence& seq, int n, int b, int32_t first,
                                int64_t session_tokens) {
  KvCache& cache = loaded_.model->kv_cache();
  // Extra sessions: KV reserved to the same length, not computed.
  std::vector<KvSequence> extra(static_cast<size_t>(b - 1));
  std::vector<int32_t> slots;
  const int64_t need = (b - 1) * BlocksFor(session_tokens);
  bool fits = cache.free_blocks() >= need;
  for (size_t i = 0; fits && i < extra.size(); ++i) {
    fits = cache.Append(extra[i], n, &slots).ok();
  }
  std::vector<std::string> settings;
  for (bool g : opt_.graph_settings) settings.push_back(cuda_ ? (g ? "on" : "off") : "-");
  for (size_t gi = 0; gi < settings.size(); ++gi) {
    DecodeRow row;
    row.length = n;
    row.sessions = b;
    row.graphs = settings[gi];
    if (!fits) {
      row.note = absl::StrFormat("does not fit: %.2f GiB of KV for %d sessions, arena %.2f GiB",
                                 static_cast<double>(b) * session_tokens * kv_theory_ / kGiB, b,
                                 cache.total_blocks() * cache.BytesPerBlock() / kGiB);
      decode_.push_back(row);
      continue;
    }
#ifdef LONGCTX_WITH_CUDA
    if (cuda_) RETURN_IF_ERROR(SetCudaStepGraphs(*loaded_.backend, opt_.graph_settings[gi]));
#endif
    std::vector<KvSequence*> seqs = {&seq};
    for (KvSequence& e : extra) seqs.push_back(&e);
    std::vector<int32_t> next(seqs.size(), first);
    const double len0 = seq.length();
    RETURN_IF_ERROR(Decode(seqs, next, &row));
    const double mean_len = len0 + kWarmupSteps + (opt_.decode + 1) / 2.0;
    row.floor_ms = FloorMs(b, mean_len);
    row.gb_per_step = copy_bw_ > 0 ? row.floor_ms * 1e-3 * copy_bw_ / 1e9 : 0;
    std::fprintf(stderr, "decode %d tokens x %d sessions, graphs %s: %.3f ms/step%s%s\n", n, b,
                 row.graphs.c_str(), row.step_ms, row.note.empty() ? "" : "; ", row.note.c_str());
    decode_.push_back(row);
  }
  // Both settings launch the same kernels; only the recording counts them.
  for (size_t i = decode_.size() - settings.size(); i < decode_.size(); ++i) {
    if (decode_[i].graphs == "off") decode_[i].kernels = decode_.back().kernels;
  }
  for (KvSequence& e : extra) cache.Release(e);
  return absl::OkStatus();
}

absl::Status Bench::FitArena(int64_t* kv_bytes, [[maybe_unused]] bool* whole_device) {
  if (!cuda_) {
    const double ram = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGE_SIZE);
    if (weight_bytes_ + *kv_bytes > 0.9 * ram) {
      return absl::ResourceExhaustedError(
          absl::StrFormat("%.1f GiB of weights and KV do not fit %.1f GiB of host memory",
                          (weight_bytes_ + *kv_bytes) / kGiB, ram / kGiB));
    }
  }
#ifdef LONGCTX_WITH_CUDA
  if (cuda_) {
    const int copy_mib = absl::GetFlag(FLAGS_copy_mib);
    if (copy_mib > 0) {
      ASSIGN_OR_RETURN(copy_bw_,
                       MeasureCudaCopyBandwidth(*loaded_.backend, size_t(copy_mib) << 20, 20));
    }
    ASSIGN_OR_RETURN(CudaMemoryInfo mem, GetCudaMemoryInfo(*loaded_.backend));
    free_before_ = mem.free_bytes;
    const int64_t available = mem.free_bytes - weight_bytes_ -
                              static_cast<int64_t>(absl::GetFlag(FLAGS_reserve_gib) * kGiB);
    if (available <= 0) {
      return absl::ResourceExhaustedError(
          absl::StrFormat("%.2f GiB free cannot hold %.2f GiB of weights", mem.free_bytes / kGiB,
                          weight_bytes_ / kGiB));
    }
    if (absl::GetFlag(FLAGS_max_context) || *kv_bytes > available) {
      *kv_bytes = available;
      *whole_device = true;
    }
  }
#endif
  return absl::OkStatus();
}

void Bench::PrintTables() const {
  std::printf("### Prefill (one session, pieces of %d tokens; median of %d timed run%s%s)\n\n",
              opt_.chunk, opt_.repeats, opt_.repeats == 1 ? "" : "s",
              opt_.warmup ? " after an untimed one at the same length" : "");
  std::printf(
      "| context | prefill s | prefill tok/s | fastest s | slowest s |\n"
      "|---:|---:|---:|---:|---:|\n");
  for (const PrefillRow& r : prefill_) {
    std::printf("| %d | %.3f | %.1f | %.3f | %.3f |\n", r.length, r.seconds, r.length / r.seconds,
                r.min_seconds, r.max_seconds);
  }
  std::printf(
      "\n### Decode (%d timed steps after %d warm-up steps; step = one forward call, %s)\n\n",
      opt_.decode, kWarmupSteps,
      opt_.device_tokens ? "greedy tokens picked on the device"
                         : "logits downloaded, host argmax excluded");
  std::printf(
      "| context | sessions | graphs | step ms | tok/s | kernels/step | replayed | floor ms | "
      "achieved/floor | GB read/step | note |\n"
      "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|\n");
  for (const DecodeRow& r : decode_) {
    if (!r.note.empty() && r.step_ms == 0) {
      std::printf("| %d | %d | %s | | | | | | | | %s |\n", r.length, r.sessions, r.graphs.c_str(),
                  r.note.c_str());
      continue;
    }
    const std::string kernels = r.kernels > 0 ? absl::StrCat(r.kernels) : "";
    const std::string replayed = r.graphs == "on" ? absl::StrCat(r.replayed) : "";
    const std::string floor = r.floor_ms > 0 ? absl::StrFormat("%.3f", r.floor_ms) : std::string();
    const std::string ratio =
        r.floor_ms > 0 ? absl::StrFormat("%.2f", r.floor_ms / r.step_ms) : std::string();
    const std::string gb = r.gb_per_step > 0 ? absl::StrFormat("%.2f", r.gb_per_step) : "";
    std::printf("| %d | %d | %s | %.3f | %.1f | %s | %s | %s | %s | %s | %s |\n", r.length,
                r.sessions, r.graphs.c_str(), r.step_ms, r.sessions * 1e3 / r.step_ms,
                kernels.c_str(), replayed.c_str(), floor.c_str(), ratio.c_str(), gb.c_str(),
                r.note.c_str());
  }
  const KvCache& cache = loaded_.model->kv_cache();
  const double pool = static_cast<double>(cache.BytesPerBlock()) / cache.geometry().block_size;
  std::printf("\n### KV cache per token\n\n");
  std::printf(
      "Theory 2 x layers x kv_heads x head_dim x %zu B = %lld B; the pool's blocks hold "
      "%.0f B per token slot.\n\n",
      DTypeSize(loaded_.backend->KvType()), static_cast<long long>(kv_theory_), pool);
  std::printf("| session tokens | bytes/token held | paging overhead |\n|---:|---:|---:|\n");
  for (const KvRow& r : kv_rows_) {
    std::printf("| %d | %.0f | %.2f%% |\n", r.length, r.session_bytes_per_token,
                100.0 * (r.session_bytes_per_token / kv_theory_ - 1.0));
  }
  if (!max_context_line_.empty()) std::printf("\n%s\n", max_context_line_.c_str());
  std::fflush(stdout);
}

int Run() {
  Options opt;
  auto lengths = ParseList(absl::GetFlag(FLAGS_lengths), "lengths");
  auto batches = ParseList(absl::GetFlag(FLAGS_batch), "batch");
  if (!lengths.ok() || !batches.ok()) {
    std::fprintf(stderr, "%s\n",
                 (!lengths.ok() ? lengths.status() : batches.status()).ToString().c_str());
    return 2;
  }
  opt.lengths = *lengths;
  opt.batches = *batches;
  opt.decode = std::max(1, absl::GetFlag(FLAGS_decode));
  opt.chunk = std::max(1, absl::GetFlag(FLAGS_chunk));
  opt.repeats = std::max(1, absl::GetFlag(FLAGS_repeats));
  opt.warmup = absl::GetFlag(FLAGS_warmup);
  const std::string attention = absl::GetFlag(FLAGS_attention);
  if (attention != "dca" && attention != "rope") {
    return std::fprintf(stderr, "bad --attention (dca or rope)\n"), 2;
  }
  opt.dca = attention == "dca";
  auto kind = ParseBackendKind(absl::GetFlag(FLAGS_backend));
  if (!kind.ok()) return std::fprintf(stderr, "%s\n", kind.status().ToString().c_str()), 2;
  auto backend = MakeBackend(*kind);
  if (!backend.ok()) return std::fprintf(stderr, "%s\n", backend.status().ToString().c_str()), 1;
  const std::string graphs = absl::GetFlag(FLAGS_graphs);
  const bool cuda = (*backend)->Name().rfind("cuda", 0) == 0;
  if (!cuda || graphs == "on") {
    opt.graph_settings = {true};
  } else if (graphs == "off") {
    opt.graph_settings = {false};
  } else if (graphs == "both") {
    opt.graph_settings = {false, true};
  } else {
    return std::fprintf(stderr, "bad --graphs (on, off or both)\n"), 2;
  }
  const std::string tokens = absl::GetFlag(FLAGS_tokens);
  if (tokens != "device" && tokens != "host") {
    return std::fprintf(stderr, "bad --tokens (device or host)\n"), 2;
  }
  opt.device_tokens = tokens == "device";
  auto loaded = OpenModel(absl::GetFlag(FLAGS_model), std::move(*backend));
  if (!loaded.ok()) return std::fprintf(stderr, "%s\n", loaded.status().ToString().c_str()), 1;
  Bench bench(std::move(opt), std::move(*loaded));
  absl::Status s = bench.Run();
  if (!s.ok()) return std::fprintf(stderr, "%s\n", s.ToString().c_str()), 1;
  return 0;
}

}  // namespace
}  // namespace longctx

int main(int argc, char** argv) {
  longctx::PrepareCpuProcess(argv);
  longctx::ParseToolFlags(
      argc, argv,
      "Engine throughput: prefill, decode of batched sessions, KV cost and (CUDA) "
      "the bandwidth floor.\n  longctx-bench --model=FILE|synthetic:llama2-7b "
      "[flags]");
  return longctx::Run();
}
