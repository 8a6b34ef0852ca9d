// Per-call reactors of the callback API, one class per asynchronous call. The
// finish bookkeeping (the admission, the mutex, the once-only Finish and the
// accounting) is CallReactor's (server/call_reactor.h); each reactor here
// holds only its own protocol, guarded by CallReactor's mu_. Reactors see the
// server only through CallRegistry and their CallContext.
#pragma once

#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "engine/scheduler/scheduler.h"
#include "longctx/v1/longctx.grpc.pb.h"
#include "server/call_reactor.h"
#include "server/call_registry.h"

namespace longctx::server {

// The engine work of a streaming reactor that a client's cancel must reach:
// the handle comes back after the submit returns, the cancel at any time.
// Guarded by the owning reactor's mu_.
struct CancelLink {
  bool submitting = false;  // in the engine call: the reactor may not finish yet
  bool cancelled = false;
  std::shared_ptr<WorkHandle> handle;

  // The submit returned `h` (null: done already; `done`: the result is in).
  void Submitted(std::shared_ptr<WorkHandle> h, bool done) {
    submitting = false;
    if (h != nullptr && !done) handle = std::move(h);
    if (cancelled && handle) handle->Cancel();
  }
  void Cancel() {
    cancelled = true;
    if (handle) handle->Cancel();
  }
};

// A unary call answered asynchronously (from the engine thread). The handler
// submits the work, then calls Started; the engine's callback calls Done.
class UnaryCall final : public CallReactor<grpc::ServerUnaryReactor> {
 public:
  // REQUIRES: `call` was admitted.
  UnaryCall(CallRegistry* calls, CallContext call);

  using CallReactor::AddField;
  using CallReactor::call;
  // The work was submitted (its handle may be null): Done may now finish.
  void Started(std::shared_ptr<WorkHandle> handle = nullptr);
  void Done(const absl::Status& status);

  void OnCancel() override;

 private:
  std::optional<absl::Status> FinishableLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) override;

  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<absl::Status> result_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<WorkHandle> handle_ ABSL_GUARDED_BY(mu_);
};

// Ingest: segments in, acks out. Segments are read ahead and queued on the
// engine, up to kMaxInFlight of them and kMaxInFlightBytes of their text (at
// least one); reading pauses until acks come back. The engine prefills the
// queued segments of a session together (Scheduler::StartFollowers), so read
// ahead of about one GPU step's prefill budget keeps small segments as fast as
// large ones.
class IngestReactor final
    : public CallReactor<grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>> {
 public:
  // 16 segments of 2 kB, about one GPU step's 8192 tokens; the default queue
  // bounds (server/config.h) leave room for 64 such streams per tenant.
  static constexpr int kMaxInFlight = 16;
  static constexpr int64_t kMaxInFlightBytes = int64_t{64} << 10;

  IngestReactor(CallRegistry* calls, absl::StatusOr<CallContext> call);

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;

 private:
  bool WaitingForClientLocked() const override ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return reading_;
  }
  void OnIdleLocked(absl::Status status) override ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    FailLocked(std::move(status), /*cancel=*/true);
  }
  // Validates the request in req_ and submits its segment.
  void Submit();
  // The stream's session, found by the first message's session_id; later
  // messages may repeat it but not change it.
  absl::Status BindSession();
  void OnAck(absl::StatusOr<IngestAck> ack, int64_t bytes);
  // Ends the stream with `status` once the segments in flight are done;
  // `cancel` also stops them (the client is gone).
  void FailLocked(absl::Status status, bool cancel) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MaybeWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MaybeReadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::optional<absl::Status> FinishableLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) override;

  grpc::ByteBuffer in_;               // the message being read
  v1::IngestRequest req_;             // ... parsed by Submit
  std::shared_ptr<Session> session_;  // set by the first message

  bool reading_ ABSL_GUARDED_BY(mu_) = false;         // a read is outstanding
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;      // the client half-closed
  bool submitting_ ABSL_GUARDED_BY(mu_) = false;      // Submit() is running
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;            // segments awaiting their ack
  int64_t in_flight_bytes_ ABSL_GUARDED_BY(mu_) = 0;  // their text or tokens
  std::deque<std::shared_ptr<WorkHandle>> handles_ ABSL_GUARDED_BY(mu_);
  std::deque<v1::IngestResponse> acks_ ABSL_GUARDED_BY(mu_);
  grpc::ByteBuffer writing_msg_;  // the message being written
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<absl::Status> error_ ABSL_GUARDED_BY(mu_);
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  int64_t segments_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t tokens_ ABSL_GUARDED_BY(mu_) = 0;
};

