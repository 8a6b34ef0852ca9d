// The server's protobuf edge: every conversion between longctx.v1 messages and
// the engine's native types, in both directions. No logic beyond mapping
// fields; validation happens in the engine, with the proto field names in its
// messages. The few checks here are those only the message shape can answer
// (an unset oneof, an unknown enum value), and their errors name the field.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/engine.h"
#include "google/protobuf/duration.pb.h"
#include "google/protobuf/timestamp.pb.h"
#include "longctx/v1/longctx.pb.h"
#include "server/build_info.h"
#include "server/config.h"

namespace longctx::server {

void ToProto(absl::Time t, google::protobuf::Timestamp* out);
void ToProto(absl::Duration d, google::protobuf::Duration* out);
absl::StatusOr<absl::Duration> FromProto(const google::protobuf::Duration& d, const char* field);

// --- server info
void ToProto(const DcaConfig& a, v1::AttentionConfig* out);
// The server's limits as the configuration sets them.
void ToProto(const ServerConfig& config, v1::Limits* out);
// Everything GetServerInfo reports: the build, the model and engine, the
// configured limits and the KV cache's free blocks right now.
void ToProto(const Engine& engine, const ServerConfig& config, const BuildInfo& build,
             bool auth_required, absl::Time start_time, v1::ServerInfo* out);

// --- sessions
void ToProto(const SessionInfo& info, v1::Session* out);
absl::StatusOr<SessionRequest> FromProto(const v1::CreateSessionRequest& req);
std::map<std::string, std::string> LabelSelector(const v1::ListSessionsRequest& req);
void ToProto(const Engine::ListResult& page, v1::ListSessionsResponse* out);
// The id and labels of an import, from its first message; the caller appends
// the data of every message.
ImportInput FromProto(const v1::ImportSessionRequest& first);

// --- ingest
// The segment of an Ingest message, its text moved out of `req`.
absl::StatusOr<SegmentInput> TakeSegment(v1::IngestRequest* req);
void ToProto(const IngestAck& ack, v1::IngestResponse* out);

// --- generate
// Sampling fields with proto3 defaults resolved (top_p unset = 1).
GenerateInput FromProto(const v1::GenerateRequest& req);
// Adds a chunk's text and ids to `out` (chunks merged while a write is out).
void AppendToProto(const std::string& text, const std::vector<int32_t>& ids,
                   v1::GenerateChunk* out);
v1::FinishReason ToProto(FinishReason r);
void ToProto(const GenerateSummary& summary, v1::GenerateComplete* out);

// --- score
absl::StatusOr<ScoreInput> FromProto(const v1::ScoreRequest& req);
// `per_token`: each token with its text (decoded by `tokenizer`) and logprob.
void ToProto(const ScoreOutput& score, bool per_token, const Tokenizer& tokenizer,
             v1::ScoreResponse* out);

}  // namespace longctx::server
