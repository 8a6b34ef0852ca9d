// The Engine's durable sessions (docs/service.md "Durability"): recovery
// from the session store at start, segments written ahead of being applied,
// persisted turns written before their Generate returns, deletions.
//
// Order. A session's log records are numbered under its StoreCursor in the
// order its work is submitted, and the store's writer completes commits in
// submission order; a segment reaches the scheduler only once its record is
// durable, and a persisted Generate only after a barrier behind the segments
// written before it. So replaying the records in number order applies the
// session's work in the order it ran. An ack waits for a barrier too, so a
// persisted turn before it is durable when it is sent.
//
// Recovery replays each session's base and records into one snapshot, writes
// that as the session's new base (dropping the records: the log is compacted
// at every start) and restores it like an import, so its KV is rebuilt by the
// engine's prefill in the background while the session is listed at once; its
// requests queue behind the rebuild on the engine thread.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "engine/engine.h"
#include "engine/util/status_macros.h"

namespace longctx {
namespace {

// Applies `records` to `snap` in order. A segment out of sequence ends the
// replay: it is the later of two failed segments whose roll-back was cut short
// by a crash, never acknowledged.
void Replay(const std::vector<StoredRecord>& records, SessionSnapshot* snap) {
  for (const StoredRecord& r : records) {
    if (r.kind == StoredRecord::Kind::kSegment) {
      if (r.seq != snap->applied_seq + 1) break;
      snap->applied_seq = r.seq;
      ++snap->segments;
      snap->ingested_tokens += static_cast<int64_t>(r.tokens.size());
    }
    snap->tokens.insert(snap->tokens.end(), r.tokens.begin(), r.tokens.end());
    if (r.kind == StoredRecord::Kind::kTurn) {
      snap->user_turn_start = static_cast<int64_t>(snap->tokens.size());
    }
  }
}

}  // namespace

absl::Status Engine::AttachStore(std::unique_ptr<SessionStore> store, StoreLoad load,
                                 absl::Duration open_time) {
  store_ = std::move(store);
  recovery_start_ = absl::Now();
  recovery_.store_open_seconds.store(absl::ToDoubleSeconds(open_time));
  if (!load.damage.empty() && on_store_event_) on_store_event_("store damaged", "", load.damage);
  for (const StoreLoad::Lost& lost : load.lost) MarkLost(lost.id, lost.tenant, lost.reason);
  // Most recently used first: they are the likeliest to be asked for soon.
  std::stable_sort(
      load.sessions.begin(), load.sessions.end(),
      [](const StoredSession& a, const StoredSession& b) { return a.last_used > b.last_used; });
  int64_t tokens = 0;
  for (const StoredSession& s : load.sessions) {
    for (const StoredRecord& r : s.records) tokens += static_cast<int64_t>(r.tokens.size());
  }
  recovery_.sessions.store(static_cast<int64_t>(load.sessions.size()));
  recovery_.pending_sessions.store(static_cast<int64_t>(load.sessions.size()));
  recovery_.tokens.store(tokens);
  if (load.sessions.empty()) RecoveryDone();
  for (StoredSession& s : load.sessions) RecoverSession(std::move(s));
  return absl::OkStatus();
}

void Engine::RecoverSession(StoredSession stored) {
  auto snap = DecodeSessionSnapshot(stored.base);
  auto finish = [this](const StoredSession& s, const absl::Status& st, int64_t tokens) {
    if (st.ok()) {
      recovery_.rebuilt_sessions.fetch_add(1);
      recovery_.rebuilt_tokens.fetch_add(tokens);
    } else if (!absl::IsCancelled(st)) {
      MarkLost(s.id, s.tenant, absl::StrCat("could not be rebuilt: ", st.message()));
    }
    if (recovery_.pending_sessions.fetch_sub(1) == 1) RecoveryDone();
  };
  if (!snap.ok()) {
    return finish(
        stored, absl::DataLossError(absl::StrCat("its base is damaged: ", snap.status().message())),
        0);
  }
  Replay(stored.records, &*snap);
  stored.records.clear();
  stored.base.clear();
  const int64_t tokens = static_cast<int64_t>(snap->tokens.size());
  const std::string id = stored.id, tenant = stored.tenant;
  RestoreSnapshot(tenant, id, *std::move(snap), {}, /*recovered=*/true, /*handle=*/nullptr,
                  [finish, stored = std::move(stored), tokens](absl::StatusOr<SessionInfo> info) {
                    finish(stored, info.status(), tokens);
                  });
}

void Engine::RecoveryDone() {
  const double seconds = absl::ToDoubleSeconds(absl::Now() - recovery_start_);
  recovery_.rebuild_seconds.store(seconds);
  const int64_t tokens = recovery_.rebuilt_tokens.load();
  if (on_store_event_) {
    on_store_event_("sessions rebuilt", "",
                    absl::StrCat("sessions=", recovery_.rebuilt_sessions.load(), " tokens=", tokens,
                                 " lost=", recovery_.lost_sessions.load(), " seconds=", seconds,
                                 " tokens_per_s=", seconds > 0 ? tokens / seconds : 0.0));
  }
}

absl::StatusOr<std::shared_ptr<Session>> Engine::Lookup(const std::string& tenant,
                                                        const std::string& id) const {
  auto found = manager_.Get(tenant, id);
  if (found.ok() || !absl::IsNotFound(found.status())) return found;
  absl::MutexLock lock(&lost_mu_);
  auto it = lost_.find(id);
  if (it == lost_.end() || (!it->second.tenant.empty() && it->second.tenant != tenant)) {
    return found;
  }
  return absl::DataLossError(absl::StrCat("session ", id, " was lost at the last restart: ",
                                          it->second.reason, " (DeleteSession clears it)"));
}

void Engine::MarkLost(const std::string& id, const std::string& tenant, const std::string& reason) {
  recovery_.lost_sessions.fetch_add(1);
  if (!id.empty()) {
    absl::MutexLock lock(&lost_mu_);
    lost_[id] = {tenant, reason};
  }
  if (on_store_event_) on_store_event_("session lost", id, reason);
}

absl::Status Engine::ForgetStored(const std::string& id, bool wait) {
  if (!store_) return absl::OkStatus();
  SessionStore::Batch batch;
  batch.DeleteSession(id);
  if (!wait) {
    store_->Commit(std::move(batch), [](absl::Status) {});
    return absl::OkStatus();
  }
  absl::Notification written;
  absl::Status result;
  store_->Commit(std::move(batch), [&](absl::Status s) {
    result = s;
    written.Notify();
  });
  written.WaitForNotification();
  return result;
}

void Engine::AfterDurable(std::function<void()> fn) {
  if (!store_) return fn();
  store_->Commit(SessionStore::Batch(), [fn = std::move(fn)](absl::Status) { fn(); });
}

// ---------------------------------------------------------------- ingest

std::shared_ptr<WorkHandle> Engine::IngestDurable(
    const std::shared_ptr<Session>& session, int64_t seq, std::vector<int32_t> tokens,
    absl::Time deadline, std::function<void(absl::StatusOr<IngestAck>)> done) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  Session::StoreCursor& cursor = session->store_cursor();
  auto handle = std::make_shared<WorkHandle>();
  IngestAck ack;
  absl::StatusOr<Session::SegmentClaim> claim;
  {
    absl::MutexLock lock(&cursor.mu);
    claim = session->ClaimSegment(seq, n, &ack);
    if (claim.ok() && *claim == Session::SegmentClaim::kApply) {
      StoredRecord record;
      record.rec = cursor.next_rec++;
      const int64_t epoch = cursor.epoch;
      record.seq = seq;
      record.tokens = tokens;
      SessionStore::Batch batch;
      batch.PutRecord(session->id(), record);
      store_->Commit(std::move(batch),
                     [this, session, seq, n, rec = record.rec, epoch, tokens = std::move(tokens),
                      deadline, handle, done = std::move(done)](absl::Status s) mutable {
                       WrittenAhead(session, seq, n, rec, epoch, std::move(tokens), deadline,
                                    handle, s, std::move(done));
                     });
      return handle;
    }
  }
  AnswerClaim(session, seq, claim, ack, done);
  return nullptr;
}

