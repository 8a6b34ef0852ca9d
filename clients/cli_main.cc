// longctx: command-line client of longctxd.
//
//   longctx [--server=HOST:PORT] [--token=T] [--tls-ca=PEM] COMMAND ...
//
// Commands: info, health, create, get, list, delete, ingest, ask, score,
// export, import, qa. `longctx help` explains each.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "clients/client.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace longctx::client {
namespace {

constexpr char kUsage[] = R"(usage: longctx [global flags] COMMAND [args] [flags]

global flags (also from the environment):
  --server=HOST:PORT   server address           (LONGCTX_SERVER, default localhost:50051)
  --token=TOKEN        bearer token             (LONGCTX_TOKEN)
  --tls-ca=FILE        use TLS, trusting this CA (LONGCTX_TLS_CA)
  --tls-cert=FILE --tls-key=FILE
                       client certificate for mutual TLS (LONGCTX_TLS_CERT, LONGCTX_TLS_KEY)
  --timeout=DURATION   deadline of each call, e.g. 30s, 5m

commands:
  info                          the server's model, attention, limits and build
  health                        the server's health status
  create [--id=ID] [--label=K=V ...] [--ttl=1h] [--raw] [--system=TEXT]
         [--rope] [--window=TOKENS] [--overflow=reject|compress|slide]
         [--sinks=TOKENS]
                                create a session (id: --id, or the server's
                                REPLICA.s-<32 hex>, naming the replica that holds it);
                                prints its id
  get SESSION                   a session's settings and counters
  list [--label=K=V ...] [--page-size=N]
                                your sessions
  delete SESSION                delete a session
  ingest SESSION FILE [--segment-bytes=N] [--first-seq=N]
                                stream a text file ('-' = stdin) into a session,
                                with a progress bar. Its segments are numbered from
                                --first-seq (default: the session's next seq, so the
                                file is appended); those below the session's next seq
                                are already in it and are skipped, so --first-seq=1
                                (and the same --segment-bytes) continues an ingest of
                                the same file that stopped. A dropped stream is
                                resumed from the first unacknowledged segment
  ask SESSION QUESTION [--max-tokens=N] [--temperature=T] [--top-p=P] [--top-k=K]
         [--repetition-penalty=R]
         [--seed=S] [--stop=TEXT ...] [--persist]
                                ask a question; the answer is streamed
  score SESSION TEXT [--per-token]
                                log-probability and perplexity of TEXT after the session
  export SESSION FILE           save a session's state to FILE
  import FILE [--id=ID]         recreate a session from an export
  qa FILE QUESTION [ask flags]  create a session, ingest FILE, ask, delete the session

Every call about a session carries its id in the x-session-id header, by which
the gateway in deploy/envoy routes it to the pod that holds the session (the
replica the id names). A call that reaches another replica fails with
FAILED_PRECONDITION naming the session's home.
)";

struct Args {
  std::vector<std::string> positional;
  std::multimap<std::string, std::string> flags;

  bool Has(const std::string& k) const { return flags.count(k) > 0; }
  std::string Get(const std::string& k, const std::string& def = "") const {
    auto it = flags.find(k);
    return it == flags.end() ? def : it->second;
  }
  std::vector<std::string> All(const std::string& k) const {
    std::vector<std::string> out;
    auto [a, b] = flags.equal_range(k);
    for (auto it = a; it != b; ++it) out.push_back(it->second);
    return out;
  }
};

// Flags that take no value.
bool IsSwitch(const std::string& name) {
  return name == "raw" || name == "rope" || name == "persist" || name == "per-token" ||
         name == "help";
}

absl::StatusOr<Args> Parse(int argc, char** argv) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0 || a == "--") {
      args.positional.push_back(a);
      continue;
    }
    a = a.substr(2);
    const size_t eq = a.find('=');
    if (eq != std::string::npos) {
      args.flags.emplace(a.substr(0, eq), a.substr(eq + 1));
    } else if (IsSwitch(a)) {
      args.flags.emplace(a, "true");
    } else if (i + 1 < argc) {
      args.flags.emplace(a, argv[++i]);
    } else {
      return absl::InvalidArgumentError(absl::StrCat("--", a, " needs a value"));
    }
  }
  return args;
}

