#include "server/reactors.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/session/session_manager.h"
#include "server/convert.h"
#include "server/routing.h"
#include "server/wire.h"

namespace longctx::server {

// ---------------------------------------------------------------- UnaryCall

UnaryCall::UnaryCall(CallRegistry* calls, CallContext admitted_call)
    : CallReactor(calls, std::move(admitted_call)) {}

void UnaryCall::Started(std::shared_ptr<WorkHandle> handle) {
  Update([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    started_ = true;
    handle_ = std::move(handle);
    if (cancelled_ && handle_) handle_->Cancel();
  });
}

void UnaryCall::Done(const absl::Status& status) {
  Update([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { result_ = status; });
}

void UnaryCall::OnCancel() {
  absl::MutexLock lock(&mu_);
  cancelled_ = true;
  if (handle_) handle_->Cancel();
}

std::optional<absl::Status> UnaryCall::FinishableLocked() {
  if (!started_ || !result_) return std::nullopt;
  return *result_;
}

// ---------------------------------------------------------------- Ingest

IngestReactor::IngestReactor(CallRegistry* calls, absl::StatusOr<CallContext> admission)
    : CallReactor(calls, std::move(admission)) {
  if (!admitted()) return;
  WatchIdle(config().stream_idle_timeout);
  absl::MutexLock lock(&mu_);
  reading_ = true;
  StartRead(&in_);
}

void IngestReactor::OnReadDone(bool ok) {
  bool submit = false;
  Update([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    reading_ = false;
    if (!ok || error_ || FinishedLocked()) {
      // Half-close, or a message after the stream failed: read no more.
      reads_done_ = true;
    } else {
      submitting_ = true;
      submit = true;
    }
  });
  // While submitting_ is set the call cannot finish.
  if (!submit) return;
  Submit();
  Update([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    submitting_ = false;
    MaybeReadLocked();
  });
}

void IngestReactor::Submit() {
  auto fail = [this](absl::Status status) {
    absl::MutexLock lock(&mu_);
    FailLocked(std::move(status), /*cancel=*/false);
  };
  if (absl::Status parsed = ParseRequest(in_, &req_); !parsed.ok()) {
    CountUnparsable();
    return fail(std::move(parsed));
  }
  if (absl::Status bound = BindSession(); !bound.ok()) return fail(std::move(bound));
  absl::StatusOr<SegmentInput> input = TakeSegment(&req_);
  if (!input.ok()) return fail(input.status());
  input->deadline = call().deadline;
  const int64_t bytes =
      static_cast<int64_t>(input->text.size() + input->tokens.size() * sizeof(int32_t));
  {
    absl::MutexLock lock(&mu_);
    ++in_flight_;
    in_flight_bytes_ += bytes;
  }
  // The callback may run right here (a rejected or duplicate segment).
  auto handle = call().engine->Ingest(
      session_, *std::move(input),
      [this, bytes](absl::StatusOr<IngestAck> ack) { OnAck(std::move(ack), bytes); });
  if (handle == nullptr) return;
  absl::MutexLock lock(&mu_);
  handles_.push_back(std::move(handle));
  if (cancelled_) handles_.back()->Cancel();
  while (handles_.size() > 2 * kMaxInFlight) handles_.pop_front();
}

absl::Status IngestReactor::BindSession() {
  // Checked before the id can reach a log line or an error message.
  if (!req_.session_id().empty()) {
    if (absl::Status s = ValidateSessionId(req_.session_id()); !s.ok()) return s;
  }
  if (session_ == nullptr) {
    if (req_.session_id().empty()) {
      return absl::InvalidArgumentError("session_id is required on the first message of a stream");
    }
    auto s = call().engine->FindSession(call().caller.tenant, req_.session_id());
    if (!s.ok()) return RouteLookup(s.status(), req_.session_id(), config().replica_id);
    session_ = *s;
    AddField("session_id", session_->id());
  } else if (!req_.session_id().empty() && req_.session_id() != session_->id()) {
    return absl::InvalidArgumentError(absl::StrCat("session_id changed within the stream (",
                                                   session_->id(), " then ", req_.session_id(),
                                                   "); open a stream per session"));
  }
  return absl::OkStatus();
}

void IngestReactor::OnAck(absl::StatusOr<IngestAck> ack, int64_t bytes) {
  Update([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    --in_flight_;
    in_flight_bytes_ -= bytes;
    if (ack.ok()) {
      // Applied segments are acknowledged even after a later failure, so the
      // client knows exactly what the session holds.
      ToProto(*ack, &acks_.emplace_back());
      ++segments_;
      tokens_ += ack->tokens_ingested;
      MaybeWriteLocked();
    } else {
      FailLocked(ack.status(), /*cancel=*/false);
    }
    MaybeReadLocked();
  });
}

void IngestReactor::FailLocked(absl::Status status, bool cancel) {
  if (!error_) error_ = std::move(status);
  if (cancel && !cancelled_) {
    cancelled_ = true;
    for (auto& h : handles_) h->Cancel();
  }
}

void IngestReactor::MaybeWriteLocked() {
  if (writing_ || FinishedLocked() || acks_.empty()) return;
  Serialize(acks_.front(), &writing_msg_);
  acks_.pop_front();
  writing_ = true;
  StartWrite(&writing_msg_);
}

void IngestReactor::MaybeReadLocked() {
  if (reading_ || reads_done_ || submitting_ || error_ || FinishedLocked()) return;
  if (in_flight_ >= kMaxInFlight || (in_flight_ > 0 && in_flight_bytes_ >= kMaxInFlightBytes)) {
    return;
  }
  reading_ = true;
  ClientActiveLocked();  // the idle clock starts when the server waits
  StartRead(&in_);
}

void IngestReactor::OnWriteDone(bool ok) {
  Update([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    writing_ = false;
    if (!ok) {
      acks_.clear();
      FailLocked(absl::CancelledError("the client went away"), /*cancel=*/true);
    }
    MaybeWriteLocked();
  });
}

void IngestReactor::OnCancel() {
  Update([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    acks_.clear();
    FailLocked(absl::CancelledError("the client cancelled the stream"), /*cancel=*/true);
  });
}

std::optional<absl::Status> IngestReactor::FinishableLocked() {
  if (submitting_ || in_flight_ > 0 || writing_ || !acks_.empty()) return std::nullopt;
  if (!error_ && !reads_done_) return std::nullopt;
  // A read may still be outstanding after a failure; gRPC completes it (not
  // ok) before OnDone.
  AddFieldLocked("segments", absl::StrCat(segments_));
  AddFieldLocked("tokens", absl::StrCat(tokens_));
  return error_ ? *error_ : absl::OkStatus();
}

// ---------------------------------------------------------------- Generate

GenerateReactor::GenerateReactor(CallRegistry* calls, absl::StatusOr<CallContext> admission,
                                 const v1::GenerateRequest* req)
    : CallReactor(calls, std::move(admission)) {
  if (!admitted()) return;
  GenerateInput input = FromProto(*req);
  input.deadline = call().deadline;
  GenerateCallbacks callbacks;
  callbacks.on_chunk = [this](std::string text, std::vector<int32_t> ids) {
    OnChunk(std::move(text), std::move(ids));
  };
  callbacks.done = [this](absl::StatusOr<GenerateSummary> s) { OnEngineDone(std::move(s)); };
  auto handle = call().engine->Generate(call().caller.tenant, req->session_id(), std::move(input),
                                        std::move(callbacks));
  Update([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    started_ = true;
    handle_ = std::move(handle);
    if (cancelled_ && handle_) handle_->Cancel();
    MaybeWriteLocked();
  });
}

void GenerateReactor::OnChunk(std::string text, std::vector<int32_t> ids) {
  absl::MutexLock lock(&mu_);
  if (client_gone_) return;
  AppendToProto(text, ids, pending_chunk_.mutable_chunk());
  has_pending_chunk_ = true;
  MaybeWriteLocked();
}

void GenerateReactor::OnEngineDone(absl::StatusOr<GenerateSummary> summary) {
  Update([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    engine_done_ = true;
    if (summary.ok()) {
      ToProto(*summary, complete_.emplace().mutable_complete());
      const GenerateResult& r = summary->result;
      AddFieldLocked("prompt_tokens", absl::StrCat(r.prompt_tokens));
      AddFieldLocked("generated_tokens", absl::StrCat(r.generated_tokens));
      AddFieldLocked("finish_reason", FinishReasonName(r.finish_reason));
    } else if (!error_) {
      error_ = summary.status();
    }
    MaybeWriteLocked();
  });
}

void GenerateReactor::MaybeWriteLocked() {
  if (writing_ || FinishedLocked() || client_gone_) return;
  if (has_pending_chunk_) {
    Serialize(pending_chunk_, &writing_msg_);
    pending_chunk_.Clear();
    has_pending_chunk_ = false;
  } else if (complete_ && !complete_written_) {
    Serialize(*complete_, &writing_msg_);
    complete_written_ = true;
  } else {
    return;
  }
  writing_ = true;
  StartWrite(&writing_msg_);
}

void GenerateReactor::OnWriteDone(bool ok) {
  Update([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    writing_ = false;
    if (!ok) {
      client_gone_ = true;
      if (!error_) error_ = absl::CancelledError("the client went away");
      if (handle_) handle_->Cancel();
    }
    MaybeWriteLocked();
  });
}

void GenerateReactor::OnCancel() {
  Update([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    cancelled_ = true;
    client_gone_ = true;
    if (handle_) handle_->Cancel();
  });
}

std::optional<absl::Status> GenerateReactor::FinishableLocked() {
  if (!started_ || !engine_done_ || writing_) return std::nullopt;
  if (!client_gone_ && (has_pending_chunk_ || (complete_ && !complete_written_))) {
    return std::nullopt;
  }
  if (error_) return *error_;
  return complete_written_ ? absl::OkStatus() : absl::CancelledError("the client went away");
}

// ---------------------------------------------------------------- Export

ExportReactor::ExportReactor(CallRegistry* calls, absl::StatusOr<CallContext> admission,
                             const std::string& session_id)
    : CallReactor(calls, std::move(admission)) {
  if (!admitted()) return;
  AddField("session_id", session_id);
  Update([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { link_.submitting = true; });
  std::shared_ptr<WorkHandle> handle = call().engine->Export(
      call().caller.tenant, session_id, call().deadline,
      [this](absl::StatusOr<std::string> bytes) { OnBytes(std::move(bytes)); });
  Update([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    link_.Submitted(std::move(handle), result_.has_value() || !data_.empty());
  });
}

void ExportReactor::OnCancel() {
  absl::MutexLock lock(&mu_);
  link_.Cancel();
}

void ExportReactor::OnBytes(absl::StatusOr<std::string> bytes) {
  Update([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    link_.handle.reset();
    if (!bytes.ok()) {
      result_ = bytes.status();
      return;
    }
    held_ = HostMemoryCharge(&call().engine->stats().host_memory, HostMemoryKind::kExport);
    if (absl::Status s = held_.TryGrow(static_cast<int64_t>(bytes->size()), "the export");
        !s.ok()) {
      result_ = s;
      return;
    }
    data_ = std::move(*bytes);
    AddFieldLocked("bytes", absl::StrCat(data_.size()));
    WriteNextLocked();
  });
}

void ExportReactor::WriteNextLocked() {
  if (offset_ >= data_.size()) {
    result_ = absl::OkStatus();
    return;
  }
  // max_message_bytes is at least 1 KiB (config validation).
  const size_t piece =
      std::min(kChunkBytes, static_cast<size_t>(config().max_message_bytes) - kFramingBytes);
  const size_t n = std::min(piece, data_.size() - offset_);
  v1::SessionData piece_msg;
  piece_msg.set_data(data_.substr(offset_, n));
  offset_ += n;
  StartWrite(Serialize(piece_msg, &msg_));
}

void ExportReactor::OnWriteDone(bool ok) {
  Update([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (ok) {
      WriteNextLocked();
    } else {
      result_ = absl::CancelledError("the client went away");
    }
  });
}

std::optional<absl::Status> ExportReactor::FinishableLocked() {
  if (link_.submitting) return std::nullopt;
  return result_;
}

// ---------------------------------------------------------------- Import

ImportReactor::ImportReactor(CallRegistry* calls, absl::StatusOr<CallContext> admission,
                             grpc::ByteBuffer* resp)
    : CallReactor(calls, std::move(admission)), resp_(resp) {
  if (!admitted()) return;
  max_bytes_ = MaxBytes();
  held_ = HostMemoryCharge(&call().engine->stats().host_memory, HostMemoryKind::kImport);
  WatchIdle(config().stream_idle_timeout);
  StartRead(&in_);
}

int64_t ImportReactor::MaxBytes() const {
  // The token log (4 bytes a token; SLIDE and COMPRESS sessions may hold more
  // tokens than their window), an Infini memory, and settings.
  const EngineOptions& o = call().engine->options();
  const ModelConfig& m = call().engine->info().model;
  const int64_t memory = int64_t{m.n_layers} * m.n_kv_heads *
                         (int64_t{m.head_dim} * m.head_dim + m.head_dim) *
                         static_cast<int64_t>(sizeof(float));
  return std::max(config().max_session_tokens, o.max_windowed_session_tokens) * 4 + memory +
         (1 << 20);
}

absl::Status ImportReactor::Receive() {
  const int64_t have = static_cast<int64_t>(input_.data.size() + req_.data().size());
  if (have > max_bytes_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("session data is over ", max_bytes_,
                     " bytes (the token log of the longest session, its memory and settings)"));
  }
  input_.data += req_.data();
  if (!declared_) {
    auto size = SessionSnapshotSize(input_.data);
    if (!size.ok()) return size.status();
    declared_ = *size;
    if (declared_ && *declared_ > static_cast<uint64_t>(max_bytes_)) {
      return absl::ResourceExhaustedError(
          absl::StrCat("session data declares ", *declared_, " bytes, over the ", max_bytes_,
                       " bytes of the longest session this server holds"));
    }
  }
  if (declared_ && static_cast<uint64_t>(have) > *declared_) {
    return absl::InvalidArgumentError(
        absl::StrCat("session data runs past the ", *declared_, " bytes its header declares"));
  }
  // The whole declared blob, or what came so far.
  const int64_t want = declared_ ? static_cast<int64_t>(*declared_) : have;
  return held_.TryGrow(want - held_.bytes(), "the imported session data");
}

void ImportReactor::OnReadDone(bool ok) {
  {
    absl::MutexLock lock(&mu_);
    // Ended while a read was outstanding (idle): gRPC completes it now.
    if (FinishedLocked()) return;
    ClientActiveLocked();
    reads_done_ = !ok;
  }
  if (ok) {
    if (absl::Status parsed = ParseRequest(in_, &req_); !parsed.ok()) {
      CountUnparsable();
      return Update([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { result_ = parsed; });
    }
    if (first_) {
      input_ = FromProto(req_);
      input_.data.clear();
      first_ = false;
      if (absl::Status s = CheckNewSessionId(input_.id, config().replica_id); !s.ok()) {
        return Update([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { result_ = s; });
      }
    }
    if (absl::Status s = Receive(); !s.ok()) {
      return Update([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { result_ = s; });
    }
    StartRead(&in_);
    return;
  }
  // The client half-closed (all bytes are in) or cancelled.
  StartImport();
}

void ImportReactor::StartImport() {
  bool cancelled = false;
  Update([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    cancelled = link_.cancelled;
    if (cancelled) {
      result_ = absl::CancelledError("cancelled by the client");
    } else {
      link_.submitting = true;
    }
  });
  if (cancelled) return;  // finished: `this` may be gone
  AddField("bytes", absl::StrCat(input_.data.size()));
  std::shared_ptr<WorkHandle> handle = call().engine->Import(
      call().caller.tenant, std::move(input_), [this](absl::StatusOr<SessionInfo> info) {
        Update([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          link_.handle.reset();
          if (info.ok()) {
            v1::Session session;
            ToProto(*info, &session);
            Serialize(session, resp_);
            AddFieldLocked("session_id", info->id);
          }
          result_ = info.status();
        });
      });
  Update([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    link_.Submitted(std::move(handle), result_.has_value());
  });
}

void ImportReactor::OnCancel() {
  absl::MutexLock lock(&mu_);
  link_.Cancel();
}

std::optional<absl::Status> ImportReactor::FinishableLocked() {
  if (link_.submitting) return std::nullopt;
  return result_;
}

}  // namespace longctx::server
