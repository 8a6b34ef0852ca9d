// Session bookkeeping: ingest sequence numbers, token limits, TTL expiry,
// tenant isolation, quotas and paging.
#include "engine/session/session_manager.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace longctx {
namespace {

using ::testing::HasSubstr;

SessionSettings Settings(int64_t window = 1000, absl::Duration ttl = absl::Minutes(5)) {
  SessionSettings s;
  s.window_tokens = window;
  s.max_tokens = window;
  s.ttl = ttl;
  return s;
}

TEST(SessionTest, SegmentsApplyInOrderAndResendsAreReacknowledged) {
  Session s("s", "t", Settings(), absl::Now());
  IngestAck ack;
  ASSERT_EQ(*s.ClaimSegment(1, 10, &ack), Session::SegmentClaim::kApply);
  s.CompleteSegment({1, 10, 10, false});
  ASSERT_EQ(*s.ClaimSegment(2, 5, &ack), Session::SegmentClaim::kApply);
  s.CompleteSegment({2, 5, 15, false});
  EXPECT_EQ(s.tokens(), 15);

  // Resending seq 1 re-acks with its original counts and applies nothing.
  ASSERT_EQ(*s.ClaimSegment(1, 10, &ack), Session::SegmentClaim::kDuplicate);
  EXPECT_TRUE(ack.duplicate);
  EXPECT_EQ(ack.seq, 1);
  EXPECT_EQ(ack.tokens_ingested, 10);
  EXPECT_EQ(ack.session_tokens, 10);
  EXPECT_EQ(s.Info().next_seq, 3);
  EXPECT_EQ(s.Info().segments, 2);
}

TEST(SessionTest, GapsAndReorderingAreRejectedNamingTheExpectedSeq) {
  Session s("s", "t", Settings(), absl::Now());
  IngestAck ack;
  auto gap = s.ClaimSegment(2, 1, &ack);
  EXPECT_EQ(gap.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(gap.status().message(), HasSubstr("expects seq 1"));
  EXPECT_EQ(s.ClaimSegment(0, 1, &ack).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.ClaimSegment(-3, 1, &ack).status().code(), absl::StatusCode::kInvalidArgument);

  ASSERT_TRUE(s.ClaimSegment(1, 1, &ack).ok());
  ASSERT_TRUE(s.ClaimSegment(2, 1, &ack).ok());
  // 1 and 2 are in flight: a resend of 1 is acknowledged once 1 is applied.
  EXPECT_EQ(*s.ClaimSegment(1, 1, &ack), Session::SegmentClaim::kInFlight);
  EXPECT_FALSE(s.LookupAck(1, &ack));
  s.CompleteSegment({1, 1, 1, false});
  ASSERT_TRUE(s.LookupAck(1, &ack));
  EXPECT_TRUE(ack.duplicate);
  EXPECT_EQ(ack.session_tokens, 1);
  // 4 skips 3.
  EXPECT_EQ(s.ClaimSegment(4, 1, &ack).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(SessionTest, FailedSegmentRewindsTheExpectedSeq) {
  Session s("s", "t", Settings(), absl::Now());
  IngestAck ack;
  ASSERT_TRUE(s.ClaimSegment(1, 4, &ack).ok());
  ASSERT_TRUE(s.ClaimSegment(2, 4, &ack).ok());
  ASSERT_TRUE(s.ClaimSegment(3, 4, &ack).ok());
  s.CompleteSegment({1, 4, 4, false});
  s.FailSegment(2, 4);
  s.FailSegment(3, 4);
  EXPECT_EQ(s.Info().next_seq, 2);
  EXPECT_EQ(*s.ClaimSegment(2, 4, &ack), Session::SegmentClaim::kApply);
}

TEST(SessionTest, TokenLimitCountsInFlightSegments) {
  Session s("s", "t", Settings(/*window=*/100), absl::Now());
  IngestAck ack;
  ASSERT_TRUE(s.ClaimSegment(1, 60, &ack).ok());
  auto over = s.ClaimSegment(2, 41, &ack);
  EXPECT_EQ(over.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(over.status().message(), HasSubstr("limit of 100"));
  ASSERT_TRUE(s.ClaimSegment(2, 40, &ack).ok());
  s.CompleteSegment({1, 60, 60, false});
  EXPECT_EQ(s.Reserve(1).code(), absl::StatusCode::kResourceExhausted);
  s.FailSegment(2, 40);
  EXPECT_TRUE(s.Reserve(40).ok());
}

TEST(SessionTest, ClosedSessionRefusesSegments) {
  Session s("s", "t", Settings(), absl::Now());
  s.Close("deleted");
  s.Close("expired");  // the first reason wins
  IngestAck ack;
  auto r = s.ClaimSegment(1, 1, &ack);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("deleted"));
  EXPECT_EQ(s.CheckOpen().code(), absl::StatusCode::kFailedPrecondition);
}

class SessionManagerTest : public ::testing::Test {
 protected:
  SessionManagerTest() : manager_(Limits(), [this] { return now_; }) {}
  static SessionLimits Limits() {
    SessionLimits l;
    l.max_sessions = 5;
    l.max_sessions_per_tenant = 3;
    return l;
  }
  absl::Time now_ = absl::FromUnixSeconds(1'700'000'000);
  SessionManager manager_;
};

TEST_F(SessionManagerTest, CreateGetDelete) {
  auto s = manager_.Create("alice", "", Settings());
  ASSERT_TRUE(s.ok());
  EXPECT_FALSE((*s)->id().empty());
  EXPECT_EQ(*manager_.Get("alice", (*s)->id()), *s);
  ASSERT_TRUE(manager_.Delete("alice", (*s)->id()).ok());
  EXPECT_TRUE((*s)->closed());
  EXPECT_EQ(manager_.Get("alice", (*s)->id()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(manager_.Delete("alice", (*s)->id()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(manager_.Get("alice", "").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(SessionManagerTest, GeneratedIdsStartWithThePrefix) {
  SessionLimits limits = Limits();
  limits.id_prefix = "longctxd-12.";
  SessionManager named(limits, [this] { return now_; });
  auto s = named.Create("alice", "", Settings());
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(absl::StartsWith((*s)->id(), "longctxd-12.s-")) << (*s)->id();
  EXPECT_EQ((*s)->id().size(), std::string("longctxd-12.s-").size() + 32);
  EXPECT_TRUE(ValidateSessionId((*s)->id()).ok());
  // A chosen id is kept as given.
  auto chosen = named.Create("alice", "doc-1", Settings());
  ASSERT_TRUE(chosen.ok());
  EXPECT_EQ((*chosen)->id(), "doc-1");
}

TEST_F(SessionManagerTest, ClientChosenIdsAreValidatedAndUnique) {
  ASSERT_TRUE(manager_.Create("alice", "doc-1.v2_x", Settings()).ok());
  EXPECT_EQ(manager_.Create("alice", "doc-1.v2_x", Settings()).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(manager_.Create("alice", "has space", Settings()).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(manager_.Create("alice", std::string(65, 'a'), Settings()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(SessionManagerTest, TenantsSeeOnlyTheirOwnSessions) {
  auto s = manager_.Create("alice", "shared-name", Settings());
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(manager_.Get("bob", "shared-name").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(manager_.Delete("bob", "shared-name").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(manager_.List("bob", 10, "", {}).sessions.empty());
  EXPECT_FALSE((*s)->closed());
  // Ids are scoped per tenant: bob may hold his own "shared-name", and
  // creating it says nothing about alice's.
  auto b = manager_.Create("bob", "shared-name", Settings());
  ASSERT_TRUE(b.ok());
  EXPECT_NE(*b, *s);
  EXPECT_EQ(*manager_.Get("alice", "shared-name"), *s);
  EXPECT_EQ(*manager_.Get("bob", "shared-name"), *b);
  ASSERT_TRUE(manager_.Delete("bob", "shared-name").ok());
  EXPECT_FALSE((*s)->closed());
  EXPECT_EQ(manager_.List("alice", 10, "", {}).sessions.size(), 1u);
}

TEST_F(SessionManagerTest, GeneratedIdsCarry128RandomBits) {
  auto a = manager_.Create("alice", "", Settings());
  auto b = manager_.Create("alice", "", Settings());
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ((*a)->id().size(), 2u + 32u);
  EXPECT_NE((*a)->id(), (*b)->id());
  EXPECT_TRUE(ValidateSessionId((*a)->id()).ok());
}

TEST_F(SessionManagerTest, QuotasGiveResourceExhausted) {
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(manager_.Create("alice", "", Settings()).ok());
  auto r = manager_.Create("alice", "", Settings());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(r.status().message(), HasSubstr("max_sessions_per_tenant"));
  ASSERT_TRUE(manager_.Create("bob", "", Settings()).ok());
  ASSERT_TRUE(manager_.Create("bob", "", Settings()).ok());
  r = manager_.Create("carol", "", Settings());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(r.status().message(), HasSubstr("max_sessions"));
}

TEST_F(SessionManagerTest, IdleSessionsExpireAndSayExpired) {
  auto a = *manager_.Create("alice", "a", Settings(1000, absl::Seconds(10)));
  auto b = *manager_.Create("alice", "b", Settings(1000, absl::Seconds(10)));
  now_ += absl::Seconds(5);
  b->BeginUse();  // in use: never expires
  now_ += absl::Seconds(6);
  auto gone = manager_.ExpireIdle();
  ASSERT_EQ(gone.size(), 1u);
  EXPECT_EQ(gone[0], a);
  EXPECT_TRUE(a->closed());
  auto r = manager_.Get("alice", "a");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("expired"));
  EXPECT_EQ(manager_.Get("bob", "a").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(manager_.evictions(), 1);

  // Use restarts the TTL from the end of use.
  b->EndUse(now_);
  now_ += absl::Seconds(9);
  EXPECT_TRUE(manager_.ExpireIdle().empty());
  now_ += absl::Seconds(2);
  EXPECT_EQ(manager_.ExpireIdle().size(), 1u);
  EXPECT_EQ(manager_.size(), 0);
  // An expired id can be created again.
  EXPECT_TRUE(manager_.Create("alice", "a", Settings()).ok());
}

TEST_F(SessionManagerTest, ListPagesInIdOrderWithLabelSelector) {
  SessionLimits limits;
  limits.max_sessions = 100;
  limits.max_sessions_per_tenant = 100;
  SessionManager big(limits, [this] { return now_; });
  for (int i = 0; i < 7; ++i) {
    SessionSettings s = Settings();
    s.labels["parity"] = i % 2 ? "odd" : "even";
    ASSERT_TRUE(big.Create("alice", absl::StrCat("s", i), s).ok());
  }
  ASSERT_TRUE(big.Create("bob", "s99", Settings()).ok());
  std::vector<std::string> seen;
  std::string token;
  int pages = 0;
  do {
    auto page = big.List("alice", 3, token, {});
    for (const auto& s : page.sessions) seen.push_back(s->id());
    token = page.next_page_token;
    ++pages;
  } while (!token.empty());
  EXPECT_EQ(pages, 3);
  EXPECT_THAT(seen, ::testing::ElementsAre("s0", "s1", "s2", "s3", "s4", "s5", "s6"));
  auto odd = big.List("alice", 10, "", {{"parity", "odd"}});
  ASSERT_EQ(odd.sessions.size(), 3u);
  EXPECT_TRUE(odd.next_page_token.empty());
  // An exactly full last page has no next token.
  EXPECT_TRUE(big.List("alice", 7, "", {}).next_page_token.empty());
}

}  // namespace
}  // namespace longctx