std::string Env(const char* name, const std::string& def) {
  const char* v = std::getenv(name);
  return v && *v ? v : def;
}

class Cli {
 public:
  Cli(ClientOptions options, std::shared_ptr<grpc::Channel> channel)
      : options_(std::move(options)), channel_(channel), stub_(v1::LongContext::NewStub(channel)) {}

  absl::Status Run(const std::string& cmd, const Args& a) {
    const auto& p = a.positional;
    auto need = [&](size_t n, const char* what) -> absl::Status {
      if (p.size() < n + 1) {
        return absl::InvalidArgumentError(absl::StrCat("usage: longctx ", cmd, " ", what));
      }
      return absl::OkStatus();
    };
    if (cmd == "info") return Info();
    if (cmd == "health") return Health();
    if (cmd == "create") {
      auto id = Create(a);
      if (!id.ok()) return id.status();
      std::printf("%s\n", id->c_str());
      return absl::OkStatus();
    }
    if (cmd == "get") {
      if (auto s = need(1, "SESSION"); !s.ok()) return s;
      return Get(p[1]);
    }
    if (cmd == "list") return List(a);
    if (cmd == "delete") {
      if (auto s = need(1, "SESSION"); !s.ok()) return s;
      return Delete(p[1], /*quiet=*/false);
    }
    if (cmd == "ingest") {
      if (auto s = need(2, "SESSION FILE"); !s.ok()) return s;
      return Ingest(p[1], p[2], a);
    }
    if (cmd == "ask") {
      if (auto s = need(2, "SESSION QUESTION"); !s.ok()) return s;
      return Ask(p[1], p[2], a);
    }
    if (cmd == "score") {
      if (auto s = need(2, "SESSION TEXT"); !s.ok()) return s;
      return Score(p[1], p[2], a);
    }
    if (cmd == "export") {
      if (auto s = need(2, "SESSION FILE"); !s.ok()) return s;
      return Export(p[1], p[2]);
    }
    if (cmd == "import") {
      if (auto s = need(1, "FILE"); !s.ok()) return s;
      return Import(p[1], a);
    }
    if (cmd == "qa") {
      if (auto s = need(2, "FILE QUESTION"); !s.ok()) return s;
      return Qa(p[1], p[2], a);
    }
    return absl::InvalidArgumentError(absl::StrCat("unknown command '", cmd, "'\n", kUsage));
  }

 private:
  void Prepare(grpc::ClientContext* ctx, const std::string& session_id = {}) {
    PrepareContext(ctx, options_, session_id);
  }

