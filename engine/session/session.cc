#include "engine/session/session.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace longctx {

Session::Session(std::string id, std::string tenant, SessionSettings settings, absl::Time now)
    : id_(std::move(id)),
      tenant_(std::move(tenant)),
      settings_(std::move(settings)),
      create_time_(now),
      expire_time_(now + settings_.ttl) {}

SessionInfo Session::Info() const {
  SessionInfo info;
  info.id = id_;
  info.tenant = tenant_;
  info.settings = settings_;
  info.create_time = create_time_;
  info.tokens = tokens();
  info.ingested_tokens = ingested_.load(std::memory_order_relaxed);
  info.device_bytes = device_bytes();
  info.host_bytes = host_bytes();
  info.memory_bytes = memory_bytes_.load(std::memory_order_relaxed);
  info.folded_tokens = folded_tokens_.load(std::memory_order_relaxed);
  info.dropped_tokens = dropped_tokens_.load(std::memory_order_relaxed);
  info.recovering = recovering();
  absl::MutexLock lock(&mu_);
  info.expire_time = expire_time_;
  info.expired = closed() && close_reason_ == "expired";
  info.segments = segments_;
  info.next_seq = next_seq_;
  return info;
}

absl::StatusOr<Session::SegmentClaim> Session::ClaimSegment(int64_t seq, int64_t tokens,
                                                            IngestAck* ack) {
  absl::MutexLock lock(&mu_);
  if (closed()) {
    return absl::FailedPreconditionError(absl::StrCat("session ", id_, " is ", close_reason_));
  }
  if (seq < 1) {
    return absl::InvalidArgumentError(absl::StrCat("segment.seq must be >= 1 (got ", seq, ")"));
  }
  if (seq < next_seq_) {
    if (seq > applied_seq_) return SegmentClaim::kInFlight;
    LookupAckLocked(seq, ack);
    return SegmentClaim::kDuplicate;
  }
  if (seq > next_seq_) {
    return absl::FailedPreconditionError(
        absl::StrCat("segment.seq ", seq, " is out of order: session ", id_, " expects seq ",
                     next_seq_, " (last applied ", applied_seq_, ")"));
  }
  const int64_t limit = settings_.max_tokens;
  const int64_t held = tokens_.load(std::memory_order_acquire) + reserved_;
  if (held + tokens > limit) {
    return absl::ResourceExhaustedError(
        absl::StrCat("segment ", seq, " (", tokens, " tokens) would bring session ", id_, " to ",
                     held + tokens, " tokens, over its limit of ", limit));
  }
  reserved_ += tokens;
  ++next_seq_;
  return SegmentClaim::kApply;
}

void Session::LookupAckLocked(int64_t seq, IngestAck* ack) const {
  ack->seq = seq;
  ack->duplicate = true;
  ack->tokens_ingested = 0;
  ack->session_tokens = tokens_.load(std::memory_order_acquire);
  // Acks are kept in seq order: find this one's original counts if still held.
  if (!acks_.empty() && seq >= acks_.front().seq && seq <= acks_.back().seq) {
    const IngestAck& original = acks_[static_cast<size_t>(seq - acks_.front().seq)];
    ack->tokens_ingested = original.tokens_ingested;
    ack->session_tokens = original.session_tokens;
  }
}

bool Session::LookupAck(int64_t seq, IngestAck* ack) const {
  absl::MutexLock lock(&mu_);
  if (seq < 1 || seq > applied_seq_) return false;
  LookupAckLocked(seq, ack);
  return true;
}

void Session::CompleteSegment(const IngestAck& ack) {
  absl::MutexLock lock(&mu_);
  // Under mu_ so that tokens + reserved never counts the segment twice.
  tokens_.store(ack.session_tokens, std::memory_order_release);
  reserved_ -= ack.tokens_ingested;
  applied_seq_ = ack.seq;
  ++segments_;
  acks_.push_back(ack);
  if (acks_.size() > kAckHistory) acks_.pop_front();
}

void Session::FailSegment(int64_t seq, int64_t tokens) {
  absl::MutexLock lock(&mu_);
  reserved_ -= tokens;
  if (seq < next_seq_) next_seq_ = seq;
}

absl::Status Session::Reserve(int64_t tokens) {
  absl::MutexLock lock(&mu_);
  const int64_t held = tokens_.load(std::memory_order_acquire) + reserved_;
  if (held + tokens > settings_.max_tokens) {
    return absl::ResourceExhaustedError(absl::StrCat("session ", id_, " holds ", held, " tokens; ",
                                                     tokens, " more would exceed its limit of ",
                                                     settings_.max_tokens));
  }
  reserved_ += tokens;
  return absl::OkStatus();
}

void Session::Unreserve(int64_t tokens) {
  absl::MutexLock lock(&mu_);
  reserved_ -= tokens;
}

void Session::CompleteAppend(int64_t tokens, int64_t session_tokens) {
  absl::MutexLock lock(&mu_);
  tokens_.store(session_tokens, std::memory_order_release);
  reserved_ -= tokens;
}

void Session::RestoreIngestState(int64_t applied_seq, int64_t segments, int64_t ingested_tokens) {
  absl::MutexLock lock(&mu_);
  applied_seq_ = applied_seq;
  next_seq_ = applied_seq + 1;
  segments_ = segments;
  ingested_.store(ingested_tokens, std::memory_order_relaxed);
}

void Session::BeginUse() {
  absl::MutexLock lock(&mu_);
  ++in_use_;
}

void Session::EndUse(absl::Time now) {
  absl::MutexLock lock(&mu_);
  --in_use_;
  expire_time_ = now + settings_.ttl;
}

bool Session::IdleExpired(absl::Time now) const {
  absl::MutexLock lock(&mu_);
  return in_use_ == 0 && now >= expire_time_;
}

void Session::Close(std::string reason) {
  absl::MutexLock lock(&mu_);
  if (closed()) return;
  close_reason_ = std::move(reason);
  closed_.store(true, std::memory_order_release);
}

absl::Status Session::CheckOpen() const {
  if (!closed()) return absl::OkStatus();
  absl::MutexLock lock(&mu_);
  return absl::FailedPreconditionError(absl::StrCat("session ", id_, " is ", close_reason_));
}

void Session::PublishCounters(int64_t tokens, int64_t device_bytes) {
  tokens_.store(tokens, std::memory_order_release);
  device_bytes_.store(device_bytes, std::memory_order_relaxed);
}

void Session::PublishInfini(int64_t memory_bytes, int64_t folded_tokens, int64_t dropped_tokens) {
  memory_bytes_.store(memory_bytes, std::memory_order_relaxed);
  folded_tokens_.store(folded_tokens, std::memory_order_relaxed);
  dropped_tokens_.store(dropped_tokens, std::memory_order_relaxed);
}

}  // namespace longctx
