// Collective communication among the ranks of one serving group (docs/design.md §7):
// one process (rank) per GPU, or threads as ranks in tests (InProcessCommunicator).
//
// Buffers are memory of the rank's backend: host memory for the CPU backend,
// device memory for CUDA (NcclCommunicator). REQUIRES: a buffer's contents are
// ready (its backend synchronized) before the call; when a call returns OK the
// received data is in place.
//
// Every rank calls the same collectives in the same order with the same sizes and
// root. A collective that has not completed within the communicator's timeout, or
// that finds a peer gone, returns UNAVAILABLE and breaks the communicator: every
// later call returns that error at once, health() reports it, and peers blocked
// in a collective with the broken rank fail too instead of waiting forever. A
// broken group is not repaired; the ranks build a new one.
//
// Thread safety: a Communicator is used by one thread (its rank's engine thread);
// health() may be called from any thread.
#pragma once

#include <cstddef>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace longctx {

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int world_size() const = 0;

  // Copies root's `bytes` at `buf` into `buf` on every other rank.
  virtual absl::Status Broadcast(void* buf, size_t bytes, int root) = 0;
  // Root receives every rank's `bytes` at `send` into recv[r * bytes], in rank
  // order (world_size * bytes). `recv` is unused on other ranks (may be null).
  virtual absl::Status Gather(const void* send, void* recv, size_t bytes, int root) = 0;
  // Every rank receives every rank's block: recv[r * bytes] = rank r's `send`.
  virtual absl::Status AllGather(const void* send, void* recv, size_t bytes) = 0;

  // Breaks the group deliberately (this rank is going away or cannot finish a
  // step). Peers' pending and later collectives fail with UNAVAILABLE: at once
  // where the implementation can tell them (in-process), else by their timeout.
  virtual void Abort(absl::string_view reason) = 0;
  // OK while the group works; the error that broke it afterwards.
  virtual absl::Status health() const = 0;
};

}  // namespace longctx
