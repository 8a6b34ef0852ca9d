#include "clients/client.h"

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"

namespace longctx::client {

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ClientOptions& options) {
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (options.tls_ca.empty()) {
    creds = grpc::InsecureChannelCredentials();
  } else {
    auto read = [](const std::string& path, std::string* out) -> absl::Status {
      std::ifstream in(path, std::ios::binary);
      if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read ", path));
      out->assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
      return absl::OkStatus();
    };
    grpc::SslCredentialsOptions ssl;
    if (auto s = read(options.tls_ca, &ssl.pem_root_certs); !s.ok()) return s;
    if (options.tls_cert.empty() != options.tls_key.empty()) {
      return absl::InvalidArgumentError("a client certificate needs both --tls-cert and --tls-key");
    }
    if (!options.tls_cert.empty()) {
      if (auto s = read(options.tls_cert, &ssl.pem_cert_chain); !s.ok()) return s;
      if (auto s = read(options.tls_key, &ssl.pem_private_key); !s.ok()) return s;
    }
    creds = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  return grpc::CreateCustomChannel(options.address, creds, args);
}

void PrepareContext(grpc::ClientContext* ctx, const ClientOptions& options,
                    const std::string& session_id) {
  if (options.timeout > absl::ZeroDuration()) {
    ctx->set_deadline(absl::ToChronoTime(absl::Now() + options.timeout));
  }
  if (!options.token.empty()) ctx->AddMetadata("authorization", "Bearer " + options.token);
  if (!session_id.empty()) ctx->AddMetadata(kSessionIdHeader, session_id);
}

absl::Status FromGrpc(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

namespace {

bool IsContinuationByte(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

// Where to end a piece of at most `max_bytes` taken from the start of `text`
// (longer than that): after a paragraph break, a line break or a space in its
// last three quarters, else at the start of a UTF-8 character.
size_t CutPoint(absl::string_view text, size_t max_bytes) {
  const absl::string_view window = text.substr(0, max_bytes);
  for (absl::string_view sep : {"\n\n", "\n", " "}) {
    const size_t at = window.rfind(sep);
    if (at != absl::string_view::npos && at >= max_bytes / 4) return at + sep.size();
  }
  size_t cut = max_bytes;
  // Back up to the start of a UTF-8 character.
  while (cut > 0 && IsContinuationByte(text[cut])) --cut;
  return cut == 0 ? max_bytes : cut;
}

}  // namespace

std::vector<std::string> SplitSegments(absl::string_view text, size_t max_bytes) {
  std::vector<std::string> out;
  if (max_bytes < 8) max_bytes = 8;
  while (!text.empty()) {
    if (text.size() <= max_bytes) {
      out.emplace_back(text);
      break;
    }
    const size_t cut = CutPoint(text, max_bytes);
    out.emplace_back(text.substr(0, cut));
    text.remove_prefix(cut);
  }
  return out;
}

absl::string_view TextStretch(absl::string_view text, size_t begin, size_t max_bytes) {
  begin = std::min(begin, text.size());
  while (begin < text.size() && IsContinuationByte(text[begin])) ++begin;
  text.remove_prefix(begin);
  if (text.size() <= max_bytes || max_bytes < 8) return text.substr(0, max_bytes);
  return text.substr(0, CutPoint(text, max_bytes));
}

absl::StatusOr<IngestProgress> IngestSegments(
    v1::LongContext::Stub* stub, const ClientOptions& options, const std::string& session_id,
    absl::Span<const std::string> segments, int64_t first_seq,
    const std::function<void(const IngestProgress&)>& progress) {
  grpc::ClientContext ctx;
  PrepareContext(&ctx, options, session_id);
  auto stream = stub->Ingest(&ctx);
  // Segments go out on their own thread while acks are read here; the server
  // reads ahead a few segments, so the engine never waits for the network.
  std::thread writer([&] {
    for (size_t i = 0; i < segments.size(); ++i) {
      v1::IngestRequest req;
      if (i == 0) req.set_session_id(session_id);
      req.mutable_segment()->set_seq(first_seq + static_cast<int64_t>(i));
      req.mutable_segment()->set_text(segments[i]);
      if (!stream->Write(req)) break;
    }
    stream->WritesDone();
  });
  IngestProgress p;
  v1::IngestResponse ack;
  while (stream->Read(&ack)) {
    ++p.segments;
    const size_t i = static_cast<size_t>(ack.seq() - first_seq);
    if (i < segments.size()) p.bytes += static_cast<int64_t>(segments[i].size());
    p.tokens += ack.tokens_ingested();
    p.session_tokens = ack.session_tokens();
    p.acked_seq = ack.seq();
    if (progress) progress(p);
  }
  writer.join();
  const grpc::Status status = stream->Finish();
  if (!status.ok()) return FromGrpc(status);
  if (p.segments < static_cast<int64_t>(segments.size())) {
    // The server reads a message it cannot parse (e.g. text that is not
    // UTF-8, which a proto3 string may not hold) as the end of the stream.
    return absl::DataLossError(absl::StrFormat(
        "the server ended the stream after %d of %d segments: segment %d was not applied "
        "(is the text valid UTF-8?)",
        p.segments, segments.size(), first_seq + p.segments));
  }
  return p;
}

namespace {

// Codes after which an ingest may succeed if tried again (clients/python's
// TRANSIENT_CODES).
bool Transient(const absl::Status& s) {
  return absl::IsUnavailable(s) || absl::IsAborted(s) || absl::IsInternal(s) || absl::IsUnknown(s);
}

// After a transient failure: waits with backoff until GetSession answers, and
// checks that the session still holds every segment through `acked_seq`.
// `last_progress` is when an ack last came.
absl::Status AwaitSession(v1::LongContext::Stub* stub, const ClientOptions& options,
                          const std::string& id, int64_t acked_seq, const IngestRetry& retry,
                          absl::Time last_progress, absl::Status cause) {
  absl::Duration delay = retry.initial_backoff;
  while (true) {
    if (absl::Now() - last_progress > retry.max_elapsed) {
      return absl::DeadlineExceededError(absl::StrCat("no progress for ",
                                                      absl::FormatDuration(retry.max_elapsed),
                                                      "; the last error: ", cause.ToString()));
    }
    absl::SleepFor(delay);
    delay = std::min(2 * delay, retry.max_backoff);
    grpc::ClientContext ctx;
    PrepareContext(&ctx, options, id);
    v1::GetSessionRequest req;
    req.set_session_id(id);
    v1::Session session;
    const absl::Status got = FromGrpc(stub->GetSession(&ctx, req, &session));
    if (Transient(got)) {
      cause = got;
      continue;
    }
    if (!got.ok()) return got;
    if (session.next_seq() <= acked_seq) {
      return absl::DataLossError(
          absl::StrCat("session ", id, " holds segments up to seq ", session.next_seq() - 1,
                       " only, but segments through seq ", acked_seq, " had been acknowledged"));
    }
    return absl::OkStatus();
  }
}

}  // namespace

absl::StatusOr<IngestProgress> IngestDocument(
    v1::LongContext::Stub* stub, const ClientOptions& options, const std::string& session_id,
    const std::vector<std::string>& segments, int64_t first_seq, int64_t next_seq,
    const std::function<void(const IngestProgress&)>& progress, IngestRetry retry) {
  IngestProgress total;
  const int64_t count = static_cast<int64_t>(segments.size());
  total.skipped = std::clamp<int64_t>(next_seq - first_seq, 0, count);
  total.acked_seq = first_seq + total.skipped - 1;
  absl::Time last_progress = absl::Now();
  while (true) {
    // Everything from the first segment not known to be in the session.
    const int64_t begin = total.acked_seq + 1 - first_seq;
    if (begin >= count) return total;
    const IngestProgress before = total;
    auto r = IngestSegments(stub, options, session_id, absl::MakeConstSpan(segments).subspan(begin),
                            first_seq + begin, [&](const IngestProgress& p) {
                              total.segments = before.segments + p.segments;
                              total.bytes = before.bytes + p.bytes;
                              total.tokens = before.tokens + p.tokens;
                              total.session_tokens = p.session_tokens;
                              total.acked_seq = p.acked_seq;
                              if (progress) progress(total);
                            });
    if (r.ok()) return total;
    if (!Transient(r.status())) return r.status();
    if (total.acked_seq > before.acked_seq) last_progress = absl::Now();
    absl::Status held =
        AwaitSession(stub, options, session_id, total.acked_seq, retry, last_progress, r.status());
    if (!held.ok()) return held;
    ++total.reconnects;
  }
}

absl::StatusOr<std::string> ExportSession(v1::LongContext::Stub* stub, const ClientOptions& options,
                                          const std::string& session_id) {
  grpc::ClientContext ctx;
  PrepareContext(&ctx, options, session_id);
  v1::ExportSessionRequest req;
  req.set_session_id(session_id);
  auto reader = stub->ExportSession(&ctx, req);
  std::string data;
  v1::SessionData piece;
  while (reader->Read(&piece)) data += piece.data();
  if (absl::Status st = FromGrpc(reader->Finish()); !st.ok()) return st;
  return data;
}

absl::StatusOr<v1::GenerateComplete> GenerateStream(
    v1::LongContext::Stub* stub, const ClientOptions& options, const v1::GenerateRequest& request,
    const std::function<void(const v1::GenerateChunk&)>& on_chunk) {
  grpc::ClientContext ctx;
  PrepareContext(&ctx, options, request.session_id());
  auto reader = stub->Generate(&ctx, request);
  v1::GenerateResponse msg;
  v1::GenerateComplete complete;
  bool completed = false;
  while (reader->Read(&msg)) {
    if (msg.has_chunk()) {
      if (on_chunk) on_chunk(msg.chunk());
    } else if (msg.has_complete()) {
      complete = msg.complete();
      completed = true;
    }
  }
  const grpc::Status status = reader->Finish();
  if (!status.ok()) return FromGrpc(status);
  if (!completed) return absl::InternalError("the stream ended without a completion message");
  return complete;
}

}  // namespace longctx::client
