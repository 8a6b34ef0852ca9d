#include "server/status.h"

#include <string>

#include "server/routing.h"

namespace longctx::server {

grpc::Status ToGrpcStatus(const absl::Status& status, grpc::ServerContextBase* ctx) {
  if (status.ok()) return grpc::Status::OK;
  if (ctx != nullptr) {
    if (const std::string home = MisdirectedHome(status); !home.empty()) {
      ctx->AddTrailingMetadata(kSessionHomeHeader, home);
    }
  }
  // absl and gRPC share the canonical code numbering (0..16).
  const int code = static_cast<int>(status.code());
  const auto grpc_code =
      code >= 0 && code <= 16 ? static_cast<grpc::StatusCode>(code) : grpc::StatusCode::UNKNOWN;
  return grpc::Status(grpc_code, std::string(status.message()));
}

}  // namespace longctx::server
