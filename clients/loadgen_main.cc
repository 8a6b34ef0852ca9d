// longctx-loadgen: N concurrent sessions against a running longctxd.
//
// Phase 1: every session ingests the same amount of a document at once
// (aggregate ingest tokens/s). Phase 2: every session asks questions at once
// (time to first token, inter-token latency, generation tokens/s), all
// measured at the client. With --metrics it also reads the server's engine
// timings and reports the server overhead per generated token: client
// inter-token latency against the engine's forward time per step.
//
//   longctx-loadgen --server=localhost:50051 --document=book.txt --sessions=8
//       --doc-bytes=20000 --questions=2 --max-tokens=32 [--metrics=localhost:9090]
//       [--background-ingest=BYTES]   (an extra session ingests meanwhile)
//       [--keep-sessions=true]        (sessions stay in the server afterwards)
//
// --mode=soak instead runs clients/soak.h: --sessions sessions of mixed
// ingest / generate / score for --duration, sampling the RSS of
// --server-pid:
//   longctx-loadgen --mode=soak --document=book.txt --sessions=64 --duration=10m
//       --server-pid=PID [--segment-bytes=2000] [--max-tokens=8] [--ops-per-session=30]
//
// The metrics are read over HTTP with libcurl.
#include <curl/curl.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "clients/client.h"
#include "clients/soak.h"

namespace longctx::client {
namespace {

struct Options {
  ClientOptions client;
  std::string mode = "phases";  // phases | soak
  SoakOptions soak;
  std::string document;
  std::string metrics;
  int sessions = 4;
  int64_t doc_bytes = 16384;
  int64_t segment_bytes = 2048;
  int questions = 2;
  int max_tokens = 32;
  // Bytes of the document one extra session ingests during the ask phase, to
  // show what a long ingest does to the askers' latency. 0: none.
  int64_t background_ingest = 0;
  // Leave the sessions in the server (a restart's recovery then has them).
  bool keep_sessions = false;
};

size_t AppendBody(char* data, size_t size, size_t n, void* body) {
  static_cast<std::string*>(body)->append(data, size * n);
  return size * n;
}

// GET http://host:port/metrics, returning "name value" pairs of unlabeled
// samples (histogram _sum/_count included); none when it cannot be read.
std::map<std::string, double> Scrape(const std::string& address) {
  std::map<std::string, double> out;
  std::unique_ptr<CURL, decltype(&curl_easy_cleanup)> curl(curl_easy_init(), &curl_easy_cleanup);
  if (curl == nullptr) return out;
  const std::string url = absl::StrCat("http://", address, "/metrics");
  std::string body;
  curl_easy_setopt(curl.get(), CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl.get(), CURLOPT_WRITEFUNCTION, AppendBody);
  curl_easy_setopt(curl.get(), CURLOPT_WRITEDATA, &body);
  curl_easy_setopt(curl.get(), CURLOPT_NOSIGNAL, 1L);  // called from a worker thread
  if (curl_easy_perform(curl.get()) != CURLE_OK) return out;
  for (absl::string_view line : absl::StrSplit(body, '\n')) {
    if (line.empty() || line[0] == '#' || line.find('{') != absl::string_view::npos) continue;
    std::vector<std::string> parts = absl::StrSplit(line, ' ');
    double v = 0;
    if (parts.size() == 2 && absl::SimpleAtod(parts[1], &v)) out[parts[0]] = v;
  }
  return out;
}

// One answer as the client saw it.
struct AnswerTimes {
  bool got_token = false;
  double ttft = 0;          // seconds to the first chunk with tokens
  std::vector<double> itl;  // seconds between tokens
};

// Times the chunks of a streamed answer.
class AnswerClock {
 public:
  void OnChunk(const v1::GenerateChunk& c) {
    const absl::Time now = absl::Now();
    if (c.token_ids_size() == 0) return;
    if (!times_.got_token) {
      times_.ttft = absl::ToDoubleSeconds(now - start_);
      times_.got_token = true;
      // The chunk may carry several tokens; the later ones came after the first.
      for (int k = 1; k < c.token_ids_size(); ++k) times_.itl.push_back(0);
    } else {
      const double gap = absl::ToDoubleSeconds(now - last_) / c.token_ids_size();
      for (int k = 0; k < c.token_ids_size(); ++k) times_.itl.push_back(gap);
    }
    last_ = now;
  }
  AnswerTimes Take() { return std::move(times_); }

