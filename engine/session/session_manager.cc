#include "engine/session/session_manager.h"

#include <sys/random.h>

#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace longctx {
namespace {

// 128 bits from getrandom(2), which blocks only until the kernel's pool is
// first seeded at boot.
std::string RandomSessionId(const std::string& prefix) {
  unsigned char bytes[16];
  size_t got = 0;
  while (got < sizeof(bytes)) {
    const ssize_t n = getrandom(bytes + got, sizeof(bytes) - got, 0);
    if (n > 0) got += static_cast<size_t>(n);
  }
  return absl::StrCat(
      prefix, "s-", absl::BytesToHexString(absl::string_view(reinterpret_cast<char*>(bytes), 16)));
}

bool LabelsMatch(const std::map<std::string, std::string>& labels,
                 const std::map<std::string, std::string>& selector) {
  for (const auto& [k, v] : selector) {
    auto it = labels.find(k);
    if (it == labels.end() || it->second != v) return false;
  }
  return true;
}

}  // namespace

absl::Status ValidateSessionId(const std::string& id) {
  if (id.empty() || id.size() > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("session_id must be 1 to 64 characters (got ", id.size(), ")"));
  }
  for (char c : id) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) {
      return absl::InvalidArgumentError(
          "session_id may contain only letters, digits, '.', '_' and '-'");
    }
  }
  return absl::OkStatus();
}

SessionManager::SessionManager(SessionLimits limits, Clock clock)
    : limits_(limits), clock_(clock ? std::move(clock) : Clock([] { return absl::Now(); })) {}

absl::StatusOr<std::shared_ptr<Session>> SessionManager::Create(const std::string& tenant,
                                                                const std::string& id,
                                                                SessionSettings settings) {
  if (!id.empty()) {
    if (absl::Status s = ValidateSessionId(id); !s.ok()) return s;
  }
  const absl::Time now = clock_();
  absl::MutexLock lock(&mu_);
  if (static_cast<int64_t>(sessions_.size()) >= limits_.max_sessions) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the server holds its limit of ", limits_.max_sessions,
                     " sessions (max_sessions); delete some or retry later"));
  }
  int64_t& count = per_tenant_[tenant];
  if (count >= limits_.max_sessions_per_tenant) {
    return absl::ResourceExhaustedError(absl::StrCat("the tenant holds its limit of ",
                                                     limits_.max_sessions_per_tenant,
                                                     " sessions (max_sessions_per_tenant)"));
  }
  Key key{tenant, id};
  if (id.empty()) {
    do key.second = RandomSessionId(limits_.id_prefix);
    while (sessions_.contains(key));
  } else if (sessions_.contains(key)) {
    return absl::AlreadyExistsError(absl::StrCat("session_id ", id, " is taken"));
  }
  expired_.erase(key);
  auto session = std::make_shared<Session>(key.second, tenant, std::move(settings), now);
  sessions_.emplace(std::move(key), session);
  ++count;
  return session;
}

absl::StatusOr<std::shared_ptr<Session>> SessionManager::Get(const std::string& tenant,
                                                             const std::string& id) const {
  if (id.empty()) return absl::InvalidArgumentError("session_id is required");
  if (absl::Status s = ValidateSessionId(id); !s.ok()) return s;
  const Key key{tenant, id};
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(key);
  if (it != sessions_.end()) return it->second;
  auto tomb = expired_.find(key);
  if (tomb != expired_.end()) {
    return absl::FailedPreconditionError(absl::StrCat("session ", id, " expired at ",
                                                      absl::FormatTime(tomb->second),
                                                      " after being idle for its TTL"));
  }
  return absl::NotFoundError(absl::StrCat("session ", id, " not found"));
}

std::shared_ptr<Session> SessionManager::RemoveLocked(const Key& key, std::string reason) {
  auto it = sessions_.find(key);
  std::shared_ptr<Session> session = std::move(it->second);
  sessions_.erase(it);
  auto t = per_tenant_.find(session->tenant());
  if (--t->second == 0) per_tenant_.erase(t);
  session->Close(std::move(reason));
  return session;
}

absl::StatusOr<std::shared_ptr<Session>> SessionManager::Delete(const std::string& tenant,
                                                                const std::string& id) {
  {
    absl::MutexLock lock(&mu_);
    const Key key{tenant, id};
    if (sessions_.contains(key)) return RemoveLocked(key, "deleted");
  }
  // Not live: Get gives the right error (expired or not found).
  auto s = Get(tenant, id);
  if (s.ok()) return absl::NotFoundError(absl::StrCat("session ", id, " not found"));
  return s.status();
}

SessionManager::Page SessionManager::List(
    const std::string& tenant, int page_size, const std::string& page_token,
    const std::map<std::string, std::string>& label_selector) const {
  Page page;
  absl::MutexLock lock(&mu_);
  // The tenant's sessions are one contiguous range of the (tenant, id) order.
  auto it = page_token.empty() ? sessions_.lower_bound(Key{tenant, ""})
                               : sessions_.upper_bound(Key{tenant, page_token});
  for (; it != sessions_.end() && it->first.first == tenant; ++it) {
    const Session& s = *it->second;
    if (!LabelsMatch(s.settings().labels, label_selector)) continue;
    if (static_cast<int>(page.sessions.size()) == page_size) {
      page.next_page_token = page.sessions.back()->id();
      break;
    }
    page.sessions.push_back(it->second);
  }
  return page;
}

std::vector<std::shared_ptr<Session>> SessionManager::ExpireIdle() {
  const absl::Time now = clock_();
  std::vector<std::shared_ptr<Session>> out;
  absl::MutexLock lock(&mu_);
  std::vector<Key> keys;
  for (const auto& [key, s] : sessions_) {
    if (s->IdleExpired(now)) keys.push_back(key);
  }
  for (const Key& key : keys) {
    std::shared_ptr<Session> s = RemoveLocked(key, "expired");
    expired_[key] = now;
    expired_order_.push_back(key);
    if (expired_order_.size() > kExpiredHistory) {
      expired_.erase(expired_order_.front());
      expired_order_.pop_front();
    }
    ++evictions_;
    out.push_back(std::move(s));
  }
  return out;
}

std::vector<std::shared_ptr<Session>> SessionManager::DeleteAll() {
  std::vector<std::shared_ptr<Session>> out;
  absl::MutexLock lock(&mu_);
  while (!sessions_.empty()) out.push_back(RemoveLocked(sessions_.begin()->first, "deleted"));
  return out;
}

int64_t SessionManager::size() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(sessions_.size());
}

int64_t SessionManager::evictions() const {
  absl::MutexLock lock(&mu_);
  return evictions_;
}

SessionManager::StateBytes SessionManager::TotalStateBytes() const {
  StateBytes total;
  absl::MutexLock lock(&mu_);
  for (const auto& [id, s] : sessions_) {
    total.device += s->device_bytes();
    total.host += s->host_bytes();
  }
  return total;
}

}  // namespace longctx
