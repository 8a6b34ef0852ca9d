#include "engine/dist/inproc_communicator.h"

#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"

namespace longctx {

namespace {

enum class CollectiveOp { kBroadcast, kGather, kAllGather };

const char* OpName(CollectiveOp op) {
  switch (op) {
    case CollectiveOp::kBroadcast:
      return "Broadcast";
    case CollectiveOp::kGather:
      return "Gather";
    case CollectiveOp::kAllGather:
      return "AllGather";
  }
  return "?";
}

// What one rank brought to a collective.
struct Arrival {
  CollectiveOp op = CollectiveOp::kBroadcast;
  size_t bytes = 0;
  int root = 0;
  const void* send = nullptr;
  void* recv = nullptr;
};

}  // namespace

// State shared by the ranks of one group. A collective is two barriers: after the
// first every rank's buffers are known (and checked to agree), between the two
// each rank copies what it receives, and the second keeps senders' buffers alive
// until every receiver has copied.
class InProcessGroup {
 public:
  InProcessGroup(int world_size, absl::Duration timeout, InProcessCopy copy)
      : world_size_(world_size),
        timeout_(timeout),
        copy_(std::move(copy)),
        slots_(world_size),
        barriers_(world_size, 0) {}

  int world_size() const { return world_size_; }

  absl::Status Run(int rank, const Arrival& a) {
    std::vector<Arrival> slots;
    {
      absl::MutexLock lock(&mu_);
      if (!broken_.ok()) return broken_;
      slots_[static_cast<size_t>(rank)] = a;
      if (absl::Status s = Barrier(rank, OpName(a.op)); !s.ok()) return s;
      if (!broken_.ok()) return broken_;
      for (int r = 0; r < world_size_; ++r) {
        const Arrival& o = slots_[static_cast<size_t>(r)];
        if (o.op != a.op || o.bytes != a.bytes || o.root != a.root) {
          BreakLocked(absl::InternalError(
              absl::StrCat("collective mismatch: rank ", rank, " called ", OpName(a.op), "(",
                           a.bytes, " bytes, root ", a.root, "), rank ", r, " called ",
                           OpName(o.op), "(", o.bytes, " bytes, root ", o.root, ")")));
          return broken_;
        }
      }
      slots = slots_;
    }
    const size_t n = a.bytes;
    absl::Status copied;
    switch (a.op) {
      case CollectiveOp::kBroadcast:
        if (rank != a.root) copied = CopyBlock(a.recv, slots[static_cast<size_t>(a.root)].send, n);
        break;
      case CollectiveOp::kGather:
        if (rank != a.root) break;
        [[fallthrough]];
      case CollectiveOp::kAllGather:
        for (int r = 0; r < world_size_ && copied.ok(); ++r) {
          copied =
              CopyBlock(static_cast<char*>(a.recv) + r * n, slots[static_cast<size_t>(r)].send, n);
        }
        break;
    }
    absl::MutexLock lock(&mu_);
    if (!copied.ok()) {
      BreakLocked(absl::Status(copied.code(), absl::StrCat("rank ", rank, ": ", OpName(a.op),
                                                           " copy failed: ", copied.message())));
      return broken_;
    }
    if (absl::Status s = Barrier(rank, OpName(a.op)); !s.ok()) return s;
    return absl::OkStatus();
  }

  void Break(absl::Status why) {
    absl::MutexLock lock(&mu_);
    BreakLocked(std::move(why));
  }

  absl::Status health() const {
    absl::MutexLock lock(&mu_);
    return broken_;
  }

 private:
  absl::Status CopyBlock(void* dst, const void* src, size_t bytes) const {
    if (dst == src || bytes == 0) return absl::OkStatus();
    if (copy_) return copy_(dst, src, bytes);
    std::memcpy(dst, src, bytes);
    return absl::OkStatus();
  }

  void BreakLocked(absl::Status why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (broken_.ok()) broken_ = std::move(why);
  }

  // Waits until every rank has entered this barrier, the group breaks, or the
  // timeout passes (which breaks the group). OK when every rank arrived.
  absl::Status Barrier(int rank, const char* what) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const int64_t mine = ++barriers_[static_cast<size_t>(rank)];
    const int64_t generation = generation_;
    if (++arrived_ == world_size_) {
      arrived_ = 0;
      ++generation_;
      return absl::OkStatus();
    }
    auto passed = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return generation_ != generation || !broken_.ok();
    };
    if (!mu_.AwaitWithTimeout(absl::Condition(&passed), timeout_)) {
      std::vector<int> missing;
      for (int r = 0; r < world_size_; ++r) {
        if (barriers_[static_cast<size_t>(r)] < mine) missing.push_back(r);
      }
      BreakLocked(absl::UnavailableError(absl::StrCat(
          "rank ", rank, ": ", what, " timed out after ", absl::FormatDuration(timeout_),
          " waiting for rank(s) ", absl::StrJoin(missing, ", "))));
    }
    if (generation_ != generation) return absl::OkStatus();
    return broken_;
  }

  const int world_size_;
  const absl::Duration timeout_;
  const InProcessCopy copy_;
  mutable absl::Mutex mu_;
  std::vector<Arrival> slots_ ABSL_GUARDED_BY(mu_);
  std::vector<int64_t> barriers_ ABSL_GUARDED_BY(mu_);  // barriers entered, per rank
  int arrived_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status broken_ ABSL_GUARDED_BY(mu_);
};

std::vector<std::unique_ptr<InProcessCommunicator>> InProcessCommunicator::CreateGroup(
    int world_size, absl::Duration timeout, InProcessCopy copy) {
  auto group = std::make_shared<InProcessGroup>(world_size, timeout, std::move(copy));
  std::vector<std::unique_ptr<InProcessCommunicator>> ranks;
  for (int r = 0; r < world_size; ++r) {
    ranks.push_back(std::unique_ptr<InProcessCommunicator>(new InProcessCommunicator(group, r)));
  }
  return ranks;
}

InProcessCommunicator::InProcessCommunicator(std::shared_ptr<InProcessGroup> group, int rank)
    : group_(std::move(group)), rank_(rank) {}

InProcessCommunicator::~InProcessCommunicator() = default;

int InProcessCommunicator::world_size() const { return group_->world_size(); }

namespace {

absl::Status CheckRoot(int root, int world_size) {
  if (root < 0 || root >= world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("collective root ", root, " outside [0, ", world_size, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status InProcessCommunicator::Broadcast(void* buf, size_t bytes, int root) {
  if (absl::Status s = CheckRoot(root, world_size()); !s.ok()) return s;
  return group_->Run(rank_, Arrival{CollectiveOp::kBroadcast, bytes, root, buf, buf});
}

absl::Status InProcessCommunicator::Gather(const void* send, void* recv, size_t bytes, int root) {
  if (absl::Status s = CheckRoot(root, world_size()); !s.ok()) return s;
  return group_->Run(rank_, Arrival{CollectiveOp::kGather, bytes, root, send, recv});
}

absl::Status InProcessCommunicator::AllGather(const void* send, void* recv, size_t bytes) {
  return group_->Run(rank_, Arrival{CollectiveOp::kAllGather, bytes, 0, send, recv});
}

void InProcessCommunicator::Abort(absl::string_view reason) {
  group_->Break(absl::UnavailableError(absl::StrCat("rank ", rank_, " aborted: ", reason)));
}

absl::Status InProcessCommunicator::health() const { return group_->health(); }

}  // namespace longctx
