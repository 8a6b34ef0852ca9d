// Communicator over NCCL: one process (rank) per GPU, buffers in device memory
// (docs/design.md §7). Built only with CUDA and NCCL (LONGCTX_WITH_NCCL).
//
// The NCCL communicator is non-blocking: initialisation and every collective are
// polled (ncclCommGetAsyncError, stream completion) against a deadline, so a
// dead or hung peer turns into UNAVAILABLE instead of a hang; the communicator is
// then aborted (ncclCommAbort) and stays broken. Peers of a rank that died or
// aborted notice through NCCL's own error reporting or, where the transport
// cannot tell (NVLink, shared memory), through their own timeout.
//
// Collectives run on the communicator's own CUDA stream and return once it is
// idle: the caller synchronizes its backend before a call (see communicator.h),
// and the received data is visible to any later work on the device.
//
// Thread safety: every method except health() is called by the thread that
// created the communicator (it owns the CUDA device context); health() by any.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/dist/communicator.h"
#include "engine/dist/rendezvous.h"

// NCCL and CUDA handle types, declared here so that this header needs neither SDK.
struct ncclComm;
struct CUstream_st;

namespace longctx {

class NcclCommunicator final : public Communicator {
 public:
  // A fresh NCCL unique id (128 bytes); rank 0 makes it and shares it.
  static absl::StatusOr<std::string> NewUniqueId();

  // Collective over the options.world_size ranks: joins the group `unique_id`
  // names, on CUDA device `device`. Initialisation is bounded by
  // options.rendezvous_timeout, each later collective by options.collective_timeout.
  static absl::StatusOr<std::unique_ptr<NcclCommunicator>> Create(const DistOptions& options,
                                                                  int device,
                                                                  const std::string& unique_id);
  // Rendezvous (rank 0 makes the id and publishes it) followed by Create.
  static absl::StatusOr<std::unique_ptr<NcclCommunicator>> Connect(const DistOptions& options,
                                                                   int device);

  // Finalizes the NCCL communicator when it is healthy, aborts it otherwise.
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }
  absl::Status Broadcast(void* buf, size_t bytes, int root) override;
  absl::Status Gather(const void* send, void* recv, size_t bytes, int root) override;
  absl::Status AllGather(const void* send, void* recv, size_t bytes) override;
  void Abort(absl::string_view reason) override;
  absl::Status health() const override;

 private:
  NcclCommunicator(int rank, int world_size, int device, absl::Duration timeout)
      : rank_(rank), world_size_(world_size), device_(device), timeout_(timeout) {}

  // Checks the communicator is usable before a collective.
  absl::Status Ready() const;
  // Turns the result of an enqueuing NCCL call into a status, waiting out
  // ncclInProgress; then waits for the stream. Any failure breaks the group.
  absl::Status Complete(int nccl_result, const char* what);
  // Polls until `done` holds, the communicator reports an error or `limit`
  // (counted from `start`) passes; errors and timeouts are returned unbroken
  // (the caller breaks).
  template <typename Done>
  absl::Status Poll(Done done, absl::Time start, absl::Duration limit, const char* what);
  // Aborts the NCCL communicator and records `why` as the group's health.
  absl::Status Break(absl::Status why);

  const int rank_;
  const int world_size_;
  const int device_;
  const absl::Duration timeout_;
  ncclComm* comm_ = nullptr;       // owned; null once aborted or destroyed
  CUstream_st* stream_ = nullptr;  // owned
  mutable absl::Mutex mu_;
  absl::Status broken_ ABSL_GUARDED_BY(mu_);
};

}  // namespace longctx