void Engine::WrittenAhead(const std::shared_ptr<Session>& session, int64_t seq, int64_t n,
                          int64_t rec, int64_t epoch, std::vector<int32_t> tokens,
                          absl::Time deadline, const std::shared_ptr<WorkHandle>& handle,
                          absl::Status written,
                          std::function<void(absl::StatusOr<IngestAck>)> done) {
  Session::StoreCursor& cursor = session->store_cursor();
  bool stale = false;
  {
    absl::MutexLock lock(&cursor.mu);
    stale = epoch != cursor.epoch;
    if (!written.ok() && !stale) ++cursor.epoch;
  }
  if (written.ok() && stale) {
    // Written, but an earlier segment failed since its claim: it must not
    // apply after the gap.
    written = absl::AbortedError(absl::StrCat(
        "segment ", seq, " not applied: an earlier segment failed; resend from next_seq"));
    SessionStore::Batch undo;
    undo.DeleteRecord(session->id(), rec);
    store_->Commit(std::move(undo), [](absl::Status) {});
  }
  if (!written.ok()) {
    // A stale claim's failure does not rewind next_seq: the earlier failure
    // did, and the client may be resending already.
    if (stale) {
      session->Unreserve(n);
    } else {
      session->FailSegment(seq, n);
    }
    return done(written);
  }
  // Checked again on the engine thread in order with the session's work: an
  // earlier segment that fails there from now on cancels this one before it
  // runs.
  auto cancelled = std::make_shared<std::atomic<bool>>(false);
  ReadJob check;
  check.session = session;
  check.segment_check = true;
  check.fn = [session, epoch, handle, cancelled](absl::Status, const SessionEngineState*) {
    Session::StoreCursor& c = session->store_cursor();
    absl::MutexLock lock(&c.mu);
    if (c.epoch != epoch) {
      cancelled->store(true);
      handle->Cancel();
    }
  };
  scheduler_->SubmitRead(std::move(check));
  scheduler_->SubmitIngest(
      SegmentJob(session, seq, std::move(tokens), deadline, rec, std::move(done), cancelled),
      handle);
}

