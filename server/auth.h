// Authentication (docs/design.md §8): a bearer token or a client certificate
// identity maps to a tenant, who sees only their own sessions. Without either
// every caller is the tenant "default".
//
// Tokens are kept as SHA-256 digests and compared in constant time over the
// whole table, so neither memory dumps nor response times reveal them. The
// files may change while the server runs: Reload re-reads them, and a file
// that fails to parse leaves the previous tables in force.
//
// Thread safety: all methods are safe from any thread. Copies share one state
// (the server keeps one to reload, the call registry one to authenticate).
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/server_context.h"

namespace longctx::server {

struct Caller {
  std::string tenant;
  bool read_only = false;  // may read and ask, may not change sessions
};

class Authenticator {
 public:
  using Digest = std::array<uint8_t, 32>;

  // No authentication: everyone is tenant "default".
  Authenticator();
  // `tokens_path`: "<token> <tenant> [readonly]" lines, a token given as is
  // (16 characters at least) or as "sha256:<64 hex digits>" of the token.
  // `identities_path`: "<identity> <tenant> [readonly]" lines, the identity a
  // client certificate's subject CN or one of its SANs. Either may be empty;
  // '#' starts a comment.
  static absl::StatusOr<Authenticator> Load(const std::string& tokens_path,
                                            const std::string& identities_path = "");

  bool enabled() const;
  // UNAUTHENTICATED when a token or a mapped certificate is required and
  // missing or unknown. A bearer token, when sent, decides; else the
  // certificate's identity.
  absl::StatusOr<Caller> Authenticate(const grpc::CallbackServerContext& ctx) const;
  // The same for a request of the HTTP door by its Authorization header
  // (nullopt: none sent). Bearer tokens only: a server that maps client
  // certificates alone (no tokens file) refuses every HTTP request rather than
  // letting it in as "default".
  absl::StatusOr<Caller> AuthenticateHttp(std::optional<absl::string_view> authorization) const;

  // Re-reads the files if their modification time or size changed (`force`:
  // always). True if the tables were replaced; an error leaves them as they were.
  absl::StatusOr<bool> Reload(bool force);

  static Digest Sha256(absl::string_view text);

 private:
  struct Stamp {
    std::filesystem::file_time_type mtime;
    uintmax_t size = 0;
    bool operator==(const Stamp&) const = default;
  };
  struct Tables {
    std::vector<std::pair<Digest, Caller>> tokens;
    absl::flat_hash_map<std::string, Caller> identities;
    Stamp tokens_stamp, identities_stamp;
  };
  struct State {
    std::string tokens_path, identities_path;
    mutable absl::Mutex mu;
    std::shared_ptr<const Tables> tables ABSL_GUARDED_BY(mu);
  };

  static absl::StatusOr<std::shared_ptr<const Tables>> Read(const State& state);
  std::shared_ptr<const Tables> tables() const;
  absl::StatusOr<Caller> ByToken(const Tables& t, absl::string_view header) const;
  absl::StatusOr<Caller> ByCertificate(const Tables& t,
                                       const grpc::CallbackServerContext& ctx) const;

  std::shared_ptr<State> state_;
};

}  // namespace longctx::server
