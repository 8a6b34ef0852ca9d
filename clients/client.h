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
#include "absl/types/span.h"
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
// (deploy/envoy routes by the home replica the id names, server/routing.h).
inline constexpr char kSessionIdHeader[] = "x-session-id";

// Sets the deadline and the authorization metadata of a call and, for a call
// about one session, the session routing header.
void PrepareContext(grpc::ClientContext* ctx, const ClientOptions& options,
                    const std::string& session_id = {});

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
  int64_t acked_seq = 0;       // the last seq acknowledged (or found in the session)
  int64_t skipped = 0;         // segments already in the session, not sent (IngestDocument)
  int64_t reconnects = 0;      // streams opened again after a failure (IngestDocument)
};

// Streams `segments` into a session (seq first_seq, first_seq + 1, ...) on
// one Ingest call, calling `progress` after each ack. DataLoss if the stream
// ends without an error before every segment is acknowledged.
absl::StatusOr<IngestProgress> IngestSegments(
    v1::LongContext::Stub* stub, const ClientOptions& options, const std::string& session_id,
    absl::Span<const std::string> segments, int64_t first_seq,
    const std::function<void(const IngestProgress&)>& progress = nullptr);

// Backoff between attempts of IngestDocument (clients/python's RetryPolicy).
struct IngestRetry {
  absl::Duration initial_backoff = absl::Milliseconds(200);
  absl::Duration max_backoff = absl::Seconds(5);
  absl::Duration max_elapsed = absl::Minutes(2);  // without progress, then give up
};

// Streams a document's `segments`, numbered from `first_seq`, into a session
// whose next_seq is `next_seq`, as clients/python's Session.ingest does
// (docs/service.md "Ingest"). Segments below next_seq are already in the
// session and are skipped, so running the same document again from
// first_seq 1 continues where an earlier run stopped. A transient failure
// (UNAVAILABLE, ABORTED, INTERNAL, UNKNOWN) is retried with backoff: once
// GetSession answers and shows that the session still holds every
// acknowledged segment, the segments are sent again from the first
// unacknowledged one (not from next_seq, which may still count segments of
// the broken stream); the server acknowledges any it applied meanwhile as
// duplicates. NOT_FOUND or DATA_LOSS when the session is gone or lost
// acknowledged segments; DEADLINE_EXCEEDED after retry.max_elapsed without
// progress. `progress` is called after each ack.
absl::StatusOr<IngestProgress> IngestDocument(
    v1::LongContext::Stub* stub, const ClientOptions& options, const std::string& session_id,
    const std::vector<std::string>& segments, int64_t first_seq, int64_t next_seq,
    const std::function<void(const IngestProgress&)>& progress = nullptr, IngestRetry retry = {});

// The bytes of an exported session (ExportSession's stream, joined).
absl::StatusOr<std::string> ExportSession(v1::LongContext::Stub* stub, const ClientOptions& options,
                                          const std::string& session_id);

// Runs Generate, calling `on_chunk` for each chunk; returns the final message.
absl::StatusOr<v1::GenerateComplete> GenerateStream(
    v1::LongContext::Stub* stub, const ClientOptions& options, const v1::GenerateRequest& request,
    const std::function<void(const v1::GenerateChunk&)>& on_chunk);

}  // namespace longctx::client