  absl::Status Info() {
    grpc::ClientContext ctx;
    Prepare(&ctx);
    v1::ServerInfo info;
    if (auto s = FromGrpc(stub_->GetServerInfo(&ctx, {}, &info)); !s.ok()) return s;
    const auto& m = info.model();
    const auto& a = info.default_attention();
    const auto& l = info.limits();
    std::printf("server     longctxd %s (%s, %s)\n", info.version().c_str(),
                info.git_commit().c_str(), info.build_type().c_str());
    std::printf("backend    %s\n", info.backend().c_str());
    std::printf(
        "model      %s (%s, %s): %d layers, d_model %d, %d/%d heads, head_dim %d, vocab %d\n",
        m.name().c_str(), m.architecture().c_str(), m.path().c_str(), m.n_layers(), m.d_model(),
        m.n_heads(), m.n_kv_heads(), m.head_dim(), m.vocab_size());
    std::printf("context    trained %d tokens, rope theta %g, chat template %s\n",
                m.context_length(), m.rope_theta(), m.chat_template().c_str());
    if (a.mode() == v1::ATTENTION_MODE_DCA) {
      std::printf("attention  DCA: c=%d C=%d w=%d (chunk length %d)\n", a.pretrain_length(),
                  a.chunk_size(), a.local_window(), a.chunk_size() - a.local_window());
    } else {
      std::printf("attention  RoPE\n");
    }
    std::printf("kv cache   %lld blocks of %d tokens (%lld free), %lld bytes/token\n",
                static_cast<long long>(info.kv_cache().total_blocks()),
                info.kv_cache().block_size(), static_cast<long long>(info.kv_cache().free_blocks()),
                static_cast<long long>(info.kv_cache().bytes_per_token()));
    std::printf(
        "limits     %lld tokens/session, %lld sessions (%lld per tenant), %lld streams,\n"
        "           segments %lld bytes / %lld tokens, max_tokens %lld, messages %lld bytes\n",
        static_cast<long long>(l.max_session_tokens()), static_cast<long long>(l.max_sessions()),
        static_cast<long long>(l.max_sessions_per_tenant()),
        static_cast<long long>(l.max_concurrent_streams()),
        static_cast<long long>(l.max_segment_bytes()),
        static_cast<long long>(l.max_segment_tokens()),
        static_cast<long long>(l.max_generate_tokens()),
        static_cast<long long>(l.max_message_bytes()));
    const std::string mixing =
        info.memory_mixing() ? absl::StrCat("on (gates: ", info.infini_gates(), ")") : "off";
    std::printf("engine     prefill budget %d tokens/step, memory mixing %s, auth %s\n",
                info.prefill_budget_tokens(), mixing.c_str(),
                info.auth_required() ? "required" : "off");
    return absl::OkStatus();
  }

  absl::Status Health() {
    auto stub = grpc::health::v1::Health::NewStub(channel_);
    grpc::ClientContext ctx;
    Prepare(&ctx);
    grpc::health::v1::HealthCheckRequest req;
    grpc::health::v1::HealthCheckResponse resp;
    if (auto s = FromGrpc(stub->Check(&ctx, req, &resp)); !s.ok()) return s;
    std::printf("%s\n",
                grpc::health::v1::HealthCheckResponse::ServingStatus_Name(resp.status()).c_str());
    return resp.status() == grpc::health::v1::HealthCheckResponse::SERVING
               ? absl::OkStatus()
               : absl::UnavailableError("not serving");
  }

  absl::StatusOr<std::string> Create(const Args& a) {
    v1::CreateSessionRequest req;
    // Without --id the server picks one that names its replica, the session's
    // home, by which the gateway routes every later call.
    if (a.Has("id")) req.set_session_id(a.Get("id"));
    for (const std::string& kv : a.All("label")) {
      const size_t eq = kv.find('=');
      if (eq == std::string::npos) return absl::InvalidArgumentError("--label wants KEY=VALUE");
      (*req.mutable_labels())[kv.substr(0, eq)] = kv.substr(eq + 1);
    }
    if (a.Has("ttl")) {
      absl::Duration d;
      if (!absl::ParseDuration(a.Get("ttl"), &d)) return absl::InvalidArgumentError("bad --ttl");
      req.mutable_ttl()->set_seconds(absl::ToInt64Seconds(d));
    }
    if (a.Has("raw")) req.set_prompt_format(v1::PROMPT_FORMAT_RAW);
    if (a.Has("system")) req.set_system_prompt(a.Get("system"));
    if (a.Has("rope")) req.mutable_attention()->set_mode(v1::ATTENTION_MODE_ROPE);
    if (a.Has("window")) {
      int64_t w = 0;
      if (!absl::SimpleAtoi(a.Get("window"), &w)) return absl::InvalidArgumentError("bad --window");
      req.mutable_memory()->set_window_tokens(w);
    }
    if (a.Has("sinks")) {
      int32_t n = 0;
      if (!absl::SimpleAtoi(a.Get("sinks"), &n)) return absl::InvalidArgumentError("bad --sinks");
      req.mutable_memory()->set_sink_tokens(n);
    }
    if (a.Has("overflow")) {
      const std::string o = a.Get("overflow");
      if (o == "reject") {
        req.mutable_memory()->set_overflow(v1::OVERFLOW_POLICY_REJECT);
      } else if (o == "compress") {
        req.mutable_memory()->set_overflow(v1::OVERFLOW_POLICY_COMPRESS);
      } else if (o == "slide") {
        req.mutable_memory()->set_overflow(v1::OVERFLOW_POLICY_SLIDE);
      } else {
        return absl::InvalidArgumentError("--overflow wants reject, compress or slide");
      }
    }
    grpc::ClientContext ctx;
    Prepare(&ctx, req.session_id());
    v1::Session s;
    if (auto st = FromGrpc(stub_->CreateSession(&ctx, req, &s)); !st.ok()) return st;
    return s.id();
  }

