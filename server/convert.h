// Conversions between longctx.v1 messages and the engine's native types. No
// logic beyond mapping fields; validation happens in the engine, with the
// proto field names in its messages.
#pragma once

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/engine.h"
#include "google/protobuf/duration.pb.h"
#include "google/protobuf/timestamp.pb.h"
#include "longctx/v1/longctx.pb.h"

namespace longctx::server {

void ToProto(absl::Time t, google::protobuf::Timestamp* out);
void ToProto(absl::Duration d, google::protobuf::Duration* out);
absl::StatusOr<absl::Duration> FromProto(const google::protobuf::Duration& d, const char* field);

void ToProto(const DcaConfig& a, v1::AttentionConfig* out);
void ToProto(const SessionInfo& info, v1::Session* out);
v1::FinishReason ToProto(FinishReason r);

absl::StatusOr<SessionRequest> FromProto(const v1::CreateSessionRequest& req);
// Sampling fields with proto3 defaults resolved (top_p unset = 1).
GenerateInput FromProto(const v1::GenerateRequest& req);

}  // namespace longctx::server
