#include "server/auth.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <algorithm>
#include <fstream>
#include <system_error>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "grpc/grpc_security_constants.h"

namespace longctx::server {
namespace {

namespace fs = std::filesystem;

// One "<key> <tenant> [readonly]" line of `path`.
struct Entry {
  std::string key;
  Caller caller;
  int line = 0;
};

absl::StatusOr<std::vector<Entry>> ReadEntries(const std::string& path, const char* setting,
                                               const char* key_name) {
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(setting, " ", path, ": cannot read"));
  std::vector<Entry> out;
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    absl::string_view v = absl::StripAsciiWhitespace(line);
    if (v.empty() || v[0] == '#') continue;
    std::vector<std::string> parts = absl::StrSplit(v, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (parts.size() < 2 || parts.size() > 3 || (parts.size() == 3 && parts[2] != "readonly")) {
      return absl::InvalidArgumentError(absl::StrCat(setting, " ", path, ":", n, ": expected '<",
                                                     key_name, "> <tenant> [readonly]'"));
    }
    out.push_back(Entry{parts[0], Caller{parts[1], parts.size() == 3}, n});
  }
  if (out.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(setting, " ", path, ": no entries"));
  }
  return out;
}

absl::StatusOr<Authenticator::Digest> TokenDigest(const Entry& e, const std::string& path) {
  Authenticator::Digest d;
  absl::string_view key = e.key;
  if (absl::ConsumePrefix(&key, "sha256:")) {
    const bool hex = key.size() == 64 && std::all_of(key.begin(), key.end(), [](char c) {
                       return absl::ascii_isxdigit(static_cast<unsigned char>(c));
                     });
    if (!hex) {
      return absl::InvalidArgumentError(absl::StrCat("auth_tokens_file ", path, ":", e.line,
                                                     ": sha256: needs 64 hexadecimal digits"));
    }
    const std::string bytes = absl::HexStringToBytes(key);
    std::copy(bytes.begin(), bytes.end(), d.begin());
    return d;
  }
  if (key.size() < 16) {
    return absl::InvalidArgumentError(absl::StrCat("auth_tokens_file ", path, ":", e.line,
                                                   ": tokens must be at least 16 characters"));
  }
  return Authenticator::Sha256(key);
}

}  // namespace

Authenticator::Authenticator() : state_(std::make_shared<State>()) {
  absl::MutexLock lock(&state_->mu);
  state_->tables = std::make_shared<const Tables>();
}

Authenticator::Digest Authenticator::Sha256(absl::string_view text) {
  Digest d;
  SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), d.data());
  return d;
}

absl::StatusOr<Authenticator> Authenticator::Load(const std::string& tokens_path,
                                                  const std::string& identities_path) {
  Authenticator auth;
  auth.state_->tokens_path = tokens_path;
  auth.state_->identities_path = identities_path;
  auto tables = Read(*auth.state_);
  if (!tables.ok()) return tables.status();
  absl::MutexLock lock(&auth.state_->mu);
  auth.state_->tables = *std::move(tables);
  return auth;
}

absl::StatusOr<std::shared_ptr<const Authenticator::Tables>> Authenticator::Read(
    const State& state) {
  auto tables = std::make_shared<Tables>();
  auto stamp = [](const std::string& path) {
    std::error_code ec;
    return Stamp{fs::last_write_time(path, ec), fs::file_size(path, ec)};
  };
  if (!state.tokens_path.empty()) {
    tables->tokens_stamp = stamp(state.tokens_path);
    auto entries = ReadEntries(state.tokens_path, "auth_tokens_file", "token");
    if (!entries.ok()) return entries.status();
    for (const Entry& e : *entries) {
      auto digest = TokenDigest(e, state.tokens_path);
      if (!digest.ok()) return digest.status();
      tables->tokens.emplace_back(*digest, e.caller);
    }
  }
  if (!state.identities_path.empty()) {
    tables->identities_stamp = stamp(state.identities_path);
    auto entries = ReadEntries(state.identities_path, "tls_client_tenants_file", "identity");
    if (!entries.ok()) return entries.status();
    for (const Entry& e : *entries) tables->identities[e.key] = e.caller;
  }
  return std::shared_ptr<const Tables>(std::move(tables));
}