  static void PrintSession(const v1::Session& s) {
    std::string labels;
    for (const auto& [k, v] : s.labels())
      absl::StrAppend(&labels, labels.empty() ? "" : ",", k, "=", v);
    const absl::Time expire = absl::FromUnixSeconds(s.expire_time().seconds());
    std::printf("%-48s %9lld tokens %6lld segments  %-5s  expires in %-8s %s%s\n", s.id().c_str(),
                static_cast<long long>(s.tokens()), static_cast<long long>(s.segments()),
                s.attention().mode() == v1::ATTENTION_MODE_DCA ? "dca" : "rope",
                absl::FormatDuration(absl::Trunc(expire - absl::Now(), absl::Seconds(1))).c_str(),
                labels.c_str(), s.recovering() ? "  (recovering after a restart)" : "");
  }

  absl::StatusOr<v1::Session> FetchSession(const std::string& id) {
    grpc::ClientContext ctx;
    Prepare(&ctx, id);
    v1::GetSessionRequest req;
    req.set_session_id(id);
    v1::Session s;
    if (auto st = FromGrpc(stub_->GetSession(&ctx, req, &s)); !st.ok()) return st;
    return s;
  }

  absl::Status Get(const std::string& id) {
    auto got = FetchSession(id);
    if (!got.ok()) return got.status();
    const v1::Session& s = *got;
    PrintSession(s);
    std::printf("  next seq %lld, ingested %lld tokens, state %lld bytes on device, %lld on host\n",
                static_cast<long long>(s.next_seq()), static_cast<long long>(s.ingested_tokens()),
                static_cast<long long>(s.state_bytes().at("device")),
                static_cast<long long>(s.state_bytes().at("host")));
    if (s.memory().overflow() == v1::OVERFLOW_POLICY_COMPRESS ||
        s.memory().overflow() == v1::OVERFLOW_POLICY_SLIDE) {
      const auto mem = s.state_bytes().find("infini_memory");
      std::printf(
          "  window %lld + %d sink tokens, %s: %lld tokens folded, %lld dropped, "
          "memory %lld bytes\n",
          static_cast<long long>(s.memory().window_tokens()), s.memory().sink_tokens(),
          s.memory().overflow() == v1::OVERFLOW_POLICY_COMPRESS ? "compress" : "slide",
          static_cast<long long>(s.folded_tokens()), static_cast<long long>(s.dropped_tokens()),
          static_cast<long long>(mem == s.state_bytes().end() ? 0 : mem->second));
    }
    return absl::OkStatus();
  }

  absl::Status List(const Args& a) {
    v1::ListSessionsRequest req;
    for (const std::string& kv : a.All("label")) {
      const size_t eq = kv.find('=');
      if (eq == std::string::npos) return absl::InvalidArgumentError("--label wants KEY=VALUE");
      (*req.mutable_label_selector())[kv.substr(0, eq)] = kv.substr(eq + 1);
    }
    int size = 100;
    if (a.Has("page-size") && !absl::SimpleAtoi(a.Get("page-size"), &size)) {
      return absl::InvalidArgumentError("bad --page-size");
    }
    req.set_page_size(size);
    int n = 0;
    do {
      grpc::ClientContext ctx;
      Prepare(&ctx);
      v1::ListSessionsResponse resp;
      if (auto st = FromGrpc(stub_->ListSessions(&ctx, req, &resp)); !st.ok()) return st;
      for (const auto& s : resp.sessions()) PrintSession(s), ++n;
      req.set_page_token(resp.next_page_token());
    } while (!req.page_token().empty());
    if (n == 0) std::fprintf(stderr, "no sessions\n");
    return absl::OkStatus();
  }

