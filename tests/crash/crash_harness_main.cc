// longctx-crash-harness: proves the durability promise (docs/service.md
// "Durability") by killing the real server while clients stream into it.
//
// Each trial starts longctxd on a fresh state_dir; K clients each create a
// session and stream a document cut into segments of random sizes (at UTF-8
// boundaries); at a random moment (often in the middle of store writes) the
// server gets SIGKILL (--mode=kill) or SIGTERM (--mode=term), and is started
// again on the same state_dir. Each client then reads its session's next_seq,
// checks that every segment it saw acknowledged is there (next_seq - 1 >=
// acked) and none it never sent is, resumes from next_seq and finishes. At the
// end each session's token log and counters must equal those of a twin
// session fed the same segments without interruption, and Score on both must
// agree. The last line is the result, e.g.
//   crash-harness: mode=kill trials=100 acked_lost=0 mismatches=0 score_max_diff=0.0004
// exit status 0 only when nothing was lost and nothing differs.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "clients/client.h"
#include "engine/session/session_codec.h"
#include "grpc/health/v1/health.grpc.pb.h"

ABSL_FLAG(std::string, server, "", "the longctxd binary");
ABSL_FLAG(std::string, model, "", "model file (default: LONGCTX_MODEL)");
ABSL_FLAG(std::string, mode, "kill", "kill (SIGKILL) or term (SIGTERM)");
ABSL_FLAG(int, trials, 5, "trials");
ABSL_FLAG(int, clients, 3, "concurrent clients, one session each");
ABSL_FLAG(int, doc_bytes, 1500, "bytes of document per client");
ABSL_FLAG(int, min_segment, 80, "smallest segment, bytes");
ABSL_FLAG(int, max_segment, 600, "largest segment, bytes");
ABSL_FLAG(double, max_kill_after, 3.0, "the kill comes within this many seconds");
ABSL_FLAG(std::string, durability, "ack", "the server's durability setting");
ABSL_FLAG(std::string, backend, "cpu", "the server's backend (cpu or cuda)");
ABSL_FLAG(std::string, cpu_weights, "quantized", "the server's cpu_weights (quantized or f32)");
ABSL_FLAG(double, score_tolerance, -1,
          "largest relative difference of Score from the twin's (default: 1e-3 on the CPU "
          "backend with f32 weights; 5e-2 on CUDA, whose bf16 activations bound its logits' "
          "relative error by that, see tests/cuda_model_test.cc, and on the CPU's quantized "
          "path, whose int8 activations round alike: both differ with the prefill's batch "
          "shapes)");
ABSL_FLAG(uint64_t, seed, 1, "random seed");
ABSL_FLAG(std::string, text, "",
          "document file (default: LONGCTX_BOOKS' books, else "
          "scripts/sample_chapter.txt)");
ABSL_FLAG(std::string, work_dir, "/tmp/longctx-crash", "state_dir and logs of the trials");

namespace longctx {
namespace {
namespace fs = std::filesystem;

// A longctxd child process.
class Server {
 public:
  Server(const std::string& dir, int index) : dir_(dir), index_(index) {}
  ~Server() { Kill(SIGKILL); }