 private:
  const absl::Time start_ = absl::Now();
  absl::Time last_ = start_;
  AnswerTimes times_;
};

// The two phases over N sessions, one thread each, and the report.
class LoadGen {
 public:
  LoadGen(const Options& o, std::string doc, std::unique_ptr<v1::LongContext::Stub> stub)
      : o_(o), doc_(std::move(doc)), stub_(std::move(stub)), sync_(o.sessions) {}

  // Returns the exit status: 1 if any call failed.
  int Run();

 private:
  // The background ingest runs from the start of the ask phase until it is done.
  void BackgroundIngest();
  // Session `i`: ingest, ask, delete, in step with the other sessions.
  void Session(int i);
  // The stretch of the document session `i` reads, as segments.
  std::vector<std::string> SegmentsOf(int i) const;
  void Ask(int i, const std::string& session_id, int q);
  // The new session's id; empty (and counted as an error) if it failed.
  std::string CreateSession(const v1::CreateSessionRequest& req);
  void DeleteSession(const std::string& id);
  void Report();
  // The engine's step timings over the ask phase, from the two scrapes.
  void ReportEngine();

  const Options& o_;
  const std::string doc_;
  const std::unique_ptr<v1::LongContext::Stub> stub_;
  std::barrier<> sync_;
  absl::Notification ask_phase_;
  std::atomic<int> errors_{0};

  std::mutex mu_;  // guards the measurements below while the sessions run
  std::vector<double> ttft_, itl_;
  int64_t ingested_ = 0, generated_ = 0;