  absl::Status Delete(const std::string& id, bool quiet) {
    grpc::ClientContext ctx;
    Prepare(&ctx, id);
    v1::DeleteSessionRequest req;
    req.set_session_id(id);
    google::protobuf::Empty e;
    if (auto st = FromGrpc(stub_->DeleteSession(&ctx, req, &e)); !st.ok()) return st;
    if (!quiet) std::fprintf(stderr, "deleted %s\n", id.c_str());
    return absl::OkStatus();
  }

  absl::Status Ingest(const std::string& id, const std::string& path, const Args& a) {
    std::string text;
    if (path == "-") {
      std::stringstream ss;
      ss << std::cin.rdbuf();
      text = ss.str();
    } else {
      std::ifstream in(path, std::ios::binary);
      if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
      text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    int64_t seg_bytes = 4096;
    if (a.Has("segment-bytes") && !absl::SimpleAtoi(a.Get("segment-bytes"), &seg_bytes)) {
      return absl::InvalidArgumentError("bad --segment-bytes");
    }
    auto s = FetchSession(id);
    if (!s.ok()) return s.status();
    int64_t first_seq = s->next_seq();
    if (a.Has("first-seq") &&
        (!absl::SimpleAtoi(a.Get("first-seq"), &first_seq) || first_seq < 1)) {
      return absl::InvalidArgumentError("bad --first-seq (a sequence number, 1 or more)");
    }

    const auto segments = SplitSegments(text, static_cast<size_t>(seg_bytes));
    const bool tty = isatty(2);
    const absl::Time t0 = absl::Now();
    absl::Time last_draw = absl::InfinitePast();
    auto draw = [&](const IngestProgress& p, bool final) {
      const absl::Time now = absl::Now();
      if (!tty || (!final && now - last_draw < absl::Milliseconds(100))) return;
      last_draw = now;
      const double frac = text.empty() ? 1.0 : static_cast<double>(p.bytes) / text.size();
      const double secs = std::max(1e-3, absl::ToDoubleSeconds(now - t0));
      const double rate = p.tokens / secs;
      const int width = 30;
      const int filled = static_cast<int>(frac * width);
      std::string bar(static_cast<size_t>(filled), '#');
      bar.resize(width, '.');
      std::string eta = "--";
      if (frac > 0.01 && !final) {
        eta = absl::FormatDuration(absl::Seconds(std::round(secs * (1 - frac) / frac)));
      }
      std::fprintf(stderr, "\r[%s] %3.0f%%  %s / %s  %lld tokens  %.0f tok/s  eta %s   ",
                   bar.c_str(), 100 * frac, HumanBytes(p.bytes).c_str(),
                   HumanBytes(static_cast<int64_t>(text.size())).c_str(),
                   static_cast<long long>(p.tokens), rate, eta.c_str());
      std::fflush(stderr);
    };
    auto r = IngestDocument(stub_.get(), options_, id, segments, first_seq, s->next_seq(),
                            [&](const IngestProgress& p) { draw(p, false); });
    if (!r.ok()) {
      if (tty) std::fprintf(stderr, "\n");
      return r.status();
    }
    draw(*r, true);
    const double secs = absl::ToDoubleSeconds(absl::Now() - t0);
    std::fprintf(stderr,
                 "%s%lld segments, %lld tokens in %.1fs (%.0f tok/s); %lld already in the session, "
                 "%lld reconnects; acknowledged through seq %lld\n",
                 tty ? "\n" : "", static_cast<long long>(r->segments),
                 static_cast<long long>(r->tokens), secs, r->tokens / std::max(secs, 1e-3),
                 static_cast<long long>(r->skipped), static_cast<long long>(r->reconnects),
                 static_cast<long long>(r->acked_seq));
    return absl::OkStatus();
  }

  static std::string HumanBytes(int64_t b) {
    if (b < 1024) return absl::StrCat(b, " B");
    if (b < 1024 * 1024) return absl::StrFormat("%.1f KiB", b / 1024.0);
    return absl::StrFormat("%.1f MiB", b / 1048576.0);
  }

  absl::Status Ask(const std::string& id, const std::string& question, const Args& a) {
    v1::GenerateRequest req;
    req.set_session_id(id);
    req.set_prompt(question);
    int n = 0;
    if (a.Has("max-tokens")) {
      if (!absl::SimpleAtoi(a.Get("max-tokens"), &n))
        return absl::InvalidArgumentError("bad --max-tokens");
      req.set_max_tokens(n);
    }
    float f = 0;
    if (a.Has("temperature")) {
      if (!absl::SimpleAtof(a.Get("temperature"), &f))
        return absl::InvalidArgumentError("bad --temperature");
      req.mutable_sampling()->set_temperature(f);
    }
    if (a.Has("top-p")) {
      if (!absl::SimpleAtof(a.Get("top-p"), &f)) return absl::InvalidArgumentError("bad --top-p");
      req.mutable_sampling()->set_top_p(f);
    }
    if (a.Has("top-k")) {
      if (!absl::SimpleAtoi(a.Get("top-k"), &n)) return absl::InvalidArgumentError("bad --top-k");
      req.mutable_sampling()->set_top_k(n);
    }
    if (a.Has("repetition-penalty")) {
      if (!absl::SimpleAtof(a.Get("repetition-penalty"), &f))
        return absl::InvalidArgumentError("bad --repetition-penalty");
      req.mutable_sampling()->set_repetition_penalty(f);
    }
    if (a.Has("seed")) {
      uint64_t seed = 0;
      if (!absl::SimpleAtoi(a.Get("seed"), &seed)) return absl::InvalidArgumentError("bad --seed");
      req.mutable_sampling()->set_seed(seed);
    }
    for (const std::string& s : a.All("stop")) req.add_stop(s);
    req.set_persist(a.Has("persist"));
    const absl::Time t0 = absl::Now();
    auto done = GenerateStream(stub_.get(), options_, req, [](const v1::GenerateChunk& c) {
      std::fwrite(c.text().data(), 1, c.text().size(), stdout);
      std::fflush(stdout);
    });
    std::printf("\n");
    std::fflush(stdout);
    if (!done.ok()) return done.status();
    const double ttft =
        done->time_to_first_token().seconds() + done->time_to_first_token().nanos() * 1e-9;
    const double total = absl::ToDoubleSeconds(absl::Now() - t0);
    const int64_t gen = done->usage().generated_tokens();
    std::fprintf(stderr,
                 "-- %s: %lld prompt + %lld generated tokens, first token %.2fs, %.1f tok/s; "
                 "session holds %lld tokens\n",
                 v1::FinishReason_Name(done->finish_reason()).substr(14).c_str(),
                 static_cast<long long>(done->usage().prompt_tokens()), static_cast<long long>(gen),
                 ttft, gen > 1 ? (gen - 1) / std::max(1e-3, total - ttft) : 0.0,
                 static_cast<long long>(done->usage().session_tokens()));
    return absl::OkStatus();
  }

  absl::Status Score(const std::string& id, const std::string& text, const Args& a) {
    v1::ScoreRequest req;
    req.set_session_id(id);
    req.set_text(text);
    req.set_per_token(a.Has("per-token"));
    grpc::ClientContext ctx;
    Prepare(&ctx, id);
    v1::ScoreResponse resp;
    if (auto st = FromGrpc(stub_->Score(&ctx, req, &resp)); !st.ok()) return st;
    for (const auto& t : resp.tokens()) {
      std::printf("%8d %10.4f  %s\n", t.id(), t.logprob(), absl::CEscape(t.text()).c_str());
    }
    std::printf("logprob %.4f over %lld tokens, perplexity %.3f\n", resp.logprob(),
                static_cast<long long>(resp.scored_tokens()), resp.perplexity());
    return absl::OkStatus();
  }

  absl::Status Export(const std::string& id, const std::string& path) {
    grpc::ClientContext ctx;
    Prepare(&ctx, id);
    v1::ExportSessionRequest req;
    req.set_session_id(id);
    auto reader = stub_->ExportSession(&ctx, req);
    std::string data;
    v1::SessionData piece;
    while (reader->Read(&piece)) data += piece.data();
    if (auto st = FromGrpc(reader->Finish()); !st.ok()) return st;
    std::ofstream out(path, std::ios::binary);
    out.write(data.data(), static_cast<std::streamsize>(data.size()));
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
    std::fprintf(stderr, "exported %s (%s) to %s\n", id.c_str(),
                 HumanBytes(static_cast<int64_t>(data.size())).c_str(), path.c_str());
    return absl::OkStatus();
  }

  absl::Status Import(const std::string& path, const Args& a) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
    const std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    grpc::ClientContext ctx;
    Prepare(&ctx, a.Get("id"));
    v1::Session s;
    auto writer = stub_->ImportSession(&ctx, &s);
    for (size_t off = 0; off == 0 || off < data.size(); off += 1 << 20) {
      v1::ImportSessionRequest req;
      if (off == 0) req.set_session_id(a.Get("id"));
      req.set_data(data.substr(off, 1 << 20));
      if (!writer->Write(req)) break;
    }
    writer->WritesDone();
    if (auto st = FromGrpc(writer->Finish()); !st.ok()) return st;
    std::printf("%s\n", s.id().c_str());
    return absl::OkStatus();
  }

