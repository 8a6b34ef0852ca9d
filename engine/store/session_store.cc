#include "engine/store/session_store.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <system_error>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/store/store_records.h"
#include "rocksdb/db.h"
#include "rocksdb/options.h"
#include "rocksdb/table.h"
#include "rocksdb/write_batch.h"

namespace longctx {
namespace {

rocksdb::Options DbOptions() {
  rocksdb::Options o;
  // Small table blocks: damage to one block loses fewer sessions.
  rocksdb::BlockBasedTableOptions table;
  table.block_size = 2048;
  o.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  o.create_if_missing = true;
  o.paranoid_checks = true;
  // A torn last write (a crash mid-append) loses that write only; the rest of
  // the log replays.
  o.wal_recovery_mode = rocksdb::WALRecoveryMode::kPointInTimeRecovery;
  o.write_buffer_size = 32 << 20;
  o.max_total_wal_size = 256 << 20;
  o.keep_log_file_num = 3;
  o.max_log_file_size = 4 << 20;
  o.max_background_jobs = 2;
  return o;
}

bool IsLockError(const rocksdb::Status& s) {
  return s.IsIOError() &&
         (absl::StrContains(s.ToString(), "lock file") || absl::StrContains(s.ToString(), "LOCK"));
}

bool IsPermissionError(const rocksdb::Status& s) {
  return absl::StrContains(s.ToString(), "Permission denied") ||
         absl::StrContains(s.ToString(), "Read-only file system");
}

// A write failure as the status a client sees: a full disk (or a file size
// limit) is RESOURCE_EXHAUSTED, anything else UNAVAILABLE; both say to resend.
absl::Status WriteError(const rocksdb::Status& s) {
  const std::string what = s.ToString();
  if (s.IsNoSpace() || absl::StrContains(what, "No space left") ||
      absl::StrContains(what, "File too large")) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the session store is full (", what, "); resend once there is room"));
  }
  return absl::UnavailableError(
      absl::StrCat("the session store could not write (", what, "); resend later"));
}

rocksdb::DB* TryOpen(const std::string& dir, rocksdb::Status* status) {
  rocksdb::DB* db = nullptr;
  *status = rocksdb::DB::Open(DbOptions(), dir, &db);
  return status->ok() ? db : nullptr;
}

// Opens a damaged store: repaired if RocksDB can, else moved aside and started
// empty. Says what happened in `load->damage`.
rocksdb::DB* OpenDamaged(const std::string& dir, const rocksdb::Status& first, StoreLoad* load) {
  rocksdb::Status s = rocksdb::RepairDB(dir, DbOptions());
  if (s.ok()) {
    rocksdb::DB* db = TryOpen(dir, &s);
    if (db != nullptr) {
      load->damage = absl::StrCat("the store was damaged (", first.ToString(),
                                  "); repaired, keeping what could be read");
      return db;
    }
  }
  const std::string aside = absl::StrCat(dir, ".damaged-", absl::ToUnixSeconds(absl::Now()));
  std::error_code ec;
  std::filesystem::rename(dir, aside, ec);
  rocksdb::DB* db = ec ? nullptr : TryOpen(dir, &s);
  load->damage =
      absl::StrCat("the store was damaged beyond repair (", first.ToString(), "); ",
                   db ? absl::StrCat("moved to ", aside, ", started empty") : "running without it");
  return db;
}

}  // namespace

absl::StatusOr<Durability> ParseDurability(const std::string& name) {
  if (name == "none") return Durability::kNone;
  if (name == "ack") return Durability::kAck;
  if (name == "sync") return Durability::kSync;
  return absl::InvalidArgumentError(
      absl::StrCat("durability '", name, "' is not none, ack or sync"));
}

const char* DurabilityName(Durability d) {
  switch (d) {
    case Durability::kNone:
      return "none";
    case Durability::kAck:
      return "ack";
    case Durability::kSync:
      return "sync";
  }
  return "?";
}

std::string DefaultStateDir() {
  if (const char* xdg = std::getenv("XDG_STATE_HOME"); xdg != nullptr && *xdg == '/') {
    return absl::StrCat(xdg, "/longctx");
  }
  if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0') {
    return absl::StrCat(home, "/.local/state/longctx");
  }
  return "longctx-state";
}

StoreStats::StoreStats()
    : commit_seconds({0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                      0.5, 1.0}) {}

// ------------------------------------------------------------------ batches

void SessionStore::Batch::PutSession(const std::string& id, const std::string& tenant,
                                     absl::Time create_time, const std::string& base) {
  // A reused id must not inherit an older session's log.
  ops_.push_back({Op::kDeleteRange, store::LogBegin(id), store::LogEnd(id)});
  std::string key = store::MetaKey(id);
  std::string value = store::EncodeMeta(key, tenant, create_time, base);
  ops_.push_back({Op::kPut, std::move(key), std::move(value)});
  ops_.push_back({Op::kPut, store::UsedKey(id), store::EncodeTime(absl::Now())});
}

void SessionStore::Batch::PutRecord(const std::string& id, const StoredRecord& record) {
  std::string key = store::LogKey(id, record.rec);
  std::string value = store::EncodeRecord(key, record);
  ops_.push_back({Op::kPut, std::move(key), std::move(value)});
  ops_.push_back({Op::kPut, store::UsedKey(id), store::EncodeTime(absl::Now())});
}

void SessionStore::Batch::DeleteRecord(const std::string& id, int64_t rec) {
  ops_.push_back({Op::kDelete, store::LogKey(id, rec), ""});
}

