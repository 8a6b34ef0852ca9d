#include "clients/soak.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"

namespace longctx::client {

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double pos = q * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(pos);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}

int64_t ReadRssBytes(int pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    absl::string_view rest = line;
    if (!absl::ConsumePrefix(&rest, "VmRSS:")) continue;
    rest = absl::StripAsciiWhitespace(rest);
    absl::ConsumeSuffix(&rest, "kB");
    int64_t kb = 0;
    if (absl::SimpleAtoi(absl::StripAsciiWhitespace(rest), &kb)) return kb * 1024;
  }
  return -1;
}

namespace {

enum Op { kCreate, kIngest, kGenerate, kScore, kNumOps };
constexpr const char* kOpNames[kNumOps] = {"create", "ingest", "generate", "score"};

class Soak {
 public:
  Soak(const SoakOptions& s, const ClientOptions& o, const std::string& doc,
       std::unique_ptr<v1::LongContext::Stub> stub)
      : s_(s), o_(o), doc_(doc), stub_(std::move(stub)) {}

  int Run();

 private:
  void Worker(int i);
  // One session's life: created, ops_per_session operations, deleted.
  void SessionLife(size_t* pos);
  absl::Status Generate(const std::string& id);
  absl::Status Score(const std::string& id, size_t pos);
  // Counts the outcome of `op`, which took `seconds`; true when it succeeded.
  bool Record(Op op, const absl::Status& status, double seconds);
  void Sample();
  void Report() const;
  bool Running() const { return absl::Now() < end_; }