absl::StatusOr<bool> Authenticator::Reload(bool force) {
  const std::shared_ptr<const Tables> old = tables();
  if (!force) {
    std::error_code ec;
    auto stamp = [&](const std::string& path) {
      return path.empty() ? Stamp{} : Stamp{fs::last_write_time(path, ec), fs::file_size(path, ec)};
    };
    if (stamp(state_->tokens_path) == old->tokens_stamp &&
        stamp(state_->identities_path) == old->identities_stamp) {
      return false;
    }
  }
  auto fresh = Read(*state_);
  if (!fresh.ok()) return fresh.status();
  absl::MutexLock lock(&state_->mu);
  state_->tables = *std::move(fresh);
  return true;
}

std::shared_ptr<const Authenticator::Tables> Authenticator::tables() const {
  absl::MutexLock lock(&state_->mu);
  return state_->tables;
}

bool Authenticator::enabled() const {
  const auto t = tables();
  return !t->tokens.empty() || !t->identities.empty();
}

absl::StatusOr<Caller> Authenticator::Authenticate(const grpc::CallbackServerContext& ctx) const {
  const std::shared_ptr<const Tables> t = tables();
  const auto& md = ctx.client_metadata();
  auto it = md.find("authorization");
  if (!t->tokens.empty() && it != md.end()) {
    return ByToken(*t, absl::string_view(it->second.data(), it->second.size()));
  }
  if (!t->identities.empty()) return ByCertificate(*t, ctx);
  if (!t->tokens.empty()) {
    return absl::UnauthenticatedError("missing 'authorization: Bearer <token>' metadata");
  }
  return Caller{"default", false};
}

absl::StatusOr<Caller> Authenticator::AuthenticateHttp(
    std::optional<absl::string_view> authorization) const {
  const std::shared_ptr<const Tables> t = tables();
  if (!t->tokens.empty() && authorization) return ByToken(*t, *authorization);
  if (!t->tokens.empty()) {
    return absl::UnauthenticatedError("missing 'Authorization: Bearer <token>' header");
  }
  if (!t->identities.empty()) {
    return absl::UnauthenticatedError(
        "this server maps client certificates to tenants (tls_client_tenants_file), which the "
        "HTTP door does not read: it needs a bearer token (auth_tokens_file)");
  }
  return Caller{"default", false};
}

absl::StatusOr<Caller> Authenticator::ByToken(const Tables& t, absl::string_view header) const {
  absl::string_view value = header;
  if (!absl::ConsumePrefix(&value, "Bearer ") && !absl::ConsumePrefix(&value, "bearer ")) {
    return absl::UnauthenticatedError("authorization metadata must be 'Bearer <token>'");
  }
  const Digest want = Sha256(absl::StripAsciiWhitespace(value));
  // Every entry is compared, each in constant time: the time taken says
  // nothing about which entry (if any) matched.
  const Caller* found = nullptr;
  for (const auto& [digest, caller] : t.tokens) {
    const bool same = CRYPTO_memcmp(digest.data(), want.data(), want.size()) == 0;
    found = same ? &caller : found;
  }
  if (found == nullptr) return absl::UnauthenticatedError("unknown bearer token");
  return *found;
}

absl::StatusOr<Caller> Authenticator::ByCertificate(const Tables& t,
                                                    const grpc::CallbackServerContext& ctx) const {
  std::shared_ptr<const grpc::AuthContext> auth = ctx.auth_context();
  if (auth != nullptr) {
    for (const char* property : {GRPC_X509_CN_PROPERTY_NAME, GRPC_X509_SAN_PROPERTY_NAME}) {
      for (const grpc::string_ref& v : auth->FindPropertyValues(property)) {
        auto it = t.identities.find(std::string(v.data(), v.size()));
        if (it != t.identities.end()) return it->second;
      }
    }
  }
  return absl::UnauthenticatedError(
      "the client certificate's identity (CN or SAN) is not mapped to a tenant "
      "(tls_client_tenants_file)");
}

}  // namespace longctx::server
