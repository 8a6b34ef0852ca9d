// The durable session store (docs/service.md "Durability"): one RocksDB
// database under the server's state_dir holding what every session is rebuilt
// from after a restart.
//
// Layout. Each session has its own keys, so damage to one session's keys
// loses that session only:
//   "m/<id>"            its base: tenant, creation time and a session snapshot
//                       (engine/session/session_codec.h: settings, counters,
//                       the tokens it started with, an imported Infini state);
//   "u/<id>"            when its last record was written (recovery order);
//   "l/<id>/<rec:u64be>" one log record: an ingested segment (seq, tokens) or a
//                       persisted Generate turn (tokens), in record order.
// Every value ends with an XXH3 checksum over its key and value, on top of
// RocksDB's own block checksums. A segment that fails after its record was
// written is rolled back by deleting the record; deleting or expiring a
// session deletes its keys.
//
// Group commit. Commit() queues a batch; one writer thread writes everything
// queued while the previous write ran as a single RocksDB write (fsync'd under
// Durability::kSync), then calls the callbacks in submission order. So a
// callback runs only after every batch submitted before it is durable, and
// callbacks with no writes (barriers) cost no I/O.
//
// Thread safety: every method is safe from any thread. Callbacks run on the
// writer thread and must not block.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/stats.h"

namespace rocksdb {
class DB;
}

namespace longctx {

// What an Ingest ack promises (docs/service.md): kNone, memory only; kAck, the
// segment is in the store's write-ahead log (survives a process crash); kSync,
// the log is fsync'd too (survives a machine crash).
enum class Durability { kNone, kAck, kSync };
absl::StatusOr<Durability> ParseDurability(const std::string& name);
const char* DurabilityName(Durability d);

struct StoreOptions {
  Durability durability = Durability::kAck;
  std::string dir;  // REQUIRES: non-empty unless durability is kNone
};

// One record of a session's log.
struct StoredRecord {
  enum class Kind : uint8_t { kSegment = 1, kTurn = 2 };
  int64_t rec = 0;
  Kind kind = Kind::kSegment;
  int64_t seq = 0;  // kSegment: the client's sequence number
  std::vector<int32_t> tokens;
};

struct StoredSession {
  std::string id;
  std::string tenant;
  absl::Time create_time;
  absl::Time last_used = absl::InfinitePast();  // its last record's write
  std::string base;                             // EncodeSessionSnapshot bytes
  std::vector<StoredRecord> records;            // by rec
};

// What Open() found.
struct StoreLoad {
  std::vector<StoredSession> sessions;
  struct Lost {
    std::string id;
    std::string tenant;  // empty when its base was unreadable
    std::string reason;
  };
  std::vector<Lost> lost;
  // Non-empty when the store was damaged at open: what was done about it
  // (repaired, or moved aside and started empty).
  std::string damage;
  bool read_only = false;  // state_dir is not writable: every Commit fails
};

// Counters the server exports (docs/service.md metrics).
struct StoreStats {
  StoreStats();
  Histogram commit_seconds;  // one group write (with fsync under sync)
  std::atomic<int64_t> commits_total{0};
  std::atomic<int64_t> batches_total{0};
  std::atomic<int64_t> write_errors_total{0};
};

class SessionStore {
 public:
  // A set of changes written atomically.
  class Batch {
   public:
    void PutSession(const std::string& id, const std::string& tenant, absl::Time create_time,
                    const std::string& base);
    void PutRecord(const std::string& id, const StoredRecord& record);
    void DeleteRecord(const std::string& id, int64_t rec);
    void DeleteSession(const std::string& id);
    bool empty() const { return ops_.empty(); }

   private:
    friend class SessionStore;
    struct Op {
      enum Type { kPut, kDelete, kDeleteRange } type;
      std::string key;
      std::string value;  // kPut: the value; kDeleteRange: the end key
    };
    std::vector<Op> ops_;
  };

  // Opens (creating) the store in options.dir and reads every session into
  // `load`. FAILED_PRECONDITION when another process holds the directory;
  // other failures (damage, a read-only directory) are contained and told in
  // `load`. REQUIRES: options.durability != kNone.
  static absl::StatusOr<std::unique_ptr<SessionStore>> Open(const StoreOptions& options,
                                                            StoreLoad* load);
  ~SessionStore();  // Close()s
  SessionStore(const SessionStore&) = delete;
  SessionStore& operator=(const SessionStore&) = delete;

  using Done = std::function<void(absl::Status)>;
  // Queues `batch`; `done` gets OK once it is durable, or UNAVAILABLE /
  // RESOURCE_EXHAUSTED (disk full) when it could not be written. An empty
  // batch is a barrier: `done` runs once everything queued before is durable.
  void Commit(Batch batch, Done done);

  // Writes what is queued, flushes the memtable to table files and closes the
  // database; later Commits fail with UNAVAILABLE. Idempotent. REQUIRES: not
  // called from a Commit callback.
  void Close();

  Durability durability() const { return options_.durability; }
  const std::string& dir() const { return options_.dir; }
  // Live bytes on disk (table files and write-ahead log), for metrics.
  int64_t DiskBytes() const;
  StoreStats& stats() { return stats_; }
  const StoreStats& stats() const { return stats_; }

 private:
  struct Entry {
    Batch batch;
    Done done;
  };
  SessionStore(StoreOptions options, std::unique_ptr<rocksdb::DB> db, bool read_only);
  // Reads every session (session_store_load.cc).
  void Load(StoreLoad* load);
  void LoadSession(const std::string& id, absl::string_view meta, StoreLoad* load);
  void WriterLoop();
  absl::Status WriteGroup(const std::deque<Entry>& group);

  const StoreOptions options_;
  std::unique_ptr<rocksdb::DB> db_;  // reset by Close() under mu_
  const bool read_only_;
  StoreStats stats_;
  bool failed_ = false;  // writer thread only: the last write failed

  mutable absl::Mutex mu_;
  std::deque<Entry> queue_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;   // a group is being written
  bool closed_ ABSL_GUARDED_BY(mu_) = false;    // Close()d: commits fail
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;  // the writer ends once idle
  std::thread writer_;
};

// The per-user default state directory: $XDG_STATE_HOME/longctx, else
// $HOME/.local/state/longctx, else ./longctx-state.
std::string DefaultStateDir();

}  // namespace longctx
