#include "server/metrics.h"

#include <atomic>
#include <exception>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "engine/engine.h"
#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"

namespace longctx::server {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

// One sample: a counter's or a gauge's value.
ClientMetric Sample(MetricType type, double value, std::vector<ClientMetric::Label> labels) {
  ClientMetric m;
  m.label = std::move(labels);
  if (type == MetricType::Counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  return m;
}

MetricFamily Scalar(const std::string& name, const std::string& help, MetricType type, double value,
                    std::vector<ClientMetric::Label> labels = {}) {
  MetricFamily f{name, help, type, {}};
  f.metric.push_back(Sample(type, value, std::move(labels)));
  return f;
}

MetricFamily HistogramFamily(const std::string& name, const std::string& help, const Histogram& h) {
  const Histogram::Snapshot s = h.Read();
  MetricFamily f{name, help, MetricType::Histogram, {}};
  ClientMetric m;
  m.histogram.sample_count = s.count;
  m.histogram.sample_sum = s.sum;
  uint64_t cumulative = 0;
  for (size_t b = 0; b < s.counts.size(); ++b) {
    cumulative += s.counts[b];
    ClientMetric::Bucket bucket;
    bucket.cumulative_count = cumulative;
    bucket.upper_bound =
        b < s.bounds.size() ? s.bounds[b] : std::numeric_limits<double>::infinity();
    m.histogram.bucket.push_back(bucket);
  }
  f.metric.push_back(std::move(m));
  return f;
}

// One family of `type` with a sample per (label value, value) pair, all under
// the label `label`.
MetricFamily LabeledFamily(const std::string& name, const std::string& help, MetricType type,
                           const std::string& label,
                           const std::vector<std::pair<std::string, double>>& samples) {
  MetricFamily f{name, help, type, {}};
  for (const auto& [value_of_label, value] : samples) {
    f.metric.push_back(Sample(type, value, {{label, value_of_label}}));
  }
  return f;
}

constexpr auto kCounter = MetricType::Counter;
constexpr auto kGauge = MetricType::Gauge;

double Value(const std::atomic<int64_t>& v) { return static_cast<double>(v.load()); }

// Requests, tokens and outcomes of the engine, vLLM's names.
void CollectRequests(const EngineStats& st, std::vector<MetricFamily>* out) {
  out->push_back(Scalar("longctx_num_requests_running",
                        "Requests (generate, score, ingest segments) being stepped by the engine.",
                        kGauge, Value(st.requests_running)));
  out->push_back(Scalar("longctx_num_requests_waiting",
                        "Requests queued behind other work on their session or for a step.", kGauge,
                        Value(st.requests_waiting)));
  out->push_back(HistogramFamily("longctx_time_to_first_token_seconds",
                                 "Generate: time from arrival to the first token.",
                                 st.time_to_first_token));
  out->push_back(HistogramFamily("longctx_inter_token_latency_seconds",
                                 "Generate: time between consecutive output tokens "
                                 "(time per output token).",
                                 st.inter_token_latency));
  out->push_back(HistogramFamily("longctx_e2e_request_latency_seconds",
                                 "Generate: time from arrival to the last token.",
                                 st.e2e_request_latency));
  out->push_back(Scalar("longctx_prompt_tokens_total", "Generate prompt tokens prefilled.",
                        kCounter, Value(st.prompt_tokens_total)));
  out->push_back(Scalar("longctx_generation_tokens_total", "Tokens generated.", kCounter,
                        Value(st.generation_tokens_total)));
  std::vector<std::pair<std::string, double>> success;
  for (int r = 0; r < kNumFinishReasons; ++r) {
    success.emplace_back(FinishReasonName(static_cast<FinishReason>(r)),
                         Value(st.request_success_total[r]));
  }
  out->push_back(LabeledFamily("longctx_request_success_total",
                               "Generate requests finished, by finish reason.", kCounter,
                               "finished_reason", success));
  out->push_back(Scalar("longctx_request_failure_total",
                        "Requests that ended in an error, a cancellation or a deadline.", kCounter,
                        Value(st.request_failure_total)));
  const int64_t total = st.kv_blocks_total.load();
  out->push_back(Scalar("longctx_kv_cache_usage_perc",
                        "Fraction of KV cache blocks in use (1 = full).", kGauge,
                        total > 0 ? static_cast<double>(st.kv_blocks_used.load()) / total : 0));
}

// Per rank of a context-parallel group this server leads; none without one.
void CollectGroup(const EngineStats& st, std::vector<MetricFamily>* out) {
  const int ranks = st.group_ranks.load();
  if (ranks <= 0) return;
  out->push_back(Scalar("longctx_group_ranks",
                        "Ranks of the context-parallel group this server leads.", kGauge, ranks));
  std::vector<std::pair<std::string, double>> homed, held;
  for (int r = 0; r < ranks; ++r) {
    homed.emplace_back(absl::StrCat(r), Value(st.rank_sessions[static_cast<size_t>(r)]));
    held.emplace_back(absl::StrCat(r), Value(st.rank_kv_tokens[static_cast<size_t>(r)]));
  }
  out->push_back(LabeledFamily("longctx_group_rank_sessions",
                               "Sessions homed on each rank of the group (it runs their layers).",
                               kGauge, "rank", homed));
  out->push_back(LabeledFamily("longctx_group_rank_kv_tokens",
                               "KV tokens each rank of the group holds, all sessions.", kGauge,
                               "rank", held));
}

// Sessions: how many, what they ingested and scored, what they hold.
void CollectSessions(const EngineStats& st, const SessionManager& sessions,
                     std::vector<MetricFamily>* out) {
  out->push_back(Scalar("longctx_sessions_active", "Live sessions.", kGauge,
                        static_cast<double>(sessions.size())));
  out->push_back(Scalar("longctx_ingested_tokens_total", "Tokens ingested into sessions.", kCounter,
                        Value(st.ingested_tokens_total)));
  out->push_back(Scalar("longctx_ingested_segments_total", "Segments ingested into sessions.",
                        kCounter, Value(st.ingested_segments_total)));
  out->push_back(Scalar("longctx_scored_tokens_total", "Tokens scored.", kCounter,
                        Value(st.scored_tokens_total)));
  const SessionManager::StateBytes bytes = sessions.TotalStateBytes();
  out->push_back(LabeledFamily(
      "longctx_session_state_bytes",
      "Bytes of session state held, by tier (device: KV cache, host: token logs).", kGauge, "tier",
      {{"device", static_cast<double>(bytes.device)}, {"host", static_cast<double>(bytes.host)}}));
  out->push_back(Scalar("longctx_session_evictions_total",
                        "Sessions removed by the server (TTL expiry).", kCounter,
                        static_cast<double>(sessions.evictions()), {{"reason", "ttl"}}));
}

// Infini-attention memories of windowed sessions; the host-memory budget and
// admission refusals.
void CollectInfini(const EngineStats& st, std::vector<MetricFamily>* out) {
  std::vector<std::pair<std::string, double>> host;
  for (int k = 0; k < kNumHostMemoryKinds; ++k) {
    const auto kind = static_cast<HostMemoryKind>(k);
    host.emplace_back(HostMemoryKindName(kind), static_cast<double>(st.host_memory.used(kind)));
  }
  out->push_back(LabeledFamily("longctx_host_memory_bytes",
                               "Host memory counted against host_memory_budget, by kind.", kGauge,
                               "kind", host));
  out->push_back(Scalar("longctx_host_memory_budget_bytes",
                        "The host_memory_budget (0: not limited).", kGauge,
                        static_cast<double>(st.host_memory.limit())));
  out->push_back(Scalar("longctx_admission_rejections_total",
                        "Engine requests refused at admission (queue bounds, host memory).",
                        kCounter, Value(st.admission_rejections_total)));
  out->push_back(Scalar("longctx_infini_memory_bytes",
                        "Bytes of Infini-attention compressive memory held by all sessions.",
                        kGauge, Value(st.infini_memory_bytes)));
  out->push_back(Scalar("longctx_infini_folded_tokens_total",
                        "Tokens folded into Infini memories as their chunks left the window.",
                        kCounter, Value(st.infini_folded_tokens_total)));
  out->push_back(LabeledFamily("longctx_infini_evictions_total",
                               "Chunks that left a session's Infini window, by overflow policy "
                               "(compress: folded into the memory, slide: dropped).",
                               kCounter, "policy",
                               {{"compress", Value(st.infini_evictions_compress_total)},
                                {"slide", Value(st.infini_evictions_slide_total)}}));
  out->push_back(Scalar("longctx_infini_rejections_total",
                        "Ingest segments refused because a REJECT session's window was full.",
                        kCounter, Value(st.infini_rejections_total)));
}

// Session export and import, and the engine's steps.
void CollectSteps(const EngineStats& st, std::vector<MetricFamily>* out) {
  out->push_back(HistogramFamily("longctx_session_export_duration_seconds",
                                 "Time to export a session.", st.export_seconds));
  out->push_back(HistogramFamily("longctx_session_import_duration_seconds",
                                 "Time to import a session (including its prefill).",
                                 st.import_seconds));
  out->push_back(Scalar("longctx_engine_steps_total", "Engine steps (batched forward passes).",
                        kCounter, Value(st.steps_total)));
  out->push_back(HistogramFamily("longctx_engine_step_duration_seconds",
                                 "One engine step: scheduling, forward pass and sampling.",
                                 st.step_seconds));
  out->push_back(HistogramFamily("longctx_engine_forward_duration_seconds",
                                 "The forward pass of one engine step.", st.forward_seconds));
  out->push_back(HistogramFamily("longctx_engine_decode_forward_duration_seconds",
                                 "The forward pass of engine steps that only decode.",
                                 st.decode_forward_seconds));
  out->push_back(HistogramFamily("longctx_engine_step_tokens",
                                 "Tokens (decode and prefill) in one engine step.",
                                 st.step_batch_tokens));
}

// The durable session store and what recovery did at start.
void CollectStore(const Engine& engine, std::vector<MetricFamily>* out) {
  const SessionStore* store = engine.store();
  if (store == nullptr) return;
  const StoreStats& st = store->stats();
  const RecoveryStats& r = engine.recovery();
  out->push_back(Scalar("longctx_store_bytes",
                        "Bytes of the session store on disk (table files and unflushed log).",
                        kGauge, static_cast<double>(store->DiskBytes())));
  out->push_back(HistogramFamily("longctx_store_commit_duration_seconds",
                                 "One group commit of the session store (with fsync under sync).",
                                 st.commit_seconds));
  out->push_back(Scalar("longctx_store_commits_total",
                        "Group commits written to the session store.", kCounter,
                        Value(st.commits_total)));
  out->push_back(Scalar("longctx_store_write_errors_total",
                        "Session store writes that failed (their segments were not acknowledged).",
                        kCounter, Value(st.write_errors_total)));
  struct Gauge {
    const char* name;
    const char* help;
    const std::atomic<int64_t>& value;
  };
  for (const Gauge& g : {
           Gauge{"longctx_recovery_sessions", "Sessions found in the session store at start.",
                 r.sessions},
           Gauge{"longctx_recovery_sessions_rebuilt", "Recovered sessions whose KV is rebuilt.",
                 r.rebuilt_sessions},
           Gauge{"longctx_recovery_sessions_pending",
                 "Recovered sessions whose KV is still being rebuilt.", r.pending_sessions},
           Gauge{"longctx_recovery_tokens", "Tokens in the recovered sessions' logs.", r.tokens},
           Gauge{"longctx_recovery_tokens_rebuilt",
                 "Tokens of recovered sessions prefilled again so far.", r.rebuilt_tokens},
       }) {
    out->push_back(Scalar(g.name, g.help, kGauge, Value(g.value)));
  }
  out->push_back(Scalar("longctx_sessions_lost_total",
                        "Sessions lost to store damage or that could not be rebuilt.", kCounter,
                        Value(r.lost_sessions)));
}

}  // namespace

// Reads the engine's stats at scrape time.
class EngineCollector final : public prometheus::Collectable {
 public:
  void Attach(const Engine* service, std::string model, std::string backend) {
    absl::MutexLock lock(&mu_);
    service_ = service;
    model_ = std::move(model);
    backend_ = std::move(backend);
  }
  void Detach() {
    absl::MutexLock lock(&mu_);
    service_ = nullptr;
  }

