// SessionStore::Load: reads every session's base and log at open, keeping
// damage to the sessions it touches.
#include <memory>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "engine/store/session_store.h"
#include "engine/store/store_records.h"
#include "rocksdb/db.h"
#include "rocksdb/iterator.h"

namespace longctx {
namespace {

absl::string_view View(const rocksdb::Slice& s) { return absl::string_view(s.data(), s.size()); }

rocksdb::ReadOptions CheckedReads() {
  rocksdb::ReadOptions ro;
  ro.verify_checksums = true;
  ro.fill_cache = false;
  return ro;
}

// Reads `id`'s log records in order; DATA_LOSS when any is damaged or the
// table block holding them cannot be read.
absl::Status ReadLog(rocksdb::DB* db, const std::string& id, std::vector<StoredRecord>* out) {
  const std::string begin = store::LogBegin(id), end = store::LogEnd(id);
  std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(CheckedReads()));
  for (it->Seek(begin); it->Valid() && it->key().ToString() < end; it->Next()) {
    auto rec = store::DecodeRecord(View(it->key()), View(it->value()));
    if (!rec.ok()) return rec.status();
    out->push_back(*std::move(rec));
  }
  if (!it->status().ok()) {
    return absl::DataLossError(absl::StrCat("its log is unreadable: ", it->status().ToString()));
  }
  return absl::OkStatus();
}

}  // namespace

// Reads the session `id` whose base is `meta` into `load`.
void SessionStore::LoadSession(const std::string& id, absl::string_view meta, StoreLoad* load) {
  StoredSession s;
  s.id = id;
  absl::Status st = store::DecodeMeta(store::MetaKey(id), meta, &s);
  if (st.ok()) st = ReadLog(db_.get(), s.id, &s.records);
  std::string used;
  if (db_->Get(CheckedReads(), store::UsedKey(s.id), &used).ok()) {
    s.last_used = store::DecodeTime(used);
  }
  if (s.last_used == absl::InfinitePast()) s.last_used = s.create_time;
  if (st.ok()) {
    load->sessions.push_back(std::move(s));
  } else {
    load->lost.push_back({s.id, s.tenant, std::string(st.message())});
  }
}

void SessionStore::Load(StoreLoad* load) {
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(CheckedReads()));
  const std::string prefix(store::kMetaPrefix);
  absl::flat_hash_set<std::string> seen;
  for (it->Seek(prefix); it->Valid(); it->Next()) {
    const rocksdb::Slice key = it->key();
    if (!key.starts_with(prefix)) break;
    const std::string id = key.ToString().substr(prefix.size());
    seen.insert(id);
    LoadSession(id, View(it->value()), load);
  }
  if (it->status().ok()) return;
  // Part of the index is unreadable: find the sessions it listed through
  // their other keys, and read each base on its own, so that only the bases
  // in the damaged block are lost.
  const std::string index_error = it->status().ToString();
  const std::string used(store::kUsedPrefix);
  std::unique_ptr<rocksdb::Iterator> u(db_->NewIterator(CheckedReads()));
  for (u->Seek(used); u->Valid() && u->key().starts_with(used); u->Next()) {
    const std::string id = u->key().ToString().substr(used.size());
    if (!seen.insert(id).second) continue;
    std::string meta;
    if (rocksdb::Status g = db_->Get(CheckedReads(), store::MetaKey(id), &meta); g.ok()) {
      LoadSession(id, meta, load);
    } else {
      load->lost.push_back({id, "", absl::StrCat("its base is unreadable: ", g.ToString())});
    }
  }
  if (!u->status().ok()) {
    // The sessions listed only in the unreadable parts cannot be named.
    load->lost.push_back({"", "", absl::StrCat("part of the store is unreadable: ", index_error)});
  }
}

}  // namespace longctx
