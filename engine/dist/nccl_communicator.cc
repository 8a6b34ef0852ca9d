#include "engine/dist/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/util/status_macros.h"

namespace longctx {
namespace {

// Busy-yield this many polls before sleeping between polls: collectives inside
// a layer complete in microseconds, waits for a slow peer may take much longer.
constexpr int kSpinPolls = 2000;
constexpr absl::Duration kPollSleep = absl::Microseconds(50);

absl::Status NcclError(ncclResult_t r, ncclComm_t comm, absl::string_view what) {
  std::string msg = absl::StrCat("nccl ", what, ": ", ncclGetErrorString(r));
  const char* detail = ncclGetLastError(comm);
  if (detail != nullptr && detail[0] != '\0') absl::StrAppend(&msg, " (", detail, ")");
  switch (r) {
    case ncclSystemError:
    case ncclRemoteError:
      return absl::UnavailableError(msg);
    case ncclInvalidArgument:
      return absl::InvalidArgumentError(msg);
    case ncclInvalidUsage:
      return absl::FailedPreconditionError(msg);
    default:
      return absl::InternalError(msg);
  }
}

absl::Status CudaError(cudaError_t e, absl::string_view what) {
  return absl::InternalError(absl::StrCat("cuda ", what, ": ", cudaGetErrorString(e)));
}

absl::Status CheckRoot(int root, int world_size) {
  if (root < 0 || root >= world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("collective root ", root, " outside [0, ", world_size, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> NcclCommunicator::NewUniqueId() {
  ncclUniqueId id;
  if (ncclResult_t r = ncclGetUniqueId(&id); r != ncclSuccess) {
    return NcclError(r, nullptr, "GetUniqueId");
  }
  return std::string(id.internal, sizeof(id.internal));
}

absl::StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::Connect(
    const DistOptions& options, int device) {
  RETURN_IF_ERROR(options.Validate());
  std::string id;
  if (options.rank == 0) {
    ASSIGN_OR_RETURN(id, NewUniqueId());
  }
  ASSIGN_OR_RETURN(id, Rendezvous(options, id));
  return Create(options, device, id);
}

absl::StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::Create(
    const DistOptions& options, int device, const std::string& unique_id) {
  RETURN_IF_ERROR(options.Validate());
  ncclUniqueId id;
  if (unique_id.size() != sizeof(id.internal)) {
    return absl::InvalidArgumentError(absl::StrCat("nccl unique id has ", unique_id.size(),
                                                   " bytes, want ", sizeof(id.internal)));
  }
  unique_id.copy(id.internal, sizeof(id.internal));
  if (cudaError_t e = cudaSetDevice(device); e != cudaSuccess) {
    return CudaError(e, absl::StrCat("SetDevice(", device, ")"));
  }
  std::unique_ptr<NcclCommunicator> c(
      new NcclCommunicator(options.rank, options.world_size, device, options.collective_timeout));
  cudaStream_t stream = nullptr;
  if (cudaError_t e = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking); e != cudaSuccess) {
    return CudaError(e, "StreamCreate");
  }
  c->stream_ = stream;

  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // every wait below is bounded by a deadline
  ncclComm_t comm = nullptr;
  const ncclResult_t r =
      ncclCommInitRankConfig(&comm, options.world_size, id, options.rank, &config);
  c->comm_ = comm;
  if (r != ncclSuccess && r != ncclInProgress) {
    return c->Break(NcclError(r, comm, "CommInitRank"));
  }
  const absl::Status joined = c->Poll(
      [&]() -> absl::StatusOr<bool> {
        ncclResult_t state = ncclSuccess;
        ncclCommGetAsyncError(comm, &state);
        if (state == ncclInProgress) return false;
        if (state != ncclSuccess) return NcclError(state, comm, "CommInitRank");
        return true;
      },
      absl::Now(), options.rendezvous_timeout, "CommInitRank");
  if (!joined.ok()) return c->Break(joined);
  return c;
}

NcclCommunicator::~NcclCommunicator() {
  if (comm_ != nullptr) {
    bool finalized = false;
    const ncclResult_t f = health().ok() ? ncclCommFinalize(comm_) : ncclInvalidUsage;
    if (f == ncclSuccess || f == ncclInProgress) {
      finalized = Poll(
                      [&]() -> absl::StatusOr<bool> {
                        ncclResult_t state = ncclSuccess;
                        ncclCommGetAsyncError(comm_, &state);
                        if (state == ncclInProgress) return false;
                        if (state != ncclSuccess) return NcclError(state, comm_, "CommFinalize");
                        return true;
                      },
                      absl::Now(), timeout_, "CommFinalize")
                      .ok();
    }
    if (finalized) {
      ncclCommDestroy(comm_);
    } else {
      ncclCommAbort(comm_);
    }
    comm_ = nullptr;
  }
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

template <typename Done>
absl::Status NcclCommunicator::Poll(Done done, absl::Time start, absl::Duration limit,
                                    const char* what) {
  const absl::Time deadline = start + limit;
  for (int polls = 0;; ++polls) {
    ASSIGN_OR_RETURN(const bool finished, done());
    if (finished) return absl::OkStatus();
    ncclResult_t async = ncclSuccess;
    ncclCommGetAsyncError(comm_, &async);
    if (async != ncclSuccess && async != ncclInProgress) return NcclError(async, comm_, what);
    if (absl::Now() >= deadline) {
      return absl::UnavailableError(
          absl::StrCat("nccl ", what, " on rank ", rank_, " did not complete within ",
                       absl::FormatDuration(limit), ": a peer is dead or hung"));
    }
    if (polls < kSpinPolls) {
      std::this_thread::yield();
    } else {
      absl::SleepFor(kPollSleep);
    }
  }
}

absl::Status NcclCommunicator::Break(absl::Status why) {
  {
    absl::MutexLock lock(&mu_);
    if (broken_.ok()) broken_ = std::move(why);
  }
  if (comm_ != nullptr) {
    ncclCommAbort(comm_);
    comm_ = nullptr;
  }
  return health();
}

absl::Status NcclCommunicator::health() const {
  absl::MutexLock lock(&mu_);
  return broken_;
}

absl::Status NcclCommunicator::Ready() const {
  RETURN_IF_ERROR(health());
  if (comm_ == nullptr) return absl::FailedPreconditionError("nccl communicator is closed");
  return absl::OkStatus();
}

absl::Status NcclCommunicator::Complete(int nccl_result, const char* what) {
  const auto r = static_cast<ncclResult_t>(nccl_result);
  if (r != ncclSuccess && r != ncclInProgress) return Break(NcclError(r, comm_, what));
  const absl::Time start = absl::Now();
  // A non-blocking communicator may still be enqueuing the operation...
  absl::Status s = Poll(
      [&]() -> absl::StatusOr<bool> {
        ncclResult_t state = ncclSuccess;
        ncclCommGetAsyncError(comm_, &state);
        return state != ncclInProgress;
      },
      start, timeout_, what);
  // ...then the stream runs it; a dead peer leaves it running until the abort.
  if (s.ok()) {
    s = Poll(
        [&]() -> absl::StatusOr<bool> {
          const cudaError_t e = cudaStreamQuery(stream_);
          if (e == cudaErrorNotReady) return false;
          if (e != cudaSuccess) return CudaError(e, what);
          return true;
        },
        start, timeout_, what);
  }
  if (!s.ok()) return Break(std::move(s));
  return absl::OkStatus();
}

absl::Status NcclCommunicator::Broadcast(void* buf, size_t bytes, int root) {
  RETURN_IF_ERROR(CheckRoot(root, world_size_));
  RETURN_IF_ERROR(Ready());
  if (bytes == 0) return absl::OkStatus();
  return Complete(ncclBroadcast(buf, buf, bytes, ncclUint8, root, comm_, stream_), "Broadcast");
}

absl::Status NcclCommunicator::Gather(const void* send, void* recv, size_t bytes, int root) {
  RETURN_IF_ERROR(CheckRoot(root, world_size_));
  RETURN_IF_ERROR(Ready());
  if (bytes == 0) return absl::OkStatus();
  char* out = static_cast<char*>(recv);
  if (rank_ == root && out + root * bytes != send) {
    if (cudaError_t e =
            cudaMemcpyAsync(out + root * bytes, send, bytes, cudaMemcpyDeviceToDevice, stream_);
        e != cudaSuccess) {
      return Break(CudaError(e, "Gather copy"));
    }
  }
  // NCCL has no gather: point-to-point transfers fused into one group.
  ncclResult_t first_error = ncclGroupStart();
  auto keep = [&](ncclResult_t r) {
    if (first_error == ncclSuccess && r != ncclSuccess && r != ncclInProgress) first_error = r;
  };
  if (rank_ == root) {
    for (int r = 0; r < world_size_; ++r) {
      if (r != root) keep(ncclRecv(out + r * bytes, bytes, ncclUint8, r, comm_, stream_));
    }
  } else {
    keep(ncclSend(send, bytes, ncclUint8, root, comm_, stream_));
  }
  const ncclResult_t end = ncclGroupEnd();
  return Complete(first_error != ncclSuccess ? first_error : end, "Gather");
}

absl::Status NcclCommunicator::AllGather(const void* send, void* recv, size_t bytes) {
  RETURN_IF_ERROR(Ready());
  if (bytes == 0) return absl::OkStatus();
  return Complete(ncclAllGather(send, recv, bytes, ncclUint8, comm_, stream_), "AllGather");
}

void NcclCommunicator::Abort(absl::string_view reason) {
  Break(absl::UnavailableError(absl::StrCat("rank ", rank_, " aborted: ", reason))).IgnoreError();
}

}  // namespace longctx