void SessionStore::Batch::DeleteSession(const std::string& id) {
  ops_.push_back({Op::kDelete, store::MetaKey(id), ""});
  ops_.push_back({Op::kDelete, store::UsedKey(id), ""});
  ops_.push_back({Op::kDeleteRange, store::LogBegin(id), store::LogEnd(id)});
}

// ------------------------------------------------------------------ open

absl::StatusOr<std::unique_ptr<SessionStore>> SessionStore::Open(const StoreOptions& options,
                                                                 StoreLoad* load) {
  std::error_code ec;
  std::filesystem::create_directories(options.dir, ec);
  rocksdb::Status s;
  rocksdb::DB* db = TryOpen(options.dir, &s);
  bool read_only = false;
  if (db == nullptr && IsLockError(s)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "state_dir ", options.dir, " is in use by another longctxd (its LOCK is held: ",
        s.ToString(), "); stop that server or give this one another state_dir"));
  }
  if (db == nullptr && (IsPermissionError(s) || ec)) {
    // Serve what the store holds; nothing new can be made durable.
    read_only = true;
    load->damage = absl::StrCat("state_dir ", options.dir, " is not writable (",
                                ec ? ec.message() : s.ToString(), "); durable writes will fail");
    rocksdb::Status ro = rocksdb::DB::OpenForReadOnly(DbOptions(), options.dir, &db);
    if (!ro.ok()) db = nullptr;
  } else if (db == nullptr) {
    db = OpenDamaged(options.dir, s, load);
    read_only = db == nullptr;
  }
  load->read_only = read_only;
  std::unique_ptr<SessionStore> store(
      new SessionStore(options, std::unique_ptr<rocksdb::DB>(db), read_only));
  if (db != nullptr) store->Load(load);
  return store;
}

SessionStore::SessionStore(StoreOptions options, std::unique_ptr<rocksdb::DB> db, bool read_only)
    : options_(std::move(options)), db_(std::move(db)), read_only_(read_only) {
  writer_ = std::thread([this] { WriterLoop(); });
}

SessionStore::~SessionStore() {
  Close();
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  writer_.join();
}

void SessionStore::Close() {
  absl::MutexLock lock(&mu_);
  if (closed_) return;
  // Everything queued is written first.
  mu_.Await(absl::Condition(
      +[](SessionStore* s)
           ABSL_NO_THREAD_SAFETY_ANALYSIS { return s->queue_.empty() && !s->writing_; },
      this));
  closed_ = true;
  if (db_ != nullptr && !read_only_) {
    rocksdb::FlushOptions flush;
    flush.wait = true;
    db_->Flush(flush).PermitUncheckedError();
    db_->SyncWAL().PermitUncheckedError();
  }
  if (db_ != nullptr) db_->Close().PermitUncheckedError();
  db_.reset();
}

int64_t SessionStore::DiskBytes() const {
  absl::MutexLock lock(&mu_);
  if (db_ == nullptr || closed_) return 0;
  uint64_t sst = 0, mem = 0;
  db_->GetIntProperty(rocksdb::DB::Properties::kTotalSstFilesSize, &sst);
  db_->GetIntProperty(rocksdb::DB::Properties::kCurSizeAllMemTables, &mem);
  // The memtable's bytes are in the write-ahead log until flushed.
  return static_cast<int64_t>(sst + mem);
}

// ------------------------------------------------------------------ writer

void SessionStore::Commit(Batch batch, Done done) {
  absl::MutexLock lock(&mu_);
  queue_.push_back({std::move(batch), std::move(done)});
}

void SessionStore::WriterLoop() {
  for (;;) {
    std::deque<Entry> group;
    bool closed = false;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](SessionStore* s)
               ABSL_NO_THREAD_SAFETY_ANALYSIS { return !s->queue_.empty() || s->stopping_; },
          this));
      if (queue_.empty()) return;
      group.swap(queue_);
      closed = closed_;
      writing_ = true;
    }
    // Callbacks run without mu_ held: they may Commit again.
    const absl::Status s =
        closed ? absl::UnavailableError("the session store is closed (the server is stopping)")
               : WriteGroup(group);
    for (Entry& e : group) e.done(s);
    absl::MutexLock lock(&mu_);
    writing_ = false;
  }
}

absl::Status SessionStore::WriteGroup(const std::deque<Entry>& group) {
  rocksdb::WriteBatch wb;
  for (const Entry& e : group) {
    for (const Batch::Op& op : e.batch.ops_) {
      if (op.type == Batch::Op::kPut) wb.Put(op.key, op.value);
      if (op.type == Batch::Op::kDelete) wb.Delete(op.key);
      if (op.type == Batch::Op::kDeleteRange) wb.DeleteRange(op.key, op.value);
    }
  }
  if (wb.Count() == 0) return absl::OkStatus();
  if (read_only_ || db_ == nullptr) {
    stats_.write_errors_total.fetch_add(1);
    return absl::UnavailableError(absl::StrCat("the session store in ", options_.dir,
                                               " is not writable; nothing can be made durable"));
  }
  // After a failed write RocksDB refuses writes until resumed (e.g. once the
  // disk has room again).
  if (failed_) db_->Resume();
  rocksdb::WriteOptions wo;
  wo.sync = options_.durability == Durability::kSync;
  const absl::Time t0 = absl::Now();
  const rocksdb::Status s = db_->Write(wo, &wb);
  stats_.commit_seconds.Observe(absl::ToDoubleSeconds(absl::Now() - t0));
  stats_.commits_total.fetch_add(1);
  stats_.batches_total.fetch_add(static_cast<int64_t>(group.size()));
  failed_ = !s.ok();
  if (s.ok()) return absl::OkStatus();
  stats_.write_errors_total.fetch_add(1);
  return WriteError(s);
}

}  // namespace longctx
