// The table of live sessions (docs/design.md §5): creation with quotas, lookup with
// tenant ownership, paged listing, deletion and TTL expiry.
//
// Session ids are scoped per tenant: two tenants may each hold "s-1", and
// nothing a tenant is told depends on another tenant's ids. Generated ids
// carry 128 bits from the kernel's cryptographic generator (getrandom(2)).
//
// The manager only tracks sessions; freeing their engine state is the
// scheduler's job: Delete and ExpireIdle hand the removed sessions back so the
// caller can pass them on.
//
// Thread safety: every method is safe to call from any thread.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/session/session.h"

namespace longctx {

struct SessionLimits {
  int64_t max_sessions = 1024;  // all tenants together
  int64_t max_sessions_per_tenant = 256;
  // Put before every generated id ("s-" and 32 hex digits): the server names
  // its replica there ("longctxd-1."), so that ids say where they live.
  // At most 30 characters, so that ids stay within 64.
  std::string id_prefix;
};

class SessionManager {
 public:
  using Clock = std::function<absl::Time()>;
  // `clock` defaults to absl::Now.
  explicit SessionManager(SessionLimits limits, Clock clock = nullptr);

  absl::Time Now() const { return clock_(); }

  // Creates a session for `tenant`. `id` empty: a fresh random id after
  // limits.id_prefix. Errors:
  // INVALID_ARGUMENT for a malformed id, ALREADY_EXISTS for one the same
  // tenant holds,
  // RESOURCE_EXHAUSTED over max_sessions or max_sessions_per_tenant.
  absl::StatusOr<std::shared_ptr<Session>> Create(const std::string& tenant, const std::string& id,
                                                  SessionSettings settings);

  // The session `id` of `tenant`. INVALID_ARGUMENT for a malformed id;
  // NOT_FOUND when the tenant has none of that id; FAILED_PRECONDITION when
  // it expired recently.
  absl::StatusOr<std::shared_ptr<Session>> Get(const std::string& tenant,
                                               const std::string& id) const;

  // Removes and closes the session; errors as Get.
  absl::StatusOr<std::shared_ptr<Session>> Delete(const std::string& tenant, const std::string& id);

  struct Page {
    std::vector<std::shared_ptr<Session>> sessions;
    std::string next_page_token;  // empty on the last page
  };
  // `tenant`'s sessions in id order after `page_token` (an id), filtered by
  // label equality. REQUIRES: page_size > 0.
  Page List(const std::string& tenant, int page_size, const std::string& page_token,
            const std::map<std::string, std::string>& label_selector) const;

  // Removes and closes every unused session whose TTL has passed; remembers
  // their ids so that later lookups say "expired" rather than "not found".
  std::vector<std::shared_ptr<Session>> ExpireIdle();

  // Closes and removes every session (shutdown).
  std::vector<std::shared_ptr<Session>> DeleteAll();

  int64_t size() const;
  int64_t evictions() const;
  // Sums of the live sessions' state bytes.
  struct StateBytes {
    int64_t device = 0;
    int64_t host = 0;
  };
  StateBytes TotalStateBytes() const;

  // Tombstones of expired sessions kept for lookups.
  static constexpr size_t kExpiredHistory = 16384;

 private:
  // Sessions and tombstones are keyed by (tenant, id).
  using Key = std::pair<std::string, std::string>;

  std::shared_ptr<Session> RemoveLocked(const Key& key, std::string reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const SessionLimits limits_;
  const Clock clock_;

  mutable absl::Mutex mu_;
  std::map<Key, std::shared_ptr<Session>> sessions_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, int64_t> per_tenant_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<Key, absl::Time> expired_ ABSL_GUARDED_BY(mu_);  // when
  std::deque<Key> expired_order_ ABSL_GUARDED_BY(mu_);
  int64_t evictions_ ABSL_GUARDED_BY(mu_) = 0;
};

// Validates a session id: 1..64 of [A-Za-z0-9._-]. The message never quotes
// the id (it may be anything a client sent).
absl::Status ValidateSessionId(const std::string& id);

}  // namespace longctx