  std::vector<MetricFamily> Collect() const override {
    absl::MutexLock lock(&mu_);
    std::vector<MetricFamily> out;
    if (service_ == nullptr) return out;
    const EngineStats& st = service_->stats();
    out.push_back(Scalar("longctx_model_info", "The served model (value 1).", kGauge, 1,
                         {{"model", model_}, {"backend", backend_}}));
    CollectRequests(st, &out);
    CollectGroup(st, &out);
    CollectSessions(st, service_->sessions(), &out);
    CollectInfini(st, &out);
    CollectSteps(st, &out);
    CollectStore(*service_, &out);
    return out;
  }

 private:
  mutable absl::Mutex mu_;
  const Engine* service_ = nullptr;
  std::string model_, backend_;
};

absl::StatusOr<std::unique_ptr<Metrics>> Metrics::Start(const std::string& address,
                                                        const std::string& version) {
  std::unique_ptr<Metrics> m(new Metrics());
  m->registry_ = std::make_shared<prometheus::Registry>();
  m->engine_ = std::make_shared<EngineCollector>();
  m->rpcs_ = &prometheus::BuildCounter()
                  .Name("longctx_grpc_requests_total")
                  .Help("Finished gRPC calls by method and status code.")
                  .Register(*m->registry_);
  m->unparsable_ = &prometheus::BuildCounter()
                        .Name("longctx_grpc_unparsable_requests_total")
                        .Help("Requests and stream messages that failed to parse, by method.")
                        .Register(*m->registry_);
  m->http_ = &prometheus::BuildCounter()
                  .Name("longctx_http_requests_total")
                  .Help(
                      "Finished requests of the OpenAI-compatible HTTP door by route and HTTP "
                      "status (499: the client went away).")
                  .Register(*m->registry_);
  m->streams_open_ = &prometheus::BuildGauge()
                          .Name("longctx_grpc_streams_open")
                          .Help("Open streaming calls.")
                          .Register(*m->registry_)
                          .Add({});
  m->server_state_ =
      &prometheus::BuildGauge()
           .Name("longctx_server_state")
           .Help("0 starting, 1 serving, 2 draining, 3 broken (a rank of the group is lost).")
           .Register(*m->registry_)
           .Add({});
  prometheus::BuildGauge()
      .Name("longctx_build_info")
      .Help("Build of the server (value 1).")
      .Register(*m->registry_)
      .Add({{"version", version}})
      .Set(1);
  try {
    m->exposer_ = std::make_unique<prometheus::Exposer>(address, 2);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("metrics_listen ", address, ": ", e.what()));
  }
  m->exposer_->RegisterCollectable(m->registry_);
  m->exposer_->RegisterCollectable(m->engine_);
  const auto ports = m->exposer_->GetListeningPorts();
  m->port_ = ports.empty() ? 0 : ports.front();
  return m;
}

