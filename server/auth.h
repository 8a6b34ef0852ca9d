// Bearer-token authentication (docs/design.md §8): each token maps to a tenant, who
// sees only their own sessions. Without a tokens file every caller is the
// tenant "default".
//
// Thread safety: immutable after Load; safe from any thread.
#pragma once

#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "grpcpp/server_context.h"

namespace longctx::server {

struct Caller {
  std::string tenant;
  bool read_only = false;  // may read and ask, may not change sessions
};

class Authenticator {
 public:
  // No authentication: everyone is tenant "default".
  Authenticator() = default;
  // Reads "<token> <tenant> [readonly]" lines ('#' starts a comment).
  static absl::StatusOr<Authenticator> Load(const std::string& path);

  bool enabled() const { return !tokens_.empty(); }
  // UNAUTHENTICATED when a token is required and missing or unknown.
  absl::StatusOr<Caller> Authenticate(const grpc::CallbackServerContext& ctx) const;

 private:
  absl::flat_hash_map<std::string, Caller> tokens_;
};

}  // namespace longctx::server