  bool Start() {
    const std::string ports = absl::StrCat(dir_, "/ports");
    fs::remove(ports);
    std::vector<std::string> args = {absl::GetFlag(FLAGS_server),
                                     "--listen=127.0.0.1:0",
                                     "--metrics_listen=",
                                     "--port_file=" + ports,
                                     "--model=" + Model(),
                                     "--backend=" + absl::GetFlag(FLAGS_backend),
                                     "--cpu_weights=" + absl::GetFlag(FLAGS_cpu_weights),
                                     "--kv_cache_bytes=256MiB",
                                     "--drain_grace=2s",
                                     "--state_dir=" + dir_ + "/state",
                                     "--durability=" + absl::GetFlag(FLAGS_durability),
                                     "--log_level=warn"};
    pid_ = fork();
    if (pid_ == 0) {
      const std::string log = absl::StrCat(dir_, "/server", index_, ".log");
      const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      setenv("OMP_WAIT_POLICY", "passive", 0);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    return WaitServing(ports);
  }

  void Kill(int sig) {
    if (pid_ <= 0) return;
    kill(pid_, sig);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
  }

  const std::string& address() const { return address_; }

  static std::string Model() {
    std::string m = absl::GetFlag(FLAGS_model);
    if (m.empty() && std::getenv("LONGCTX_MODEL")) m = std::getenv("LONGCTX_MODEL");
    return m;
  }

 private:
  bool WaitServing(const std::string& ports) {
    const absl::Time end = absl::Now() + absl::Minutes(2);
    while (absl::Now() < end) {
      std::ifstream in(ports);
      std::string line;
      if (std::getline(in, line) && line.rfind("grpc=", 0) == 0) {
        address_ = "127.0.0.1:" + line.substr(5);
        client::ClientOptions o;
        o.address = address_;
        auto ch = client::MakeChannel(o);
        if (!ch.ok()) return false;
        auto health = grpc::health::v1::Health::NewStub(*ch);
        grpc::ClientContext ctx;
        ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
        grpc::health::v1::HealthCheckResponse resp;
        if (health->Check(&ctx, {}, &resp).ok() &&
            resp.status() == grpc::health::v1::HealthCheckResponse::SERVING) {
          return true;
        }
      }
      if (waitpid(pid_, nullptr, WNOHANG) == pid_) return false;
      absl::SleepFor(absl::Milliseconds(50));
    }
    return false;
  }

  std::string dir_;
  int index_;
  pid_t pid_ = -1;
  std::string address_;
};

bool IsContinuation(char c) { return (static_cast<uint8_t>(c) & 0xC0) == 0x80; }

// Cuts `text` into segments of random sizes, never inside a UTF-8 character.
std::vector<std::string> RandomSegments(const std::string& text, std::mt19937_64& rng) {
  std::uniform_int_distribution<size_t> size(absl::GetFlag(FLAGS_min_segment),
                                             absl::GetFlag(FLAGS_max_segment));
  std::vector<std::string> out;
  for (size_t at = 0; at < text.size();) {
    size_t end = std::min(text.size(), at + size(rng));
    while (end < text.size() && end > at + 1 && IsContinuation(text[end])) --end;
    out.push_back(text.substr(at, end - at));
    at = end;
  }
  return out;
}

std::string LoadText() {
  std::vector<std::string> paths;
  if (!absl::GetFlag(FLAGS_text).empty()) paths.push_back(absl::GetFlag(FLAGS_text));
  if (const char* books = std::getenv("LONGCTX_BOOKS")) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(books, ec)) paths.push_back(e.path());
  }
  paths.push_back("scripts/sample_chapter.txt");
  for (const auto& p : paths) {
    std::ifstream in(p, std::ios::binary);
    std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (s.size() > 4096) return s;
  }
  return "";
}

struct Totals {
  std::atomic<int64_t> acked_lost{0};  // acknowledged but missing after restart
  std::atomic<int64_t> phantom{0};     // present but never sent
  std::atomic<int64_t> mismatches{0};  // token log or counters differ from the twin
  std::atomic<int64_t> errors{0};      // calls that failed where they must not
  std::atomic<int64_t> acked{0};
  double score_max_diff = 0;
  double score_max_rel = 0;
  absl::Mutex mu;
};

std::unique_ptr<v1::LongContext::Stub> Connect(const std::string& address) {
  client::ClientOptions o;
  o.address = address;
  o.timeout = absl::Minutes(2);
  return v1::LongContext::NewStub(*client::MakeChannel(o));
}

client::ClientOptions Options(const std::string& address) {
  client::ClientOptions o;
  o.address = address;
  o.timeout = absl::Minutes(5);
  return o;
}

absl::StatusOr<v1::Session> Get(const std::string& address, const std::string& id) {
  auto stub = Connect(address);
  grpc::ClientContext ctx;
  client::PrepareContext(&ctx, Options(address), id);
  v1::GetSessionRequest req;
  req.set_session_id(id);
  v1::Session s;
  if (auto st = client::FromGrpc(stub->GetSession(&ctx, req, &s)); !st.ok()) return st;
  return s;
}

absl::Status Create(const std::string& address, const std::string& id) {
  auto stub = Connect(address);
  grpc::ClientContext ctx;
  client::PrepareContext(&ctx, Options(address), id);
  v1::CreateSessionRequest req;
  req.set_session_id(id);
  req.set_prompt_format(v1::PROMPT_FORMAT_RAW);
  v1::Session s;
  return client::FromGrpc(stub->CreateSession(&ctx, req, &s));
}

absl::StatusOr<SessionSnapshot> Export(const std::string& address, const std::string& id) {
  auto stub = Connect(address);
  auto data = client::ExportSession(stub.get(), Options(address), id);
  if (!data.ok()) return data.status();
  return DecodeSessionSnapshot(*data);
}

absl::StatusOr<double> Score(const std::string& address, const std::string& id) {
  auto stub = Connect(address);
  grpc::ClientContext ctx;
  client::PrepareContext(&ctx, Options(address), id);
  v1::ScoreRequest req;
  req.set_session_id(id);
  req.set_text(" and so the story went on, as stories do.");
  v1::ScoreResponse resp;
  if (auto st = client::FromGrpc(stub->Score(&ctx, req, &resp)); !st.ok()) return st;
  return resp.logprob();
}

// One client's session through a trial.
struct Stream {
  std::string id;
  std::vector<std::string> segments;
  std::atomic<int64_t> acked{0};  // highest seq acknowledged before the kill
  bool created = false;
};

void Feed(const std::string& address, Stream* s, int64_t first_seq, bool count_acks) {
  auto stub = Connect(address);
  std::vector<std::string> rest(s->segments.begin() + (first_seq - 1), s->segments.end());
  if (rest.empty()) return;
  (void)client::IngestSegments(stub.get(), Options(address), s->id, rest, first_seq,
                               [&](const client::IngestProgress& p) {
                                 if (count_acks) s->acked.store(first_seq - 1 + p.segments);
                               });
}

// After the restart: checks what survived and finishes the document.
void Resume(const std::string& address, Stream* s, Totals* t) {
  auto got = Get(address, s->id);
  if (!got.ok()) {
    // A session whose creation was acknowledged must be there.
    if (s->created || got.status().code() != absl::StatusCode::kNotFound) {
      std::fprintf(stderr, "session %s: %s\n", s->id.c_str(), got.status().ToString().c_str());
      t->acked_lost += s->acked.load();
      ++t->errors;
      return;
    }
    if (!Create(address, s->id).ok()) ++t->errors;
    got = Get(address, s->id);
    if (!got.ok()) return;
  }
  const int64_t applied = got->next_seq() - 1;
  t->acked += s->acked.load();
  if (applied < s->acked.load()) {
    std::fprintf(stderr, "session %s: %lld acked, %lld recovered\n", s->id.c_str(),
                 static_cast<long long>(s->acked.load()), static_cast<long long>(applied));
    t->acked_lost += s->acked.load() - applied;
  }
  if (applied > static_cast<int64_t>(s->segments.size()) || got->segments() != applied) {
    ++t->phantom;
  }
  Feed(address, s, applied + 1, false);
}

double ScoreTolerance() {
  const double flag = absl::GetFlag(FLAGS_score_tolerance);
  if (flag >= 0) return flag;
  const bool exact =
      absl::GetFlag(FLAGS_backend) == "cpu" && absl::GetFlag(FLAGS_cpu_weights) == "f32";
  return exact ? 1e-3 : 5e-2;
}

void Compare(const std::string& address, Stream* s, Totals* t) {
  const std::string twin = s->id + "-twin";
  if (absl::Status c = Create(address, twin); !c.ok()) {
    std::fprintf(stderr, "session %s: creating its twin: %s\n", s->id.c_str(),
                 c.ToString().c_str());
    return (void)++t->errors;
  }
  Stream copy;
  copy.id = twin;
  copy.segments = s->segments;
  Feed(address, &copy, 1, false);
  auto a = Export(address, s->id);
  auto b = Export(address, twin);
  if (!a.ok() || !b.ok()) {
    std::fprintf(stderr, "session %s: export: %s / %s\n", s->id.c_str(),
                 a.status().ToString().c_str(), b.status().ToString().c_str());
    return (void)++t->errors;
  }
  if (a->tokens != b->tokens || a->applied_seq != b->applied_seq || a->segments != b->segments ||
      a->ingested_tokens != b->ingested_tokens ||
      a->applied_seq != static_cast<int64_t>(s->segments.size())) {
    std::fprintf(stderr,
                 "session %s differs from its twin: %zu vs %zu tokens (%s), seq %lld vs %lld of "
                 "%zu, segments %lld vs %lld\n",
                 s->id.c_str(), a->tokens.size(), b->tokens.size(),
                 a->tokens == b->tokens ? "same" : "different",
                 static_cast<long long>(a->applied_seq), static_cast<long long>(b->applied_seq),
                 s->segments.size(), static_cast<long long>(a->segments),
                 static_cast<long long>(b->segments));
    ++t->mismatches;
  }
  auto sa = Score(address, s->id);
  auto sb = Score(address, twin);
  if (!sa.ok() || !sb.ok()) {
    std::fprintf(stderr, "session %s: score: %s / %s\n", s->id.c_str(),
                 sa.status().ToString().c_str(), sb.status().ToString().c_str());
    return (void)++t->errors;
  }
  const double diff = std::abs(*sa - *sb);
  const double rel = diff / std::max(std::abs(*sb), 1.0);
  absl::MutexLock lock(&t->mu);
  t->score_max_diff = std::max(t->score_max_diff, diff);
  t->score_max_rel = std::max(t->score_max_rel, rel);
  if (rel > ScoreTolerance()) {
    std::fprintf(stderr, "session %s: Score %.6f, twin %.6f\n", s->id.c_str(), *sa, *sb);
    ++t->mismatches;
  }
}

// One trial; false when the server could not be started.
bool Trial(int trial, const std::string& text, std::mt19937_64& rng, Totals* t) {
  const std::string dir = absl::StrCat(absl::GetFlag(FLAGS_work_dir), "/trial", trial);
  fs::remove_all(dir);
  fs::create_directories(dir);
  Server first(dir, 0);
  if (!first.Start()) return false;
  const int k = absl::GetFlag(FLAGS_clients);
  std::vector<std::unique_ptr<Stream>> streams;
  const size_t doc = static_cast<size_t>(absl::GetFlag(FLAGS_doc_bytes));
  for (int c = 0; c < k; ++c) {
    auto s = std::make_unique<Stream>();
    s->id = absl::StrCat("t", trial, "-c", c);
    // The document starts and ends on character boundaries.
    size_t start = std::uniform_int_distribution<size_t>(0, text.size() - doc - 1)(rng);
    size_t end = start + doc;
    while (start > 0 && IsContinuation(text[start])) --start;
    while (end > start + 1 && IsContinuation(text[end])) --end;
    s->segments = RandomSegments(text.substr(start, end - start), rng);
    streams.push_back(std::move(s));
  }
  std::vector<std::thread> threads;
  for (auto& s : streams) {
    threads.emplace_back([&first, s = s.get()] {
      s->created = Create(first.address(), s->id).ok();
      if (s->created) Feed(first.address(), s, 1, true);
    });
  }
  const double after =
      std::uniform_real_distribution<double>(0.05, absl::GetFlag(FLAGS_max_kill_after))(rng);
  absl::SleepFor(absl::Seconds(after));
  first.Kill(absl::GetFlag(FLAGS_mode) == "term" ? SIGTERM : SIGKILL);
  for (auto& th : threads) th.join();
  threads.clear();
  Server second(dir, 1);
  if (!second.Start()) return false;
  for (auto& s : streams)
    threads.emplace_back([&, s = s.get()] { Resume(second.address(), s, t); });
  for (auto& th : threads) th.join();
  threads.clear();
  for (auto& s : streams)
    threads.emplace_back([&, s = s.get()] { Compare(second.address(), s, t); });
  for (auto& th : threads) th.join();
  second.Kill(SIGTERM);
  fs::remove_all(dir + "/state");
  return true;
}

}  // namespace
}  // namespace longctx

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  using longctx::Totals;
  signal(SIGPIPE, SIG_IGN);
  if (absl::GetFlag(FLAGS_server).empty() || longctx::Server::Model().empty()) {
    std::fprintf(stderr, "crash-harness: --server and --model (or LONGCTX_MODEL) are required\n");
    return 2;
  }
  const std::string text = longctx::LoadText();
  if (text.size() < static_cast<size_t>(absl::GetFlag(FLAGS_doc_bytes)) + 2) {
    std::fprintf(stderr, "crash-harness: no document text (--text)\n");
    return 2;
  }
  std::mt19937_64 rng(absl::GetFlag(FLAGS_seed));
  Totals t;
  const absl::Time t0 = absl::Now();
  int done = 0;
  for (int i = 0; i < absl::GetFlag(FLAGS_trials); ++i) {
    if (!longctx::Trial(i, text, rng, &t)) {
      std::fprintf(stderr, "trial %d: the server did not start (logs in %s)\n", i,
                   absl::GetFlag(FLAGS_work_dir).c_str());
      ++t.errors;
      break;
    }
    ++done;
    std::fprintf(stderr, "trial %d: acked_lost=%lld mismatches=%lld\n", i,
                 static_cast<long long>(t.acked_lost.load()),
                 static_cast<long long>(t.mismatches.load()));
  }
  std::printf(
      "crash-harness: mode=%s durability=%s trials=%d clients=%d acked_segments=%lld "
      "acked_lost=%lld phantom=%lld mismatches=%lld errors=%lld score_max_diff=%g "
      "score_max_rel=%g (tolerance %g) seconds=%.0f\n",
      absl::GetFlag(FLAGS_mode).c_str(), absl::GetFlag(FLAGS_durability).c_str(), done,
      absl::GetFlag(FLAGS_clients), static_cast<long long>(t.acked.load()),
      static_cast<long long>(t.acked_lost.load()), static_cast<long long>(t.phantom.load()),
      static_cast<long long>(t.mismatches.load()), static_cast<long long>(t.errors.load()),
      t.score_max_diff, t.score_max_rel, longctx::ScoreTolerance(),
      absl::ToDoubleSeconds(absl::Now() - t0));
  const bool ok = t.acked_lost == 0 && t.phantom == 0 && t.mismatches == 0 && t.errors == 0;
  return ok ? 0 : 1;
}
