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
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cstdio>
#include <fstream>
#include <map>
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

namespace longctx::client {
namespace {

struct Options {
  ClientOptions client;
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
};

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double pos = q * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(pos);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}

// GET http://host:port/metrics, returning "name value" pairs of unlabeled
// samples (histogram _sum/_count included).
std::map<std::string, double> Scrape(const std::string& address) {
  std::map<std::string, double> out;
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) return out;
  const std::string host = address.substr(0, colon), port = address.substr(colon + 1);
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &res) != 0) return out;
  const int fd = socket(res->ai_family, res->ai_socktype, res->ai_protocol);
  if (fd < 0 || connect(fd, res->ai_addr, res->ai_addrlen) != 0) {
    if (fd >= 0) close(fd);
    freeaddrinfo(res);
    return out;
  }
  freeaddrinfo(res);
  const std::string req = "GET /metrics HTTP/1.0\r\nHost: " + host + "\r\n\r\n";
  if (write(fd, req.data(), req.size()) < 0) {
    close(fd);
    return out;
  }
  std::string body;
  char buf[65536];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) body.append(buf, static_cast<size_t>(n));
  close(fd);
  for (absl::string_view line : absl::StrSplit(body, '\n')) {
    if (line.empty() || line[0] == '#' || line.find('{') != absl::string_view::npos) continue;
    std::vector<std::string> parts = absl::StrSplit(line, ' ');
    double v = 0;
    if (parts.size() == 2 && absl::SimpleAtod(parts[1], &v)) out[parts[0]] = v;
  }
  return out;
}

