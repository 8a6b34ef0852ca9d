// How the ranks of one serving group find each other (docs/design.md §7). Rank 0
// publishes a small payload (the NCCL unique id) and every other rank receives
// it, through rank 0's TCP endpoint or a file on shared storage, so the same
// binary spans pods on several nodes (a StatefulSet: rank = pod ordinal,
// rendezvous = tcp://<pod-0's DNS name>:<port>).
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace longctx {

// Multi-rank configuration; the server's --world_size, --rank, --rendezvous
// flags fill it. Validate() is the one place it is checked.
struct DistOptions {
  // Number of ranks (processes, one per GPU). 1 runs without any communication.
  int world_size = 1;
  // This process, in [0, world_size). Rank 0 serves gRPC and publishes the
  // rendezvous payload.
  int rank = 0;
  // Where the ranks meet, required when world_size > 1:
  //   "tcp://HOST:PORT"  rank 0 listens on PORT (all interfaces); the others
  //                      connect to HOST:PORT, retrying until rank 0 is up.
  //   "file://PATH"      rank 0 writes PATH atomically; the others poll it. Use a
  //                      fresh path per launch: a file left by an earlier launch
  //                      would hand out a stale id.
  std::string rendezvous;
  // Bound on the whole rendezvous (ranks start at different times).
  absl::Duration rendezvous_timeout = absl::Minutes(5);
  // Bound on each collective: a peer silent for longer is treated as dead and
  // the collective fails with UNAVAILABLE.
  absl::Duration collective_timeout = absl::Seconds(60);

  absl::Status Validate() const;
};

struct RendezvousAddress {
  enum class Kind { kTcp, kFile };
  Kind kind = Kind::kTcp;
  std::string host;  // kTcp
  int port = 0;      // kTcp, in [1, 65535]
  std::string path;  // kFile
};
// INVALID_ARGUMENT names what is wrong with `address`.
absl::StatusOr<RendezvousAddress> ParseRendezvousAddress(absl::string_view address);

// Largest payload Rendezvous carries.
inline constexpr size_t kMaxRendezvousPayload = 64 * 1024;

// Shares rank 0's `payload` with every rank; other ranks' `payload` is ignored.
// Returns rank 0's payload on every rank. Over TCP rank 0 returns once every
// other rank has received it; over a file, once it is published.
// Errors: UNAVAILABLE when the peers (or rank 0) do not show up within
// options.rendezvous_timeout; INVALID_ARGUMENT when a peer runs with a different
// world size or claims a rank that is taken or out of range.
absl::StatusOr<std::string> Rendezvous(const DistOptions& options, absl::string_view payload);

}  // namespace longctx
