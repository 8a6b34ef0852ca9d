#include "server/routing.h"

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/session/session_manager.h"

namespace longctx::server {
namespace {

// What follows "<home>." in an id with a home (generated ids: "s-<32 hex>").
constexpr absl::string_view kLocalIdPrefix = "s-";

bool IsLowerAlnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

bool IsReplicaId(absl::string_view id) {
  if (id.empty() || id.size() > kMaxReplicaIdLength) return false;
  if (!IsLowerAlnum(id.front()) || !IsLowerAlnum(id.back())) return false;
  for (char c : id) {
    if (!IsLowerAlnum(c) && c != '-') return false;
  }
  return true;
}

}  // namespace

absl::Status ValidateReplicaId(absl::string_view id) {
  if (IsReplicaId(id)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("replica_id: expected 1 to ", kMaxReplicaIdLength,
                   " of [a-z0-9-], beginning and ending with a letter or digit (got '", id, "')"));
}

std::string ReplicaIdFromHostName(absl::string_view host) {
  host = host.substr(0, host.find('.'));
  std::string id;
  for (char c : host) {
    c = absl::ascii_tolower(static_cast<unsigned char>(c));
    id.push_back(IsLowerAlnum(c) ? c : '-');
    if (id.size() == kMaxReplicaIdLength) break;
  }
  // Leading and trailing '-' would make it no DNS label.
  const size_t first = id.find_first_not_of('-');
  if (first == std::string::npos) return "longctxd";
  id = id.substr(first, id.find_last_not_of('-') - first + 1);
  return id;
}

std::string SessionHome(absl::string_view id) {
  const size_t dot = id.find('.');
  if (dot == absl::string_view::npos) return "";
  const absl::string_view rest = id.substr(dot + 1);
  if (rest.size() <= kLocalIdPrefix.size() || !absl::StartsWith(rest, kLocalIdPrefix)) return "";
  const absl::string_view home = id.substr(0, dot);
  return IsReplicaId(home) ? std::string(home) : "";
}

std::string SessionIdPrefix(absl::string_view replica_id) { return absl::StrCat(replica_id, "."); }

absl::Status MisdirectedError(absl::string_view id, absl::string_view home,
                              absl::string_view self) {
  absl::Status status = absl::FailedPreconditionError(
      absl::StrCat("session ", id, " lives on replica ", home, ", not on this replica (", self,
                   "): send its calls to ", home, " (", kSessionHomeHeader, ": ", home, ")"));
  status.SetPayload(kSessionHomePayload, absl::Cord(home));
  return status;
}

std::string MisdirectedHome(const absl::Status& status) {
  if (status.code() != absl::StatusCode::kFailedPrecondition) return "";
  const auto home = status.GetPayload(kSessionHomePayload);
  return home ? std::string(*home) : "";
}

absl::Status RouteLookup(absl::Status lookup, absl::string_view id, absl::string_view self) {
  if (!absl::IsNotFound(lookup)) return lookup;
  const std::string home = SessionHome(id);
  if (home.empty() || home == self) return lookup;
  return MisdirectedError(id, home, self);
}

absl::Status CheckSessionHome(Engine& engine, const std::string& tenant, const std::string& id,
                              absl::string_view self) {
  if (absl::Status s = ValidateSessionId(id); !s.ok()) return s;
  const std::string home = SessionHome(id);
  if (home.empty() || home == self) return absl::OkStatus();
  const absl::Status lookup = engine.FindSession(tenant, id).status();
  return absl::IsNotFound(lookup) ? MisdirectedError(id, home, self) : absl::OkStatus();
}

absl::Status CheckNewSessionId(absl::string_view id, absl::string_view self) {
  if (id.empty()) return absl::OkStatus();  // the replica picks one of its own
  if (absl::Status s = ValidateSessionId(std::string(id)); !s.ok()) return s;
  const std::string home = SessionHome(id);
  if (home.empty() || home == self) return absl::OkStatus();
  return MisdirectedError(id, home, self);
}

}  // namespace longctx::server
