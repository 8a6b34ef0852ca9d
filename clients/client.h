// Client helpers over the longctx.v1 API, shared by the `longctx` CLI, the
// load generator and the integration tests: channel set-up, document
// segmentation, streamed ingest with progress, streamed generation.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "longctx/v1/longctx.grpc.pb.h"

namespace longctx::client {

struct ClientOptions {
  std::string address = "localhost:50051";
  std::string token;     // bearer token, if the server requires one
  std::string tls_ca;    // PEM file: use TLS and trust this CA; empty: plaintext
  std::string tls_cert;  // PEM files of a client certificate and key (mTLS)
  std::string tls_key;
  absl::Duration timeout = absl::ZeroDuration();  // per call; zero: none
};

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ClientOptions& options);
// The request metadata that routes a call to the pod holding its session
// (deploy/envoy hashes it onto the ring of pods).
inline constexpr char kSessionIdHeader[] = "x-session-id";

// Sets the deadline and the authorization metadata of a call and, for a call
// about one session, the session routing header.
void PrepareContext(grpc::ClientContext* ctx, const ClientOptions& options,
                    const std::string& session_id = {});

// A fresh session id chosen on the client ("s-" and 16 hex digits), so that a
// session can be created through the gateway with its routing header.
std::string NewSessionId();
absl::Status FromGrpc(const grpc::Status& status);

// Cuts `text` into segments of at most `max_bytes`, preferring paragraph
// breaks, then line breaks, then spaces, and never splitting a UTF-8
// character. Each cut keeps its whitespace at the end of the earlier segment.
std::vector<std::string> SplitSegments(absl::string_view text, size_t max_bytes);

// The stretch of `text` of at most `max_bytes` from about `begin`: it starts
// at the first UTF-8 character at or after `begin` and ends after a
// whitespace break (as SplitSegments cuts), else at a character boundary; so
// it is valid UTF-8 whenever `text` is.
absl::string_view TextStretch(absl::string_view text, size_t begin, size_t max_bytes);

struct IngestProgress {
  int64_t segments = 0;        // acknowledged
  int64_t bytes = 0;           // of acknowledged segments
  int64_t tokens = 0;          // ingested by acknowledged segments
  int64_t session_tokens = 0;  // session position after the last ack
};

// Streams `segments` into a session (seq first_seq, first_seq + 1, ...) on
// one Ingest call, calling `progress` after each ack. DataLoss if the stream
// ends without an error before every segment is acknowledged.
absl::StatusOr<IngestProgress> IngestSegments(
    v1::LongContext::Stub* stub, const ClientOptions& options, const std::string& session_id,
    const std::vector<std::string>& segments, int64_t first_seq,
    const std::function<void(const IngestProgress&)>& progress = nullptr);

// The bytes of an exported session (ExportSession's stream, joined).
absl::StatusOr<std::string> ExportSession(v1::LongContext::Stub* stub, const ClientOptions& options,
                                          const std::string& session_id);

// Runs Generate, calling `on_chunk` for each chunk; returns the final message.
absl::StatusOr<v1::GenerateComplete> GenerateStream(
    v1::LongContext::Stub* stub, const ClientOptions& options, const v1::GenerateRequest& request,
    const std::function<void(const v1::GenerateChunk&)>& on_chunk);

}  // namespace longctx::client