Metrics::~Metrics() = default;

void Metrics::AttachEngine(const Engine* service, const std::string& model,
                           const std::string& backend) {
  engine_->Attach(service, model, backend);
}

void Metrics::DetachEngine() { engine_->Detach(); }

void Metrics::RequestUnparsable(const std::string& method) {
  unparsable_->Add({{"method", method}}).Increment();
}

void Metrics::RecordRpc(const std::string& method, grpc::StatusCode code) {
  static const char* kNames[] = {"OK",
                                 "CANCELLED",
                                 "UNKNOWN",
                                 "INVALID_ARGUMENT",
                                 "DEADLINE_EXCEEDED",
                                 "NOT_FOUND",
                                 "ALREADY_EXISTS",
                                 "PERMISSION_DENIED",
                                 "RESOURCE_EXHAUSTED",
                                 "FAILED_PRECONDITION",
                                 "ABORTED",
                                 "OUT_OF_RANGE",
                                 "UNIMPLEMENTED",
                                 "INTERNAL",
                                 "UNAVAILABLE",
                                 "DATA_LOSS",
                                 "UNAUTHENTICATED"};
  const int c = static_cast<int>(code);
  rpcs_->Add({{"method", method}, {"code", c >= 0 && c <= 16 ? kNames[c] : "UNKNOWN"}}).Increment();
}

void Metrics::RecordHttp(const std::string& route, int status) {
  http_->Add({{"route", route}, {"code", absl::StrCat(status)}}).Increment();
}

}  // namespace longctx::server