void Engine::DurableSegmentFailed(const std::shared_ptr<Session>& session, int64_t seq, int64_t n,
                                  int64_t rec, bool stale) {
  if (stale) {
    session->Unreserve(n);
  } else {
    session->FailSegment(seq, n);
    Session::StoreCursor& cursor = session->store_cursor();
    absl::MutexLock lock(&cursor.mu);
    ++cursor.epoch;
  }
  // Written ahead but not applied: roll the record back.
  SessionStore::Batch undo;
  undo.DeleteRecord(session->id(), rec);
  store_->Commit(std::move(undo), [](absl::Status) {});
}

// ---------------------------------------------------------------- generate

std::shared_ptr<WorkHandle> Engine::GenerateDurable(GenerateJob job) {
  std::shared_ptr<Session> session = job.session;
  auto handle = std::make_shared<WorkHandle>();
  Session::StoreCursor& cursor = session->store_cursor();
  absl::MutexLock lock(&cursor.mu);
  const int64_t rec = cursor.next_rec++;
  job.done = [this, session, rec, finish = std::move(job.done)](absl::StatusOr<GenerateResult> r) {
    SessionEngineState& st = session->engine_state();
    if (!r.ok() || static_cast<int64_t>(st.log.size()) <= st.stored_end) return finish(r);
    StoredRecord turn;
    turn.rec = rec;
    turn.kind = StoredRecord::Kind::kTurn;
    turn.tokens.assign(st.log.begin() + st.stored_end, st.log.end());
    st.stored_end = static_cast<int64_t>(st.log.size());
    SessionStore::Batch batch;
    batch.PutRecord(session->id(), turn);
    store_->Commit(std::move(batch), [r, finish](absl::Status s) {
      if (s.ok()) return finish(r);
      finish(absl::Status(s.code(), absl::StrCat("the answer was kept in the session but could not "
                                                 "be made durable: ",
                                                 s.message())));
    });
  };
  // Behind the segments written ahead before it, so it runs after them.
  store_->Commit(SessionStore::Batch(), [this, job = std::move(job), handle](absl::Status) mutable {
    scheduler_->SubmitGenerate(std::move(job), handle);
  });
  return handle;
}

}  // namespace longctx
