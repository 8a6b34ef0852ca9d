// The one place where absl::Status becomes grpc::Status (STYLE rule 5).
#pragma once

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace longctx::server {

grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace longctx::server