int Run(const Options& o) {
  std::ifstream in(o.document, std::ios::binary);
  if (!in) return std::fprintf(stderr, "cannot read --document %s\n", o.document.c_str()), 2;
  const std::string doc((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto channel = MakeChannel(o.client);
  if (!channel.ok()) return std::fprintf(stderr, "%s\n", channel.status().ToString().c_str()), 2;
  auto stub = v1::LongContext::NewStub(*channel);

  std::mutex mu;
  std::vector<double> ttft, itl, e2e;
  int64_t ingested = 0, generated = 0;
  std::atomic<int> errors{0};
  absl::Time ingest_start, ingest_end, ask_start, ask_end;
  std::barrier sync(o.sessions, []() noexcept {});
  std::map<std::string, double> before, after;

  // The background ingest runs from the start of the ask phase until it is done.
  absl::Notification ask_phase;
  double background_tokens = 0, background_s = 0;
  std::thread background;
  if (o.background_ingest > 0) {
    background = std::thread([&] {
      v1::Session bg;
      grpc::ClientContext ctx;
      PrepareContext(&ctx, o.client);
      if (!stub->CreateSession(&ctx, v1::CreateSessionRequest(), &bg).ok()) {
        ++errors;
        return;
      }
      const auto segments = SplitSegments(
          absl::string_view(doc).substr(0, static_cast<size_t>(o.background_ingest)), 16384);
      ask_phase.WaitForNotification();
      const absl::Time t0 = absl::Now();
      auto r = IngestSegments(stub.get(), o.client, bg.id(), segments, 1);
      background_s = absl::ToDoubleSeconds(absl::Now() - t0);
      if (r.ok()) {
        background_tokens = static_cast<double>(r->tokens);
      } else {
        ++errors;
        std::fprintf(stderr, "background ingest: %s\n", r.status().ToString().c_str());
      }
      grpc::ClientContext del_ctx;
      PrepareContext(&del_ctx, o.client);
      v1::DeleteSessionRequest del;
      del.set_session_id(bg.id());
      google::protobuf::Empty e;
      stub->DeleteSession(&del_ctx, del, &e);
    });
  }

  auto worker = [&](int i) {
    v1::CreateSessionRequest create;
    create.mutable_labels()->insert({"loadgen", "1"});
    v1::Session session;
    {
      grpc::ClientContext ctx;
      PrepareContext(&ctx, o.client);
      if (!stub->CreateSession(&ctx, create, &session).ok()) ++errors;
    }
    // Each session reads a different stretch of the document.
    const size_t start = doc.size() > static_cast<size_t>(o.doc_bytes)
                             ? (static_cast<size_t>(i) * 7919u * 64u) %
                                   (doc.size() - static_cast<size_t>(o.doc_bytes))
                             : 0;
    size_t begin = start;
    while (begin < doc.size() && begin > 0 &&
           (static_cast<unsigned char>(doc[begin]) & 0xC0) == 0x80)
      ++begin;
    const auto segments =
        SplitSegments(absl::string_view(doc).substr(begin, static_cast<size_t>(o.doc_bytes)),
                      static_cast<size_t>(o.segment_bytes));
    sync.arrive_and_wait();
    if (i == 0) ingest_start = absl::Now();
    sync.arrive_and_wait();
    auto r = IngestSegments(stub.get(), o.client, session.id(), segments, 1);
    sync.arrive_and_wait();
    if (i == 0) {
      ingest_end = absl::Now();
      if (!o.metrics.empty()) before = Scrape(o.metrics);
      ask_start = absl::Now();
      ask_phase.Notify();
    }
    if (!r.ok()) {
      ++errors;
      std::fprintf(stderr, "ingest: %s\n", r.status().ToString().c_str());
    }
    sync.arrive_and_wait();
    for (int q = 0; q < o.questions; ++q) {
      v1::GenerateRequest req;
      req.set_session_id(session.id());
      req.set_prompt(q % 2 ? "Who are the main characters so far?"
                           : "Summarize what happens in this text.");
      req.set_max_tokens(o.max_tokens);
      req.mutable_sampling()->set_seed(static_cast<uint64_t>(i));
      const absl::Time t0 = absl::Now();
      absl::Time last = t0;
      bool first = true;
      std::vector<double> my_itl;
      double my_ttft = 0;
      auto done = GenerateStream(stub.get(), o.client, req, [&](const v1::GenerateChunk& c) {
        const absl::Time now = absl::Now();
        if (c.token_ids_size() == 0) return;
        if (first) {
          my_ttft = absl::ToDoubleSeconds(now - t0);
          first = false;
          // The chunk may carry several tokens; the later ones came after the first.
          for (int k = 1; k < c.token_ids_size(); ++k) my_itl.push_back(0);
        } else {
          const double gap = absl::ToDoubleSeconds(now - last) / c.token_ids_size();
          for (int k = 0; k < c.token_ids_size(); ++k) my_itl.push_back(gap);
        }
        last = now;
      });
      const double total = absl::ToDoubleSeconds(absl::Now() - t0);
      std::lock_guard<std::mutex> lock(mu);
      if (!done.ok()) {
        ++errors;
        std::fprintf(stderr, "generate: %s\n", done.status().ToString().c_str());
        continue;
      }
      if (!first) ttft.push_back(my_ttft);
      itl.insert(itl.end(), my_itl.begin(), my_itl.end());
      e2e.push_back(total);
      generated += done->usage().generated_tokens();
    }
    sync.arrive_and_wait();
    if (i == 0) {
      ask_end = absl::Now();
      if (!o.metrics.empty()) after = Scrape(o.metrics);
    }
    {
      std::lock_guard<std::mutex> lock(mu);
      if (r.ok()) ingested += r->tokens;
    }
    grpc::ClientContext ctx;
    PrepareContext(&ctx, o.client);
    v1::DeleteSessionRequest del;
    del.set_session_id(session.id());
    google::protobuf::Empty e;
    stub->DeleteSession(&ctx, del, &e);
  };
  std::vector<std::thread> threads;
  for (int i = 0; i < o.sessions; ++i) threads.emplace_back(worker, i);
  for (auto& t : threads) t.join();
  if (background.joinable()) {
    if (!ask_phase.HasBeenNotified()) ask_phase.Notify();  // the askers failed early
    background.join();
  }

  const double ingest_s = absl::ToDoubleSeconds(ingest_end - ingest_start);
  const double ask_s = absl::ToDoubleSeconds(ask_end - ask_start);
  std::printf(
      "| sessions | ingest tok/s | TTFT p50 s | TTFT p99 s | ITL p50 ms | ITL p99 ms | "
      "gen tok/s | errors |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  std::printf("| %d | %.0f | %.3f | %.3f | %.1f | %.1f | %.1f | %d |\n", o.sessions,
              ingested / std::max(ingest_s, 1e-9), Percentile(ttft, 0.5), Percentile(ttft, 0.99),
              1e3 * Percentile(itl, 0.5), 1e3 * Percentile(itl, 0.99),
              generated / std::max(ask_s, 1e-9), errors.load());
  std::printf("ingested %lld tokens in %.1fs; generated %lld tokens in %.1fs\n",
              static_cast<long long>(ingested), ingest_s, static_cast<long long>(generated), ask_s);
  if (o.background_ingest > 0) {
    std::printf("background ingest during the ask phase: %.0f tokens in %.1fs (%.0f tok/s)\n",
                background_tokens, background_s, background_tokens / std::max(background_s, 1e-9));
  }
  if (!before.empty() && !after.empty()) {
    auto mean = [&](const std::string& name) {
      const double n = after[name + "_count"] - before[name + "_count"];
      return n > 0 ? (after[name + "_sum"] - before[name + "_sum"]) / n : 0.0;
    };
    const double steps = after["longctx_engine_steps_total"] - before["longctx_engine_steps_total"];
    const double step = mean("longctx_engine_step_duration_seconds");
    const double fwd = mean("longctx_engine_forward_duration_seconds");
    const double decode = mean("longctx_engine_decode_forward_duration_seconds");
    // Tokens after the first of each answer come from decode steps.
    std::vector<double> later;
    for (double x : itl) {
      if (x > 0) later.push_back(x);
    }
    double itl_mean = 0;
    for (double x : later) itl_mean += x;
    itl_mean /= std::max<size_t>(later.size(), 1);
    std::printf(
        "engine, ask phase: %.0f steps; forward %.2f ms/step, whole step %.2f ms "
        "(scheduling and sampling %+.2f%%); decode-only forward %.2f ms\n",
        steps, 1e3 * fwd, 1e3 * step, 100 * (step - fwd) / std::max(fwd, 1e-12), 1e3 * decode);
    if (o.background_ingest > 0) {
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
  return errors.load() ? 1 : 0;
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
                   "[--metrics=H:P] [--token=T] [--background-ingest=BYTES]\n");
      return 2;
    }
    const std::string k = a.substr(2, eq - 2), v = a.substr(eq + 1);
    bool ok = true;
    if (k == "server")
      o.client.address = v;
    else if (k == "token")
      o.client.token = v;
    else if (k == "document")
      o.document = v;
    else if (k == "metrics")
      o.metrics = v;
    else if (k == "sessions")
      ok = absl::SimpleAtoi(v, &o.sessions) && o.sessions > 0;
    else if (k == "doc-bytes")
      ok = absl::SimpleAtoi(v, &o.doc_bytes) && o.doc_bytes > 0;
    else if (k == "segment-bytes")
      ok = absl::SimpleAtoi(v, &o.segment_bytes) && o.segment_bytes > 0;
    else if (k == "questions")
      ok = absl::SimpleAtoi(v, &o.questions) && o.questions >= 0;
    else if (k == "max-tokens")
      ok = absl::SimpleAtoi(v, &o.max_tokens) && o.max_tokens > 0;
    else if (k == "background-ingest")
      ok = absl::SimpleAtoi(v, &o.background_ingest) && o.background_ingest >= 0;
    else
      ok = false;
    if (!ok) return std::fprintf(stderr, "bad flag %s\n", a.c_str()), 2;
  }
  if (o.document.empty()) return std::fprintf(stderr, "--document is required\n"), 2;
  return longctx::client::Run(o);
}
