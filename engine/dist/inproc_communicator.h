// Threads as ranks: a Communicator whose ranks are threads of one process,
// sharing host memory. It runs the context-parallel code path on the CPU backend
// in CI (docs/design.md §7) and models a dead or hung rank: a rank that never arrives
// makes its peers' collectives fail with UNAVAILABLE after the timeout.
//
// Thread safety: each rank's communicator is used by its own thread; the group
// they share is internally synchronized.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "engine/dist/communicator.h"

namespace longctx {

class InProcessGroup;

// Copies `bytes` from src to dst for a collective; OK once the data is in place.
// The default is memcpy (host memory). Ranks on one GPU pass a device copy that
// has finished when it returns. A failed copy breaks the group with its error.
using InProcessCopy = std::function<absl::Status(void* dst, const void* src, size_t bytes)>;

class InProcessCommunicator final : public Communicator {
 public:
  // One communicator per rank of a new group of `world_size` ranks. `timeout`
  // bounds each collective's wait for the other ranks; `copy` moves the data
  // (null: memcpy).
  static std::vector<std::unique_ptr<InProcessCommunicator>> CreateGroup(
      int world_size, absl::Duration timeout, InProcessCopy copy = nullptr);
  ~InProcessCommunicator() override;
  InProcessCommunicator(const InProcessCommunicator&) = delete;
  InProcessCommunicator& operator=(const InProcessCommunicator&) = delete;

  int rank() const override { return rank_; }
  int world_size() const override;
  absl::Status Broadcast(void* buf, size_t bytes, int root) override;
  absl::Status Gather(const void* send, void* recv, size_t bytes, int root) override;
  absl::Status AllGather(const void* send, void* recv, size_t bytes) override;
  void Abort(absl::string_view reason) override;
  absl::Status health() const override;

 private:
  InProcessCommunicator(std::shared_ptr<InProcessGroup> group, int rank);
  std::shared_ptr<InProcessGroup> group_;
  int rank_;
};

}  // namespace longctx
