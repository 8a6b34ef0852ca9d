// The one place where absl::Status becomes grpc::Status (STYLE rule 5).
#pragma once

#include "absl/status/status.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/status.h"

namespace longctx::server {

// The gRPC status of `status`: the same code and message. With `ctx`, the
// trailing metadata that `status` carries is added to the call as well:
// x-session-home for a call about a session another replica holds
// (server/routing.h). REQUIRES: `ctx`, if set, is a call not yet finished.
grpc::Status ToGrpcStatus(const absl::Status& status, grpc::ServerContextBase* ctx = nullptr);

}  // namespace longctx::server
