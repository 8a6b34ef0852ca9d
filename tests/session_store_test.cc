// The durable session store (engine/store): record encoding, commits in
// order, reopening, the directory lock and damage reported per session.
#include "engine/store/session_store.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "absl/synchronization/notification.h"
#include "engine/store/store_records.h"
#include "gtest/gtest.h"

namespace longctx {
namespace {
namespace fs = std::filesystem;

class SessionStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/longctx-store-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    options_.dir = tmpl;
  }
  void TearDown() override { fs::remove_all(options_.dir); }

  std::unique_ptr<SessionStore> Open(StoreLoad* load) {
    auto store = SessionStore::Open(options_, load);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? std::move(*store) : nullptr;
  }

  static absl::Status CommitWait(SessionStore& store, SessionStore::Batch batch) {
    absl::Notification done;
    absl::Status result;
    store.Commit(std::move(batch), [&](absl::Status s) {
      result = s;
      done.Notify();
    });
    done.WaitForNotification();
    return result;
  }

  static StoredRecord Segment(int64_t rec, int64_t seq, std::vector<int32_t> tokens) {
    StoredRecord r;
    r.rec = rec;
    r.seq = seq;
    r.tokens = std::move(tokens);
    return r;
  }

  StoreOptions options_;
};

TEST(StoreRecordsTest, RoundTripAndDamage) {
  const std::string key = store::LogKey("s1", 7);
  StoredRecord r;
  r.rec = 7;
  r.kind = StoredRecord::Kind::kTurn;
  r.seq = 3;
  r.tokens = {1, 2, 3, 70000};
  const std::string value = store::EncodeRecord(key, r);
  auto back = store::DecodeRecord(key, value);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->rec, 7);
  EXPECT_EQ(back->kind, StoredRecord::Kind::kTurn);
  EXPECT_EQ(back->seq, 3);
  EXPECT_EQ(back->tokens, r.tokens);
  EXPECT_EQ(store::LogKeyId(key), "s1");
  // A flipped bit, a truncation and a value under another key are all caught.
  std::string flipped = value;
  flipped[10] ^= 1;
  EXPECT_TRUE(absl::IsDataLoss(store::DecodeRecord(key, flipped).status()));
  EXPECT_TRUE(absl::IsDataLoss(store::DecodeRecord(key, value.substr(0, 12)).status()));
  EXPECT_TRUE(absl::IsDataLoss(store::DecodeRecord(store::LogKey("s2", 7), value).status()));
  // Keys sort by record number.
  EXPECT_LT(store::LogKey("s1", 255), store::LogKey("s1", 256));
  EXPECT_LT(store::LogKey("s1", 1 << 20), store::LogEnd("s1"));
}

TEST_F(SessionStoreTest, CommitsSurviveReopening) {
  StoreLoad load;
  auto store = Open(&load);
  ASSERT_NE(store, nullptr);
  EXPECT_TRUE(load.sessions.empty());
  SessionStore::Batch b;
  b.PutSession("a", "t1", absl::FromUnixSeconds(1000), "base-a");
  b.PutRecord("a", Segment(0, 1, {5, 6}));
  b.PutRecord("a", Segment(1, 2, {7}));
  b.PutSession("b", "t2", absl::FromUnixSeconds(2000), "base-b");
  ASSERT_TRUE(CommitWait(*store, std::move(b)).ok());
  SessionStore::Batch undo;
  undo.DeleteRecord("a", 1);
  undo.DeleteSession("b");
  ASSERT_TRUE(CommitWait(*store, std::move(undo)).ok());
  store.reset();

  StoreLoad again;
  store = Open(&again);
  ASSERT_EQ(again.sessions.size(), 1u);
  const StoredSession& a = again.sessions[0];
  EXPECT_EQ(a.id, "a");
  EXPECT_EQ(a.tenant, "t1");
  EXPECT_EQ(a.base, "base-a");
  EXPECT_EQ(a.create_time, absl::FromUnixSeconds(1000));
  ASSERT_EQ(a.records.size(), 1u);
  EXPECT_EQ(a.records[0].tokens, (std::vector<int32_t>{5, 6}));
  EXPECT_TRUE(again.lost.empty());
  EXPECT_TRUE(again.damage.empty());
}

TEST_F(SessionStoreTest, CallbacksRunInSubmissionOrder) {
  StoreLoad load;
  auto store = Open(&load);
  std::vector<int> order;
  absl::Mutex mu;
  absl::Notification last;
  for (int i = 0; i < 200; ++i) {
    SessionStore::Batch b;
    if (i % 3 != 0) b.PutRecord("x", Segment(i, i + 1, {i}));
    store->Commit(std::move(b), [&, i](absl::Status s) {
      EXPECT_TRUE(s.ok());
      absl::MutexLock lock(&mu);
      order.push_back(i);
      if (i == 199) last.Notify();
    });
  }
  last.WaitForNotification();
  ASSERT_EQ(order.size(), 200u);
  for (int i = 0; i < 200; ++i) EXPECT_EQ(order[i], i);
  EXPECT_LE(store->stats().commits_total.load(), 200);
}

TEST_F(SessionStoreTest, ASecondOpenOfTheDirectoryIsRefused) {
  StoreLoad load;
  auto store = Open(&load);
  StoreLoad other;
  auto second = SessionStore::Open(options_, &other);
  ASSERT_FALSE(second.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(second.status()));
  EXPECT_NE(second.status().message().find("in use by another longctxd"), std::string::npos);
}

TEST(StoreRecordsTest, DamagedBaseIsDataLoss) {
  const std::string key = store::MetaKey("s1");
  const std::string value = store::EncodeMeta(key, "tenant", absl::FromUnixSeconds(5), "snap");
  StoredSession s;
  ASSERT_TRUE(store::DecodeMeta(key, value, &s).ok());
  EXPECT_EQ(s.tenant, "tenant");
  EXPECT_EQ(s.base, "snap");
  std::string bad = value;
  bad[3] ^= 0x40;
  EXPECT_TRUE(absl::IsDataLoss(store::DecodeMeta(key, bad, &s)));
  EXPECT_TRUE(absl::IsDataLoss(store::DecodeMeta(store::MetaKey("s2"), value, &s)));
}

TEST_F(SessionStoreTest, AnUnwritableDirectoryFailsWritesNotOpen) {
  const std::string file = options_.dir + "/file";
  { std::ofstream(file) << "x"; }
  options_.dir = file + "/state";
  StoreLoad load;
  auto store = SessionStore::Open(options_, &load);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_TRUE(load.read_only);
  EXPECT_FALSE(load.damage.empty());
  SessionStore::Batch b;
  b.PutSession("a", "t", absl::Now(), "base");
  EXPECT_TRUE(absl::IsUnavailable(CommitWait(**store, std::move(b))));
  options_.dir = fs::path(file).parent_path();
}

}  // namespace
}  // namespace longctx
