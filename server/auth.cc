#include "server/auth.h"

#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace longctx::server {

absl::StatusOr<Authenticator> Authenticator::Load(const std::string& path) {
  std::ifstream in(path);
  if (!in)
    return absl::InvalidArgumentError(absl::StrCat("auth_tokens_file ", path, ": cannot read"));
  Authenticator auth;
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    absl::string_view v = absl::StripAsciiWhitespace(line);
    if (v.empty() || v[0] == '#') continue;
    std::vector<std::string> parts = absl::StrSplit(v, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (parts.size() < 2 || parts.size() > 3 || (parts.size() == 3 && parts[2] != "readonly")) {
      return absl::InvalidArgumentError(absl::StrCat("auth_tokens_file ", path, ":", n,
                                                     ": expected '<token> <tenant> [readonly]'"));
    }
    if (parts[0].size() < 16) {
      return absl::InvalidArgumentError(absl::StrCat("auth_tokens_file ", path, ":", n,
                                                     ": tokens must be at least 16 characters"));
    }
    auth.tokens_[parts[0]] = Caller{parts[1], parts.size() == 3};
  }
  if (auth.tokens_.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("auth_tokens_file ", path, ": no tokens"));
  }
  return auth;
}

absl::StatusOr<Caller> Authenticator::Authenticate(const grpc::CallbackServerContext& ctx) const {
  if (tokens_.empty()) return Caller{"default", false};
  const auto& md = ctx.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) {
    return absl::UnauthenticatedError("missing 'authorization: Bearer <token>' metadata");
  }
  absl::string_view value(it->second.data(), it->second.size());
  if (!absl::ConsumePrefix(&value, "Bearer ") && !absl::ConsumePrefix(&value, "bearer ")) {
    return absl::UnauthenticatedError("authorization metadata must be 'Bearer <token>'");
  }
  auto t = tokens_.find(std::string(absl::StripAsciiWhitespace(value)));
  if (t == tokens_.end()) return absl::UnauthenticatedError("unknown bearer token");
  return t->second;
}

}  // namespace longctx::server