// Generate: the answer streamed as chunks, then one `complete`. Chunks that
// arrive while a write is in flight are merged into the next message.
class GenerateReactor final : public CallReactor<grpc::ServerWriteReactor<grpc::ByteBuffer>> {
 public:
  // `req` is read in the constructor only.
  GenerateReactor(CallRegistry* calls, absl::StatusOr<CallContext> call,
                  const v1::GenerateRequest* req);

  void OnWriteDone(bool ok) override;
  void OnCancel() override;

 private:
  void OnChunk(std::string text, std::vector<int32_t> ids);
  void OnEngineDone(absl::StatusOr<GenerateSummary> summary);
  void MaybeWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::optional<absl::Status> FinishableLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) override;

  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  std::shared_ptr<WorkHandle> handle_ ABSL_GUARDED_BY(mu_);
  v1::GenerateResponse pending_chunk_ ABSL_GUARDED_BY(mu_);
  bool has_pending_chunk_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<v1::GenerateResponse> complete_ ABSL_GUARDED_BY(mu_);
  bool engine_done_ ABSL_GUARDED_BY(mu_) = false;
  bool complete_written_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<absl::Status> error_ ABSL_GUARDED_BY(mu_);
  bool client_gone_ ABSL_GUARDED_BY(mu_) = false;
  grpc::ByteBuffer writing_msg_;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
};

// ExportSession: the session's bytes in pieces of at most kChunkBytes, and
// small enough that a message stays within max_message_bytes.
class ExportReactor final : public CallReactor<grpc::ServerWriteReactor<grpc::ByteBuffer>> {
 public:
  static constexpr size_t kChunkBytes = 1 << 20;
  // Room left in a message for the SessionData framing (tag and length).
  static constexpr size_t kFramingBytes = 16;

  ExportReactor(CallRegistry* calls, absl::StatusOr<CallContext> call,
                const std::string& session_id);
  void OnWriteDone(bool ok) override;
  // Stops the engine's export (it ends with CANCELLED).
  void OnCancel() override;

 private:
  void OnBytes(absl::StatusOr<std::string> bytes);
  // Writes the next piece, or sets result_ when all are written.
  void WriteNextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::optional<absl::Status> FinishableLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) override;

  CancelLink link_ ABSL_GUARDED_BY(mu_);        // the engine's export
  HostMemoryCharge held_ ABSL_GUARDED_BY(mu_);  // data_ against the host-memory budget
  std::string data_ ABSL_GUARDED_BY(mu_);
  size_t offset_ ABSL_GUARDED_BY(mu_) = 0;
  grpc::ByteBuffer msg_;
  std::optional<absl::Status> result_ ABSL_GUARDED_BY(mu_);
};

// ImportSession: the bytes of an exported session in, a new session out. The
// bytes count against the host-memory budget as they arrive; once the blob's
// header is in, its declared size is checked and charged whole, so an
// oversized import is refused before the rest is sent. A cancelled import
// leaves no session behind.
class ImportReactor final : public CallReactor<grpc::ServerReadReactor<grpc::ByteBuffer>> {
 public:
  // `resp` gets the serialized v1::Session.
  ImportReactor(CallRegistry* calls, absl::StatusOr<CallContext> call, grpc::ByteBuffer* resp);
  void OnReadDone(bool ok) override;
  void OnCancel() override;

 private:
  bool WaitingForClientLocked() const override ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !reads_done_;
  }
  void OnIdleLocked(absl::Status status) override ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    result_ = std::move(status);
  }
  // The most bytes an export of the longest session may have.
  int64_t MaxBytes() const;
  // Appends the bytes of req_ to the blob; why not, when they cannot be held.
  absl::Status Receive();
  void StartImport();
  std::optional<absl::Status> FinishableLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) override;

  grpc::ByteBuffer* const resp_;
  grpc::ByteBuffer in_;           // the message being read
  v1::ImportSessionRequest req_;  // ... parsed
  ImportInput input_;             // read by one read at a time, then handed to the engine
  bool first_ = true;
  int64_t max_bytes_ = 0;
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;  // the client half-closed
  std::optional<uint64_t> declared_;              // the blob's size, once its header is in
  HostMemoryCharge held_;                         // the blob against the host-memory budget
  CancelLink link_ ABSL_GUARDED_BY(mu_);          // the engine's import
  std::optional<absl::Status> result_ ABSL_GUARDED_BY(mu_);
};

}  // namespace longctx::server