  absl::Status Qa(const std::string& path, const std::string& question, const Args& a) {
    Args create;
    auto id = Create(create);
    if (!id.ok()) return id.status();
    std::fprintf(stderr, "session %s\n", id->c_str());
    absl::Status s = Ingest(*id, path, a);
    if (s.ok()) s = Ask(*id, question, a);
    absl::Status d = Delete(*id, /*quiet=*/true);
    return s.ok() ? d : s;
  }

  ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::LongContext::Stub> stub_;
};

int Main(int argc, char** argv) {
  auto args = Parse(argc, argv);
  if (!args.ok()) {
    std::fprintf(stderr, "longctx: %s\n", std::string(args.status().message()).c_str());
    return 2;
  }
  if (args->positional.empty() || args->positional[0] == "help" || args->Has("help")) {
    std::printf("%s", kUsage);
    return args->positional.empty() && !args->Has("help") ? 2 : 0;
  }
  ClientOptions options;
  options.address = args->Get("server", Env("LONGCTX_SERVER", "localhost:50051"));
  options.token = args->Get("token", Env("LONGCTX_TOKEN", ""));
  options.tls_ca = args->Get("tls-ca", Env("LONGCTX_TLS_CA", ""));
  options.tls_cert = args->Get("tls-cert", Env("LONGCTX_TLS_CERT", ""));
  options.tls_key = args->Get("tls-key", Env("LONGCTX_TLS_KEY", ""));
  if (args->Has("timeout") && !absl::ParseDuration(args->Get("timeout"), &options.timeout)) {
    std::fprintf(stderr, "longctx: bad --timeout\n");
    return 2;
  }
  auto channel = MakeChannel(options);
  if (!channel.ok()) {
    std::fprintf(stderr, "longctx: %s\n", std::string(channel.status().message()).c_str());
    return 2;
  }
  Cli cli(options, *channel);
  const std::string cmd = args->positional[0];
  const absl::Status s = cli.Run(cmd, *args);
  if (!s.ok()) {
    std::fprintf(stderr, "longctx %s: %s: %s\n", cmd.c_str(),
                 absl::StatusCodeToString(s.code()).c_str(), std::string(s.message()).c_str());
    return s.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  return 0;
}

}  // namespace
}  // namespace longctx::client

int main(int argc, char** argv) { return longctx::client::Main(argc, argv); }
