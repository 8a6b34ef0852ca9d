#include "server/metrics.h"

#include <exception>

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

MetricFamily Scalar(const std::string& name, const std::string& help, MetricType type, double value,
                    std::vector<ClientMetric::Label> labels = {}) {
  MetricFamily f{name, help, type, {}};
  ClientMetric m;
  m.label = std::move(labels);
  if (type == MetricType::Counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  f.metric.push_back(std::move(m));
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
    const auto c = MetricType::Counter;
    const auto g = MetricType::Gauge;
    out.push_back(Scalar("longctx_model_info", "The served model (value 1).", g, 1,
                         {{"model", model_}, {"backend", backend_}}));
    out.push_back(Scalar("longctx_num_requests_running",
                         "Requests (generate, score, ingest segments) being stepped by the engine.",
                         g, static_cast<double>(st.requests_running.load())));
    out.push_back(Scalar("longctx_num_requests_waiting",
                         "Requests queued behind other work on their session or for a step.", g,
                         static_cast<double>(st.requests_waiting.load())));
    out.push_back(HistogramFamily("longctx_time_to_first_token_seconds",
                                  "Generate: time from arrival to the first token.",
                                  st.time_to_first_token));
    out.push_back(HistogramFamily("longctx_inter_token_latency_seconds",
                                  "Generate: time between consecutive output tokens "
                                  "(time per output token).",
                                  st.inter_token_latency));
    out.push_back(HistogramFamily("longctx_e2e_request_latency_seconds",
                                  "Generate: time from arrival to the last token.",
                                  st.e2e_request_latency));
    out.push_back(Scalar("longctx_prompt_tokens_total", "Generate prompt tokens prefilled.", c,
                         static_cast<double>(st.prompt_tokens_total.load())));
    out.push_back(Scalar("longctx_generation_tokens_total", "Tokens generated.", c,
                         static_cast<double>(st.generation_tokens_total.load())));
    MetricFamily success{
        "longctx_request_success_total", "Generate requests finished, by finish reason.", c, {}};
    for (int r = 0; r < kNumFinishReasons; ++r) {
      ClientMetric m;
      m.label = {{"finished_reason", FinishReasonName(static_cast<FinishReason>(r))}};
      m.counter.value = static_cast<double>(st.request_success_total[r].load());
      success.metric.push_back(std::move(m));
    }
    out.push_back(std::move(success));
    out.push_back(Scalar("longctx_request_failure_total",
                         "Requests that ended in an error, a cancellation or a deadline.", c,
                         static_cast<double>(st.request_failure_total.load())));
    const int64_t total = st.kv_blocks_total.load();
    out.push_back(Scalar("longctx_kv_cache_usage_perc",
                         "Fraction of KV cache blocks in use (1 = full).", g,
                         total > 0 ? static_cast<double>(st.kv_blocks_used.load()) / total : 0));
    if (const int ranks = st.group_ranks.load(); ranks > 0) {
      out.push_back(Scalar("longctx_group_ranks",
                           "Ranks of the context-parallel group this server leads.", g, ranks));
      MetricFamily homed{"longctx_group_rank_sessions",
                         "Sessions homed on each rank of the group (it runs their layers).",
                         g,
                         {}};
      MetricFamily held{"longctx_group_rank_kv_tokens",
                        "KV tokens each rank of the group holds, all sessions.", g, {}};
      for (int r = 0; r < ranks; ++r) {
        ClientMetric m;
        m.label = {{"rank", absl::StrCat(r)}};
        m.gauge.value = static_cast<double>(st.rank_sessions[static_cast<size_t>(r)].load());
        homed.metric.push_back(m);
        m.gauge.value = static_cast<double>(st.rank_kv_tokens[static_cast<size_t>(r)].load());
        held.metric.push_back(std::move(m));
      }
      out.push_back(std::move(homed));
      out.push_back(std::move(held));
    }
    const SessionManager& sessions = service_->sessions();
    out.push_back(Scalar("longctx_sessions_active", "Live sessions.", g,
                         static_cast<double>(sessions.size())));
    out.push_back(Scalar("longctx_ingested_tokens_total", "Tokens ingested into sessions.", c,
                         static_cast<double>(st.ingested_tokens_total.load())));
    out.push_back(Scalar("longctx_ingested_segments_total", "Segments ingested into sessions.", c,
                         static_cast<double>(st.ingested_segments_total.load())));
    out.push_back(Scalar("longctx_scored_tokens_total", "Tokens scored.", c,
                         static_cast<double>(st.scored_tokens_total.load())));
    const SessionManager::StateBytes bytes = sessions.TotalStateBytes();
    MetricFamily state{"longctx_session_state_bytes",
                       "Bytes of session state held, by tier (device: KV cache, host: token logs).",
                       g,
                       {}};
    for (const auto& [tier, v] :
         {std::pair<const char*, int64_t>{"device", bytes.device}, {"host", bytes.host}}) {
      ClientMetric m;
      m.label = {{"tier", tier}};
      m.gauge.value = static_cast<double>(v);
      state.metric.push_back(std::move(m));
    }
    out.push_back(std::move(state));
    out.push_back(Scalar("longctx_session_evictions_total",
                         "Sessions removed by the server (TTL expiry).", c,
                         static_cast<double>(sessions.evictions()), {{"reason", "ttl"}}));
    out.push_back(Scalar("longctx_infini_memory_bytes",
                         "Bytes of Infini-attention compressive memory held by all sessions.", g,
                         static_cast<double>(st.infini_memory_bytes.load())));
    out.push_back(Scalar("longctx_infini_folded_tokens_total",
                         "Tokens folded into Infini memories as their chunks left the window.", c,
                         static_cast<double>(st.infini_folded_tokens_total.load())));
    MetricFamily evictions{"longctx_infini_evictions_total",
                           "Chunks that left a session's Infini window, by overflow policy "
                           "(compress: folded into the memory, slide: dropped).",
                           c,
                           {}};
    for (const auto& [policy, v] :
         {std::pair<const char*, int64_t>{"compress", st.infini_evictions_compress_total.load()},
          {"slide", st.infini_evictions_slide_total.load()}}) {
      ClientMetric m;
      m.label = {{"policy", policy}};
      m.counter.value = static_cast<double>(v);
      evictions.metric.push_back(std::move(m));
    }
    out.push_back(std::move(evictions));
    out.push_back(Scalar("longctx_infini_rejections_total",
                         "Ingest segments refused because a REJECT session's window was full.", c,
                         static_cast<double>(st.infini_rejections_total.load())));
    out.push_back(HistogramFamily("longctx_session_export_duration_seconds",
                                  "Time to export a session.", st.export_seconds));
    out.push_back(HistogramFamily("longctx_session_import_duration_seconds",
                                  "Time to import a session (including its prefill).",
                                  st.import_seconds));
    out.push_back(Scalar("longctx_engine_steps_total", "Engine steps (batched forward passes).", c,
                         static_cast<double>(st.steps_total.load())));
    out.push_back(HistogramFamily("longctx_engine_step_duration_seconds",
                                  "One engine step: scheduling, forward pass and sampling.",
                                  st.step_seconds));
    out.push_back(HistogramFamily("longctx_engine_forward_duration_seconds",
                                  "The forward pass of one engine step.", st.forward_seconds));
    out.push_back(HistogramFamily("longctx_engine_decode_forward_duration_seconds",
                                  "The forward pass of engine steps that only decode.",
                                  st.decode_forward_seconds));
    out.push_back(HistogramFamily("longctx_engine_step_tokens",
                                  "Tokens (decode and prefill) in one engine step.",
                                  st.step_batch_tokens));
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
  m->streams_open_ = &prometheus::BuildGauge()
                          .Name("longctx_grpc_streams_open")
                          .Help("Open streaming calls.")
                          .Register(*m->registry_)
                          .Add({});
  m->server_state_ = &prometheus::BuildGauge()
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

}  // namespace longctx::server
