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

// While alive, the helpers below (on this thread) send `token` as the bearer
// token of their calls.
class AsTenant {
 public:
  explicit AsTenant(std::string token);
  ~AsTenant();
  AsTenant(const AsTenant&) = delete;
  AsTenant& operator=(const AsTenant&) = delete;

 private:
  std::string previous_;
};
// Adds this thread's AsTenant token (if any) to `ctx`.
void PrepareContext(grpc::ClientContext* ctx);

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

// `token`: the bearer token to call with (none when empty).
absl::StatusOr<std::string> Export(v1::LongContext::Stub* stub, const std::string& id,
                                   const std::string& token = "");
// Imports `data` (an export) as session `id`, in two messages.
absl::StatusOr<v1::Session> ImportAs(v1::LongContext::Stub* stub, const std::string& id,
                                     const std::string& data);
// The ids of the caller's sessions (first page of 1000).
std::vector<std::string> ListSessionsOf(v1::LongContext::Stub* stub);

// Runs `command` in `dir` with sh; true on exit status 0.
bool Sh(const std::string& dir, const std::string& command);
std::string ReadText(const std::string& path);
// A throw-away CA in `dir` (ca.pem, ca.key) and, for each of `names`, a
// certificate it signs for 127.0.0.1 and localhost: NAME.pem and NAME.key,
// subject CN=NAME. FAILED_PRECONDITION when the openssl CLI is missing.
absl::Status MakeCertificates(const std::string& dir, const std::vector<std::string>& names);

// One call of `method` ("/pkg.Service/Method") with raw request bytes (each
// of `requests` one message, then half-close), as a client whose bytes need
// not be a valid message: the replies and the status.
struct RawOutcome {
  std::vector<std::string> replies;
  grpc::Status status;
};
RawOutcome RawCall(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                   const std::vector<std::string>& requests);

// A RAW SLIDE or COMPRESS session request with DCA chunks of `chunk_len`
// tokens (C = 2 chunk_len, w = chunk_len), so that small windows overflow
// after a few hundred tokens.
v1::CreateSessionRequest WindowedSession(v1::OverflowPolicy policy, int64_t window, int sinks,
                                         int chunk_len = 64);
// `n` paragraphs of about 60 tokens of plain prose, numbered so that no two repeat.
std::vector<std::string> Paragraphs(int n);

// A loopback TCP port that was free a moment ago (for a server's flags).
int FreePort();

// Proves the engine still works: a fresh session ingests, generates and is
// scored. Adds a gtest failure otherwise.
void ExpectStillServing(Daemon* daemon);

}  // namespace longctx::testing