  // Written by session 0 (or the background thread) only.
  absl::Time ingest_start_, ingest_end_, ask_start_, ask_end_;
  std::map<std::string, double> before_, after_;
  double background_tokens_ = 0, background_s_ = 0;
};

int LoadGen::Run() {
  std::thread background;
  if (o_.background_ingest > 0) background = std::thread([this] { BackgroundIngest(); });
  std::vector<std::thread> threads;
  for (int i = 0; i < o_.sessions; ++i) threads.emplace_back([this, i] { Session(i); });
  for (auto& t : threads) t.join();
  if (background.joinable()) {
    if (!ask_phase_.HasBeenNotified()) ask_phase_.Notify();  // the askers failed early
    background.join();
  }
  Report();
  return errors_.load() ? 1 : 0;
}

std::string LoadGen::CreateSession(const v1::CreateSessionRequest& req) {
  grpc::ClientContext ctx;
  PrepareContext(&ctx, o_.client);
  v1::Session session;
  if (!stub_->CreateSession(&ctx, req, &session).ok()) ++errors_;
  return session.id();
}

void LoadGen::DeleteSession(const std::string& id) {
  grpc::ClientContext ctx;
  PrepareContext(&ctx, o_.client);
  v1::DeleteSessionRequest del;
  del.set_session_id(id);
  google::protobuf::Empty e;
  stub_->DeleteSession(&ctx, del, &e);
}

void LoadGen::BackgroundIngest() {
  const std::string id = CreateSession(v1::CreateSessionRequest());
  if (id.empty()) return;
  const auto segments =
      SplitSegments(TextStretch(doc_, 0, static_cast<size_t>(o_.background_ingest)), 16384);
  ask_phase_.WaitForNotification();
  const absl::Time t0 = absl::Now();
  auto r = IngestSegments(stub_.get(), o_.client, id, segments, 1);
  background_s_ = absl::ToDoubleSeconds(absl::Now() - t0);
  if (r.ok()) {
    background_tokens_ = static_cast<double>(r->tokens);
  } else {
    ++errors_;
    std::fprintf(stderr, "background ingest: %s\n", r.status().ToString().c_str());
  }
  DeleteSession(id);
}

std::vector<std::string> LoadGen::SegmentsOf(int i) const {
  // Each session reads a different stretch of the document.
  const size_t bytes = static_cast<size_t>(o_.doc_bytes);
  const size_t begin =
      doc_.size() > bytes ? (static_cast<size_t>(i) * 7919u * 64u) % (doc_.size() - bytes) : 0;
  // Both ends on character boundaries: a cut inside one is not UTF-8.
  return SplitSegments(TextStretch(doc_, begin, bytes), static_cast<size_t>(o_.segment_bytes));
}

void LoadGen::Session(int i) {
  v1::CreateSessionRequest create;
  create.mutable_labels()->insert({"loadgen", "1"});
  const std::string id = CreateSession(create);
  const auto segments = SegmentsOf(i);
  sync_.arrive_and_wait();
  if (i == 0) ingest_start_ = absl::Now();
  sync_.arrive_and_wait();
  auto r = IngestSegments(stub_.get(), o_.client, id, segments, 1);
  sync_.arrive_and_wait();
  if (i == 0) {
    ingest_end_ = absl::Now();
    if (!o_.metrics.empty()) before_ = Scrape(o_.metrics);
    ask_start_ = absl::Now();
    ask_phase_.Notify();
  }
  if (!r.ok()) {
    ++errors_;
    std::fprintf(stderr, "ingest: %s\n", r.status().ToString().c_str());
  }
  sync_.arrive_and_wait();
  for (int q = 0; q < o_.questions; ++q) Ask(i, id, q);
  sync_.arrive_and_wait();
  if (i == 0) {
    ask_end_ = absl::Now();
    if (!o_.metrics.empty()) after_ = Scrape(o_.metrics);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (r.ok()) ingested_ += r->tokens;
  }
  if (!o_.keep_sessions) DeleteSession(id);
}

void LoadGen::Ask(int i, const std::string& session_id, int q) {
  v1::GenerateRequest req;
  req.set_session_id(session_id);
  req.set_prompt(q % 2 ? "Who are the main characters so far?"
                       : "Summarize what happens in this text.");
  req.set_max_tokens(o_.max_tokens);
  req.mutable_sampling()->set_seed(static_cast<uint64_t>(i));
  AnswerClock clock;
  auto done = GenerateStream(stub_.get(), o_.client, req,
                             [&](const v1::GenerateChunk& c) { clock.OnChunk(c); });
  const AnswerTimes t = clock.Take();
  std::lock_guard<std::mutex> lock(mu_);
  if (!done.ok()) {
    ++errors_;
    std::fprintf(stderr, "generate: %s\n", done.status().ToString().c_str());
    return;
  }
  if (t.got_token) ttft_.push_back(t.ttft);
  itl_.insert(itl_.end(), t.itl.begin(), t.itl.end());
  generated_ += done->usage().generated_tokens();
}

void LoadGen::Report() {
  const double ingest_s = absl::ToDoubleSeconds(ingest_end_ - ingest_start_);
  const double ask_s = absl::ToDoubleSeconds(ask_end_ - ask_start_);
  std::printf(
      "| sessions | ingest tok/s | TTFT p50 s | TTFT p99 s | ITL p50 ms | ITL p99 ms | "
      "gen tok/s | errors |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  std::printf("| %d | %.0f | %.3f | %.3f | %.1f | %.1f | %.1f | %d |\n", o_.sessions,
              ingested_ / std::max(ingest_s, 1e-9), Percentile(ttft_, 0.5), Percentile(ttft_, 0.99),
              1e3 * Percentile(itl_, 0.5), 1e3 * Percentile(itl_, 0.99),
              generated_ / std::max(ask_s, 1e-9), errors_.load());
  std::printf("ingested %lld tokens in %.1fs; generated %lld tokens in %.1fs\n",
              static_cast<long long>(ingested_), ingest_s, static_cast<long long>(generated_),
              ask_s);
  if (o_.background_ingest > 0) {
    std::printf("background ingest during the ask phase: %.0f tokens in %.1fs (%.0f tok/s)\n",
                background_tokens_, background_s_,
                background_tokens_ / std::max(background_s_, 1e-9));
  }
  if (!before_.empty() && !after_.empty()) ReportEngine();
}

void LoadGen::ReportEngine() {
  auto mean = [&](const std::string& name) {
    const double n = after_[name + "_count"] - before_[name + "_count"];
    return n > 0 ? (after_[name + "_sum"] - before_[name + "_sum"]) / n : 0.0;
  };
  const double steps = after_["longctx_engine_steps_total"] - before_["longctx_engine_steps_total"];
  const double step = mean("longctx_engine_step_duration_seconds");
  const double fwd = mean("longctx_engine_forward_duration_seconds");
  const double decode = mean("longctx_engine_decode_forward_duration_seconds");
  // Tokens after the first of each answer come from decode steps.
  double itl_sum = 0;
  size_t later = 0;
  for (double x : itl_) {
    if (x > 0) {
      itl_sum += x;
      ++later;
    }
  }
  const double itl_mean = itl_sum / static_cast<double>(std::max<size_t>(later, 1));
  std::printf(
      "engine, ask phase: %.0f steps; forward %.2f ms/step, whole step %.2f ms "
      "(scheduling and sampling %+.2f%%); decode-only forward %.2f ms\n",
      steps, 1e3 * fwd, 1e3 * step, 100 * (step - fwd) / std::max(fwd, 1e-12), 1e3 * decode);
  if (o_.background_ingest > 0) {
    // Ingest pieces share the askers' steps: their latency is the step time.
    std::printf("client inter-token latency %.2f ms = engine step with prefill %.2f ms\n",
                1e3 * itl_mean, 1e3 * step);
  } else {
    std::printf(
        "server overhead per generated token: client inter-token latency %.2f ms vs "
        "decode forward %.2f ms: %+.2f%%\n",
        1e3 * itl_mean, 1e3 * decode, 100 * (itl_mean - decode) / std::max(decode, 1e-12));
  }
}

int Run(const Options& o) {
  std::ifstream in(o.document, std::ios::binary);
  if (!in) return std::fprintf(stderr, "cannot read --document %s\n", o.document.c_str()), 2;
  std::string doc((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (o.mode == "soak") {
    SoakOptions soak = o.soak;
    soak.sessions = o.sessions;
    soak.segment_bytes = o.segment_bytes;
    soak.max_tokens = o.max_tokens;
    return RunSoak(soak, o.client, doc);
  }
  auto channel = MakeChannel(o.client);
  if (!channel.ok()) return std::fprintf(stderr, "%s\n", channel.status().ToString().c_str()), 2;
  LoadGen gen(o, std::move(doc), v1::LongContext::NewStub(*channel));
  return gen.Run();
}

// Sets the flag `k` to `v`; false if the flag is unknown or its value bad.
bool SetFlag(const std::string& k, const std::string& v, Options* o) {
  for (const auto& [name, text] : {std::pair{"server", &o->client.address},
                                   {"token", &o->client.token},
                                   {"document", &o->document},
                                   {"metrics", &o->metrics}}) {
    if (k == name) {
      *text = v;
      return true;
    }
  }
  if (k == "sessions") return absl::SimpleAtoi(v, &o->sessions) && o->sessions > 0;
  if (k == "doc-bytes") return absl::SimpleAtoi(v, &o->doc_bytes) && o->doc_bytes > 0;
  if (k == "segment-bytes") return absl::SimpleAtoi(v, &o->segment_bytes) && o->segment_bytes > 0;
  if (k == "questions") return absl::SimpleAtoi(v, &o->questions) && o->questions >= 0;
  if (k == "max-tokens") return absl::SimpleAtoi(v, &o->max_tokens) && o->max_tokens > 0;
  if (k == "keep-sessions") return absl::SimpleAtob(v, &o->keep_sessions);
  if (k == "mode") return (o->mode = v) == "phases" || v == "soak";
  if (k == "duration") return absl::ParseDuration(v, &o->soak.duration);
  if (k == "server-pid") return absl::SimpleAtoi(v, &o->soak.server_pid);
  if (k == "ops-per-session") {
    return absl::SimpleAtoi(v, &o->soak.ops_per_session) && o->soak.ops_per_session > 0;
  }
  if (k == "background-ingest") {
    return absl::SimpleAtoi(v, &o->background_ingest) && o->background_ingest >= 0;
  }
  return false;
}

}  // namespace
}  // namespace longctx::client

int main(int argc, char** argv) {
  longctx::client::Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const size_t eq = a.find('=');
    if (a.rfind("--", 0) != 0 || eq == std::string::npos) {
      std::fprintf(stderr,
                   "usage: longctx-loadgen --document=FILE [--server=H:P] [--sessions=N] "
                   "[--doc-bytes=N] [--segment-bytes=N] [--questions=N] [--max-tokens=N] "
                   "[--metrics=H:P] [--token=T] [--background-ingest=BYTES] "
                   "[--mode=phases|soak] [--duration=10m] [--server-pid=PID] "
                   "[--ops-per-session=N] [--keep-sessions=true]\n");
      return 2;
    }
    if (!longctx::client::SetFlag(a.substr(2, eq - 2), a.substr(eq + 1), &o)) {
      return std::fprintf(stderr, "bad flag %s\n", a.c_str()), 2;
    }
  }
  if (o.document.empty()) return std::fprintf(stderr, "--document is required\n"), 2;
  // Once, before any thread uses libcurl.
  curl_global_init(CURL_GLOBAL_DEFAULT);
  const int status = longctx::client::Run(o);
  curl_global_cleanup();
  return status;
}
