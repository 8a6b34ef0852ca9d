// Per-call reactors of the callback API. Each owns its call's state under its
// own mutex; engine callbacks and gRPC reactions may arrive on any thread.
//
// Lifetime rule shared by all: a reactor calls Finish exactly once, outside
// its mutex and as the last thing it does, and only once nothing else (an
// engine callback, the submitting handler) can still reach it; OnDone then
// deletes it.
#pragma once

#include <deque>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "engine/scheduler/scheduler.h"
#include "longctx/v1/longctx.grpc.pb.h"
#include "server/service.h"

namespace longctx::server {

// A unary call answered asynchronously (from the engine thread).
class UnaryCall final : public grpc::ServerUnaryReactor {
 public:
  UnaryCall(LongContextService* service, CallContext call);

  CallContext& call() { return call_; }
  // Adds a field to the call's log line. REQUIRES: before Done.
  void AddField(std::string key, std::string value);
  // The work was submitted (its handle may be null): Done may now finish.
  void Started(std::shared_ptr<WorkHandle> handle = nullptr);
  void Done(const absl::Status& status);

  void OnCancel() override;
  void OnDone() override;

 private:
  std::optional<grpc::Status> TakeFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  LongContextService* const service_;
  CallContext call_;
  absl::Mutex mu_;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<absl::Status> result_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<WorkHandle> handle_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status final_;
};

// Ingest: segments in, acks out. Up to kMaxInFlight segments are read ahead
// and queued on the engine; reading pauses until acks come back.
class IngestReactor final : public grpc::ServerBidiReactor<v1::IngestRequest, v1::IngestResponse> {
 public:
  static constexpr int kMaxInFlight = 8;

  IngestReactor(LongContextService* service, absl::StatusOr<CallContext> call);

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  // Validates the request in req_ and submits its segment.
  void Submit();
  void OnAck(absl::StatusOr<IngestAck> ack);
  // Ends the stream with `status` once the segments in flight are done;
  // `cancel` also stops them (the client is gone).
  void FailLocked(absl::Status status, bool cancel) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MaybeWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MaybeReadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::optional<grpc::Status> TakeFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  LongContextService* const service_;
  CallContext call_;
  bool admitted_ = false;
  v1::IngestRequest req_;
  std::shared_ptr<Session> session_;  // set by the first message

  absl::Mutex mu_;
  bool reading_ ABSL_GUARDED_BY(mu_) = false;     // a read is outstanding
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;  // the client half-closed
  bool submitting_ ABSL_GUARDED_BY(mu_) = false;  // Submit() is running
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;        // segments awaiting their ack
  std::deque<std::shared_ptr<WorkHandle>> handles_ ABSL_GUARDED_BY(mu_);
  std::deque<v1::IngestResponse> acks_ ABSL_GUARDED_BY(mu_);
  v1::IngestResponse writing_msg_;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<absl::Status> error_ ABSL_GUARDED_BY(mu_);
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  int64_t segments_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t tokens_ ABSL_GUARDED_BY(mu_) = 0;
  grpc::Status final_;
};

// Generate: the answer streamed as chunks, then one `complete`. Chunks that
// arrive while a write is in flight are merged into the next message.
class GenerateReactor final : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  GenerateReactor(LongContextService* service, absl::StatusOr<CallContext> call,
                  const v1::GenerateRequest* req);

  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  void OnChunk(std::string text, std::vector<int32_t> ids);
  void OnEngineDone(absl::StatusOr<GenerateSummary> summary);
  void MaybeWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::optional<grpc::Status> TakeFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  LongContextService* const service_;
  CallContext call_;
  absl::Mutex mu_;
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
  v1::GenerateResponse writing_msg_;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status final_;
};

// ExportSession: the session's bytes in pieces of at most kChunkBytes, and
// small enough that a message stays within max_message_bytes.
class ExportReactor final : public grpc::ServerWriteReactor<v1::SessionData> {
 public:
  static constexpr size_t kChunkBytes = 1 << 20;
  // Room left in a message for the SessionData framing (tag and length).
  static constexpr size_t kFramingBytes = 16;

  ExportReactor(LongContextService* service, absl::StatusOr<CallContext> call,
                const std::string& session_id);
  void OnWriteDone(bool ok) override;
  void OnDone() override;

 private:
  void OnBytes(absl::StatusOr<std::string> bytes);
  // Writes the next piece or finishes. REQUIRES: mu_ held; returns the status
  // to Finish with, if it is time.
  std::optional<grpc::Status> NextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  LongContextService* const service_;
  CallContext call_;
  absl::Mutex mu_;
  std::string data_ ABSL_GUARDED_BY(mu_);
  size_t offset_ ABSL_GUARDED_BY(mu_) = 0;
  v1::SessionData msg_;
  bool failed_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status final_;
};

// ImportSession: the bytes of an exported session in, a new session out.
class ImportReactor final : public grpc::ServerReadReactor<v1::ImportSessionRequest> {
 public:
  ImportReactor(LongContextService* service, absl::StatusOr<CallContext> call, v1::Session* resp);
  void OnReadDone(bool ok) override;
  void OnDone() override;

 private:
  LongContextService* const service_;
  CallContext call_;
  v1::Session* const resp_;
  v1::ImportSessionRequest req_;
  ImportInput input_;
  bool first_ = true;
  int64_t max_bytes_ = 0;
  grpc::Status final_;
};

}  // namespace longctx::server