  const SoakOptions& s_;
  const ClientOptions& o_;
  const std::string& doc_;
  const std::unique_ptr<v1::LongContext::Stub> stub_;
  absl::Time start_, end_;
  std::array<std::atomic<int64_t>, kNumOps> ok_{}, exhausted_{}, failed_{};
  mutable std::mutex mu_;  // guards the two vectors below
  std::array<std::vector<double>, kNumOps> seconds_;
  std::vector<std::pair<double, int64_t>> rss_;  // (seconds into the run, bytes)
};

int Soak::Run() {
  start_ = absl::Now();
  end_ = start_ + s_.duration;
  std::thread sampler([this] { Sample(); });
  std::vector<std::thread> workers;
  for (int i = 0; i < s_.sessions; ++i) workers.emplace_back([this, i] { Worker(i); });
  for (auto& t : workers) t.join();
  sampler.join();
  Report();
  int64_t failed = 0;
  for (const auto& f : failed_) failed += f.load();
  return failed > 0 ? 1 : 0;
}

bool Soak::Record(Op op, const absl::Status& status, double seconds) {
  if (status.ok()) {
    ++ok_[op];
    std::lock_guard<std::mutex> lock(mu_);
    seconds_[op].push_back(seconds);
    return true;
  }
  if (status.code() == absl::StatusCode::kResourceExhausted) {
    ++exhausted_[op];
    absl::SleepFor(absl::Milliseconds(200));  // the server asked for a pause
    return false;
  }
  if (++failed_[op] <= 10) {
    std::fprintf(stderr, "%s: %s\n", kOpNames[op], status.ToString().c_str());
  }
  return false;
}

void Soak::Worker(int i) {
  size_t pos = (static_cast<size_t>(i) * 7919u * 64u) % std::max<size_t>(doc_.size(), 1);
  while (Running()) SessionLife(&pos);
}

void Soak::SessionLife(size_t* pos) {
  v1::CreateSessionRequest create;
  create.mutable_labels()->insert({"loadgen", "soak"});
  v1::Session session;
  absl::Time t0 = absl::Now();
  {
    grpc::ClientContext ctx;
    PrepareContext(&ctx, o_);
    const absl::Status s = FromGrpc(stub_->CreateSession(&ctx, create, &session));
    if (!Record(kCreate, s, absl::ToDoubleSeconds(absl::Now() - t0))) return;
  }
  const std::string& id = session.id();
  int64_t seq = 1;
  for (int op = 0; op < s_.ops_per_session && Running(); ++op) {
    t0 = absl::Now();
    if (op % 3 == 0) {
      const absl::string_view text =
          TextStretch(doc_, *pos, static_cast<size_t>(s_.segment_bytes));
      *pos += text.size();
      if (*pos + static_cast<size_t>(s_.segment_bytes) >= doc_.size()) *pos = 0;
      auto r = IngestSegments(stub_.get(), o_, id, {std::string(text)}, seq);
      if (Record(kIngest, r.status(), absl::ToDoubleSeconds(absl::Now() - t0))) ++seq;
    } else {
      // The call first: argument evaluation order is unspecified.
      const Op kind = op % 3 == 1 ? kGenerate : kScore;
      const absl::Status s = kind == kGenerate ? Generate(id) : Score(id, *pos);
      Record(kind, s, absl::ToDoubleSeconds(absl::Now() - t0));
    }
  }
  grpc::ClientContext ctx;
  PrepareContext(&ctx, o_);
  v1::DeleteSessionRequest del;
  del.set_session_id(id);
  google::protobuf::Empty empty;
  stub_->DeleteSession(&ctx, del, &empty);
}

absl::Status Soak::Generate(const std::string& id) {
  v1::GenerateRequest req;
  req.set_session_id(id);
  req.set_prompt("What happens next?");
  req.set_max_tokens(s_.max_tokens);
  return GenerateStream(stub_.get(), o_, req, [](const v1::GenerateChunk&) {}).status();
}

absl::Status Soak::Score(const std::string& id, size_t pos) {
  v1::ScoreRequest req;
  req.set_session_id(id);
  req.set_text(std::string(TextStretch(doc_, pos, static_cast<size_t>(s_.score_bytes))));
  v1::ScoreResponse resp;
  grpc::ClientContext ctx;
  PrepareContext(&ctx, o_, id);
  return FromGrpc(stub_->Score(&ctx, req, &resp));
}

void Soak::Sample() {
  while (Running()) {
    if (s_.server_pid > 0) {
      const int64_t rss = ReadRssBytes(s_.server_pid);
      std::lock_guard<std::mutex> lock(mu_);
      rss_.emplace_back(absl::ToDoubleSeconds(absl::Now() - start_), rss);
    }
    absl::SleepFor(std::min(s_.sample_every, std::max(end_ - absl::Now(), absl::ZeroDuration())));
  }
}

void Soak::Report() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::printf("| operation | ok | RESOURCE_EXHAUSTED | other errors | p50 s | p99 s |\n"
              "|---|---:|---:|---:|---:|---:|\n");
  for (int op = 0; op < kNumOps; ++op) {
    std::printf("| %s | %lld | %lld | %lld | %.3f | %.3f |\n", kOpNames[op],
                static_cast<long long>(ok_[op].load()), static_cast<long long>(exhausted_[op].load()),
                static_cast<long long>(failed_[op].load()), Percentile(seconds_[op], 0.5),
                Percentile(seconds_[op], 0.99));
  }
  if (rss_.empty()) return;
  std::printf("\n| t (s) | server RSS (MiB) |\n|---:|---:|\n");
  const double warm = s_.warmup_fraction * absl::ToDoubleSeconds(s_.duration);
  int64_t lo = INT64_MAX, hi = 0;
  for (const auto& [t, rss] : rss_) {
    std::printf("| %.0f | %.1f |\n", t, static_cast<double>(rss) / (1 << 20));
    if (t >= warm && rss > 0) {
      lo = std::min(lo, rss);
      hi = std::max(hi, rss);
    }
  }
  if (hi > 0) {
    std::printf("\nRSS after warm-up (t >= %.0fs): min %.1f MiB, max %.1f MiB, spread %.2f%%\n",
                warm, static_cast<double>(lo) / (1 << 20), static_cast<double>(hi) / (1 << 20),
                100.0 * static_cast<double>(hi - lo) / static_cast<double>(lo));
  }
}

}  // namespace

int RunSoak(const SoakOptions& soak, const ClientOptions& options, const std::string& doc) {
  auto channel = MakeChannel(options);
  if (!channel.ok()) return std::fprintf(stderr, "%s\n", channel.status().ToString().c_str()), 2;
  Soak run(soak, options, doc, v1::LongContext::NewStub(*channel));
  return run.Run();
}

}  // namespace longctx::client
