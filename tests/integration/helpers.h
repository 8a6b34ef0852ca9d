// Small synchronous wrappers over the longctx.v1 API for the integration tests.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "longctx/v1/longctx.grpc.pb.h"
#include "tests/integration/daemon.h"

namespace longctx::testing {

absl::StatusOr<v1::Session> CreateSession(v1::LongContext::Stub* stub,
                                          v1::CreateSessionRequest req = {});
absl::StatusOr<v1::Session> GetSession(v1::LongContext::Stub* stub, const std::string& id);
absl::Status DeleteSession(v1::LongContext::Stub* stub, const std::string& id);

v1::IngestRequest Segment(int64_t seq, std::string text, const std::string& session_id = "");

struct IngestOutcome {
  std::vector<v1::IngestResponse> acks;
  grpc::Status status;
};
// Sends `requests` on one Ingest stream (all of them, then half-close) and
// collects the acks and the final status.
IngestOutcome Ingest(v1::LongContext::Stub* stub, const std::vector<v1::IngestRequest>& requests);
// Ingests `texts` as seq first_seq.. on one stream; fails on any error.
absl::StatusOr<int64_t> IngestTexts(v1::LongContext::Stub* stub, const std::string& session_id,
                                    const std::vector<std::string>& texts, int64_t first_seq = 1);

struct GenerateOutcome {
  std::string text;
  std::vector<int32_t> ids;
  int chunks = 0;
  std::optional<v1::GenerateComplete> complete;
  grpc::Status status;
};
// Runs Generate; `after_first_chunk` (if set) runs once with the call's
// context, e.g. to cancel it.
GenerateOutcome Generate(
    v1::LongContext::Stub* stub, const v1::GenerateRequest& req,
    absl::Duration timeout = absl::ZeroDuration(),
    const std::function<void(grpc::ClientContext*)>& after_first_chunk = nullptr);

absl::StatusOr<v1::ScoreResponse> Score(v1::LongContext::Stub* stub, const std::string& id,
                                        const std::string& text, bool per_token = false);

absl::StatusOr<std::string> Export(v1::LongContext::Stub* stub, const std::string& id);

// A RAW SLIDE or COMPRESS session request with DCA chunks of `chunk_len`
// tokens (C = 2 chunk_len, w = chunk_len), so that small windows overflow
// after a few hundred tokens.
v1::CreateSessionRequest WindowedSession(v1::OverflowPolicy policy, int64_t window, int sinks,
                                         int chunk_len = 64);
// `n` paragraphs of about 60 tokens of plain prose, numbered so that no two repeat.
std::vector<std::string> Paragraphs(int n);

// Proves the engine still works: a fresh session ingests, generates and is
// scored. Adds a gtest failure otherwise.
void ExpectStillServing(Daemon* daemon);

}  // namespace longctx::testing
