#include "engine/session/session_manager.h"

#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace longctx {
namespace {

std::string RandomSessionId() {
  static absl::Mutex mu(absl::kConstInit);
  static std::mt19937_64* rng = nullptr;
  absl::MutexLock lock(&mu);
  if (rng == nullptr) {
    std::random_device rd;
    rng = new std::mt19937_64((static_cast<uint64_t>(rd()) << 32) ^ rd());
  }
  return absl::StrFormat("s-%016x%08x", (*rng)(), static_cast<uint32_t>((*rng)()));
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
  std::string sid = id;
  if (sid.empty()) {
    do sid = RandomSessionId();
    while (sessions_.contains(sid));
  } else if (sessions_.contains(sid)) {
    return absl::AlreadyExistsError(absl::StrCat("session_id ", sid, " is taken"));
  }
  expired_.erase(sid);
  auto session = std::make_shared<Session>(sid, tenant, std::move(settings), now);
  sessions_.emplace(sid, session);
  ++count;
  return session;
}

absl::StatusOr<std::shared_ptr<Session>> SessionManager::Get(const std::string& tenant,
                                                             const std::string& id) const {
  if (id.empty()) return absl::InvalidArgumentError("session_id is required");
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(id);
  if (it != sessions_.end() && it->second->tenant() == tenant) return it->second;
  auto tomb = expired_.find(id);
  if (tomb != expired_.end() && tomb->second.tenant == tenant) {
    return absl::FailedPreconditionError(absl::StrCat("session ", id, " expired at ",
                                                      absl::FormatTime(tomb->second.when),
                                                      " after being idle for its TTL"));
  }
  return absl::NotFoundError(absl::StrCat("session ", id, " not found"));
}

std::shared_ptr<Session> SessionManager::RemoveLocked(const std::string& id, std::string reason) {
  auto it = sessions_.find(id);
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
    auto it = sessions_.find(id);
    if (it != sessions_.end() && it->second->tenant() == tenant) {
      return RemoveLocked(id, "deleted");
    }
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
  auto it = page_token.empty() ? sessions_.begin() : sessions_.upper_bound(page_token);
  for (; it != sessions_.end(); ++it) {
    const Session& s = *it->second;
    if (s.tenant() != tenant || !LabelsMatch(s.settings().labels, label_selector)) continue;
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
  std::vector<std::string> ids;
  for (const auto& [id, s] : sessions_) {
    if (s->IdleExpired(now)) ids.push_back(id);
  }
  for (const std::string& id : ids) {
    std::shared_ptr<Session> s = RemoveLocked(id, "expired");
    expired_[id] = Tombstone{s->tenant(), now};
    expired_order_.push_back(id);
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
