#include "server/reactors.h"

#include "absl/strings/str_cat.h"
#include "server/convert.h"
#include "server/status.h"

namespace longctx::server {

// ---------------------------------------------------------------- UnaryCall

UnaryCall::UnaryCall(LongContextService* service, CallContext call)
    : service_(service), call_(std::move(call)) {}

void UnaryCall::AddField(std::string key, std::string value) {
  absl::MutexLock lock(&mu_);
  call_.fields.emplace_back(std::move(key), std::move(value));
}

std::optional<grpc::Status> UnaryCall::TakeFinishLocked() {
  if (finished_ || !started_ || !result_) return std::nullopt;
  finished_ = true;
  final_ = ToGrpcStatus(*result_);
  return final_;
}

void UnaryCall::Started(std::shared_ptr<WorkHandle> handle) {
  std::optional<grpc::Status> finish;
  {
    absl::MutexLock lock(&mu_);
    started_ = true;
    handle_ = std::move(handle);
    if (cancelled_ && handle_) handle_->Cancel();
    finish = TakeFinishLocked();
  }
  if (finish) Finish(*finish);
}

void UnaryCall::Done(const absl::Status& status) {
  std::optional<grpc::Status> finish;
  {
    absl::MutexLock lock(&mu_);
    result_ = status;
    finish = TakeFinishLocked();
  }
  if (finish) Finish(*finish);
}

void UnaryCall::OnCancel() {
  absl::MutexLock lock(&mu_);
  cancelled_ = true;
  if (handle_) handle_->Cancel();
}

void UnaryCall::OnDone() {
  service_->EndCall(call_, final_);
  delete this;
}

// ---------------------------------------------------------------- Ingest

IngestReactor::IngestReactor(LongContextService* service, absl::StatusOr<CallContext> call)
    : service_(service) {
  if (!call.ok()) {
    final_ = ToGrpcStatus(call.status());
    Finish(final_);
    return;
  }
  call_ = std::move(*call);
  admitted_ = true;
  absl::MutexLock lock(&mu_);
  reading_ = true;
  StartRead(&req_);
}

void IngestReactor::OnReadDone(bool ok) {
  std::optional<grpc::Status> finish;
  bool submit = false;
  {
    absl::MutexLock lock(&mu_);
    reading_ = false;
    if (!ok || error_ || finished_) {
      // Half-close, or a message after the stream failed: read no more.
      reads_done_ = true;
      finish = TakeFinishLocked();
    } else {
      submitting_ = true;
      submit = true;
    }
  }
  if (submit) {
    Submit();
    absl::MutexLock lock(&mu_);
    submitting_ = false;
    MaybeReadLocked();
    finish = TakeFinishLocked();
  }
  if (finish) Finish(*finish);
}

void IngestReactor::Submit() {
  Engine* engine = call_.engine;
  if (session_ == nullptr) {
    if (req_.session_id().empty()) {
      absl::MutexLock lock(&mu_);
      return FailLocked(
          absl::InvalidArgumentError("session_id is required on the first message of a stream"),
          /*cancel=*/false);
    }
    auto s = engine->FindSession(call_.caller.tenant, req_.session_id());
    if (!s.ok()) {
      absl::MutexLock lock(&mu_);
      return FailLocked(s.status(), /*cancel=*/false);
    }
    session_ = *s;
    absl::MutexLock lock(&mu_);
    call_.fields.emplace_back("session_id", session_->id());
  } else if (!req_.session_id().empty() && req_.session_id() != session_->id()) {
    absl::MutexLock lock(&mu_);
    return FailLocked(absl::InvalidArgumentError(absl::StrCat(
                          "session_id changed within the stream (", session_->id(), " then ",
                          req_.session_id(), "); open a stream per session")),
                      /*cancel=*/false);
  }
  if (!req_.has_segment()) {
    absl::MutexLock lock(&mu_);
    return FailLocked(absl::InvalidArgumentError("segment is required"), /*cancel=*/false);
  }
  v1::Segment* seg = req_.mutable_segment();
  SegmentInput input;
  input.seq = seg->seq();
  input.parse_special = seg->parse_special();
  input.deadline = call_.deadline;
  switch (seg->content_case()) {
    case v1::Segment::kText:
      input.text = std::move(*seg->mutable_text());
      break;
    case v1::Segment::kTokens:
      input.has_tokens = true;
      input.tokens.assign(seg->tokens().ids().begin(), seg->tokens().ids().end());
      break;
    default: {
      absl::MutexLock lock(&mu_);
      return FailLocked(
          absl::InvalidArgumentError(absl::StrCat(
              "segment ", seg->seq(), " is empty: segment.text or segment.tokens is required")),
          /*cancel=*/false);
    }
  }
  {
    absl::MutexLock lock(&mu_);
    ++in_flight_;
  }
  // The callback may run right here (a rejected or duplicate segment).
  auto handle = engine->Ingest(session_, std::move(input),
                               [this](absl::StatusOr<IngestAck> ack) { OnAck(std::move(ack)); });
  if (handle) {
    absl::MutexLock lock(&mu_);
    handles_.push_back(std::move(handle));
    if (cancelled_) handles_.back()->Cancel();
    while (handles_.size() > 2 * kMaxInFlight) handles_.pop_front();
  }
}

void IngestReactor::OnAck(absl::StatusOr<IngestAck> ack) {
  std::optional<grpc::Status> finish;
  {
    absl::MutexLock lock(&mu_);
    --in_flight_;
    if (ack.ok()) {
      // Applied segments are acknowledged even after a later failure, so the
      // client knows exactly what the session holds.
      v1::IngestResponse r;
      r.set_seq(ack->seq);
      r.set_tokens_ingested(ack->tokens_ingested);
      r.set_session_tokens(ack->session_tokens);
      r.set_duplicate(ack->duplicate);
      acks_.push_back(std::move(r));
      ++segments_;
      tokens_ += ack->tokens_ingested;
      MaybeWriteLocked();
    } else {
      FailLocked(ack.status(), /*cancel=*/false);
    }
    MaybeReadLocked();
    finish = TakeFinishLocked();
  }
  if (finish) Finish(*finish);
}

void IngestReactor::FailLocked(absl::Status status, bool cancel) {
  if (!error_) error_ = std::move(status);
  if (cancel && !cancelled_) {
    cancelled_ = true;
    for (auto& h : handles_) h->Cancel();
  }
}

void IngestReactor::MaybeWriteLocked() {
  if (writing_ || finished_ || acks_.empty()) return;
  writing_msg_ = std::move(acks_.front());
  acks_.pop_front();
  writing_ = true;
  StartWrite(&writing_msg_);
}

void IngestReactor::MaybeReadLocked() {
  if (reading_ || reads_done_ || submitting_ || error_ || finished_) return;
  if (in_flight_ >= kMaxInFlight) return;
  reading_ = true;
  StartRead(&req_);
}

void IngestReactor::OnWriteDone(bool ok) {
  std::optional<grpc::Status> finish;
  {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) {
      acks_.clear();
      FailLocked(absl::CancelledError("the client went away"), /*cancel=*/true);
    }
    MaybeWriteLocked();
    finish = TakeFinishLocked();
  }
  if (finish) Finish(*finish);
}

void IngestReactor::OnCancel() {
  std::optional<grpc::Status> finish;
  {
    absl::MutexLock lock(&mu_);
    acks_.clear();
    FailLocked(absl::CancelledError("the client cancelled the stream"), /*cancel=*/true);
    finish = TakeFinishLocked();
  }
  if (finish) Finish(*finish);
}

std::optional<grpc::Status> IngestReactor::TakeFinishLocked() {
  if (finished_ || submitting_ || in_flight_ > 0 || writing_ || !acks_.empty()) {
    return std::nullopt;
  }
  if (!error_ && !reads_done_) return std::nullopt;
  // A read may still be outstanding after a failure; gRPC completes it (not
  // ok) before OnDone.
  finished_ = true;
  final_ = ToGrpcStatus(error_ ? *error_ : absl::OkStatus());
  call_.fields.emplace_back("segments", absl::StrCat(segments_));
  call_.fields.emplace_back("tokens", absl::StrCat(tokens_));
  return final_;
}

void IngestReactor::OnDone() {
  if (admitted_) service_->EndCall(call_, final_);
  delete this;
}

// ---------------------------------------------------------------- Generate

GenerateReactor::GenerateReactor(LongContextService* service, absl::StatusOr<CallContext> call,
                                 const v1::GenerateRequest* req)
    : service_(service) {
  if (!call.ok()) {
    final_ = ToGrpcStatus(call.status());
    {
      absl::MutexLock lock(&mu_);
      finished_ = true;
    }
    Finish(final_);
    return;
  }
  call_ = std::move(*call);
  call_.fields.emplace_back("session_id", req->session_id());
  GenerateInput input = FromProto(*req);
  input.deadline = call_.deadline;
  GenerateCallbacks callbacks;
  callbacks.on_chunk = [this](std::string text, std::vector<int32_t> ids) {
    OnChunk(std::move(text), std::move(ids));
  };
  callbacks.done = [this](absl::StatusOr<GenerateSummary> s) { OnEngineDone(std::move(s)); };
  auto handle = call_.engine->Generate(call_.caller.tenant, req->session_id(), std::move(input),
                                       std::move(callbacks));
  std::optional<grpc::Status> finish;
  {
    absl::MutexLock lock(&mu_);
    started_ = true;
    handle_ = std::move(handle);
    if (cancelled_ && handle_) handle_->Cancel();
    MaybeWriteLocked();
    finish = TakeFinishLocked();
  }
  if (finish) Finish(*finish);
}

void GenerateReactor::OnChunk(std::string text, std::vector<int32_t> ids) {
  absl::MutexLock lock(&mu_);
  if (client_gone_) return;
  v1::GenerateChunk* chunk = pending_chunk_.mutable_chunk();
  chunk->mutable_text()->append(text);
  for (int32_t id : ids) chunk->add_token_ids(id);
  has_pending_chunk_ = true;
  MaybeWriteLocked();
}

void GenerateReactor::OnEngineDone(absl::StatusOr<GenerateSummary> summary) {
  std::optional<grpc::Status> finish;
  {
    absl::MutexLock lock(&mu_);
    engine_done_ = true;
    if (summary.ok()) {
      v1::GenerateResponse r;
      v1::GenerateComplete* c = r.mutable_complete();
      c->set_finish_reason(ToProto(summary->result.finish_reason));
      c->mutable_usage()->set_prompt_tokens(summary->result.prompt_tokens);
      c->mutable_usage()->set_generated_tokens(summary->result.generated_tokens);
      c->mutable_usage()->set_session_tokens(summary->result.session_tokens);
      c->set_stop_string(summary->stop_string);
      ToProto(summary->result.time_to_first_token, c->mutable_time_to_first_token());
      ToProto(summary->result.total_time, c->mutable_total_time());
      complete_ = std::move(r);
      call_.fields.emplace_back("prompt_tokens", absl::StrCat(summary->result.prompt_tokens));
      call_.fields.emplace_back("generated_tokens", absl::StrCat(summary->result.generated_tokens));
      call_.fields.emplace_back("finish_reason", FinishReasonName(summary->result.finish_reason));
    } else if (!error_) {
      error_ = summary.status();
    }
    MaybeWriteLocked();
    finish = TakeFinishLocked();
  }
  if (finish) Finish(*finish);
}

void GenerateReactor::MaybeWriteLocked() {
  if (writing_ || finished_ || client_gone_) return;
  if (has_pending_chunk_) {
    writing_msg_ = std::move(pending_chunk_);
    pending_chunk_.Clear();
    has_pending_chunk_ = false;
  } else if (complete_ && !complete_written_) {
    writing_msg_ = std::move(*complete_);
    complete_written_ = true;
  } else {
    return;
  }
  writing_ = true;
  StartWrite(&writing_msg_);
}

void GenerateReactor::OnWriteDone(bool ok) {
  std::optional<grpc::Status> finish;
  {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) {
      client_gone_ = true;
      if (!error_) error_ = absl::CancelledError("the client went away");
      if (handle_) handle_->Cancel();
    }
    MaybeWriteLocked();
    finish = TakeFinishLocked();
  }
  if (finish) Finish(*finish);
}

void GenerateReactor::OnCancel() {
  std::optional<grpc::Status> finish;
  {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    client_gone_ = true;
    if (handle_) handle_->Cancel();
    finish = TakeFinishLocked();
  }
  if (finish) Finish(*finish);
}

std::optional<grpc::Status> GenerateReactor::TakeFinishLocked() {
  if (finished_ || !started_ || !engine_done_ || writing_) return std::nullopt;
  if (!client_gone_ && (has_pending_chunk_ || (complete_ && !complete_written_))) {
    return std::nullopt;
  }
  finished_ = true;
  final_ = ToGrpcStatus(error_              ? *error_
                        : complete_written_ ? absl::OkStatus()
                                            : absl::CancelledError("the client went away"));
  return final_;
}

void GenerateReactor::OnDone() {
  if (call_.engine != nullptr) service_->EndCall(call_, final_);
  delete this;
}

// ---------------------------------------------------------------- Export

ExportReactor::ExportReactor(LongContextService* service, absl::StatusOr<CallContext> call,
                             const std::string& session_id)
    : service_(service) {
  if (!call.ok()) {
    final_ = ToGrpcStatus(call.status());
    Finish(final_);
    return;
  }
  call_ = std::move(*call);
  call_.fields.emplace_back("session_id", session_id);
  call_.engine->Export(call_.caller.tenant, session_id,
                       [this](absl::StatusOr<std::string> bytes) { OnBytes(std::move(bytes)); });
}

void ExportReactor::OnBytes(absl::StatusOr<std::string> bytes) {
  std::optional<grpc::Status> finish;
  {
    absl::MutexLock lock(&mu_);
    if (!bytes.ok()) {
      failed_ = true;
      final_ = ToGrpcStatus(bytes.status());
      finish = final_;
    } else {
      data_ = std::move(*bytes);
      call_.fields.emplace_back("bytes", absl::StrCat(data_.size()));
      finish = NextLocked();
    }
  }
  if (finish) Finish(*finish);
}

std::optional<grpc::Status> ExportReactor::NextLocked() {
  if (offset_ >= data_.size()) {
    final_ = grpc::Status::OK;
    return final_;
  }
  // max_message_bytes is at least 1 KiB (config validation).
  const size_t piece = std::min(
      kChunkBytes, static_cast<size_t>(service_->config().max_message_bytes) - kFramingBytes);
  const size_t n = std::min(piece, data_.size() - offset_);
  msg_.set_data(data_.substr(offset_, n));
  offset_ += n;
  StartWrite(&msg_);
  return std::nullopt;
}

void ExportReactor::OnWriteDone(bool ok) {
  std::optional<grpc::Status> finish;
  {
    absl::MutexLock lock(&mu_);
    if (!ok) {
      final_ = ToGrpcStatus(absl::CancelledError("the client went away"));
      finish = final_;
    } else {
      finish = NextLocked();
    }
  }
  if (finish) Finish(*finish);
}

void ExportReactor::OnDone() {
  if (call_.engine != nullptr) service_->EndCall(call_, final_);
  delete this;
}

// ---------------------------------------------------------------- Import

ImportReactor::ImportReactor(LongContextService* service, absl::StatusOr<CallContext> call,
                             v1::Session* resp)
    : service_(service), resp_(resp) {
  if (!call.ok()) {
    final_ = ToGrpcStatus(call.status());
    Finish(final_);
    return;
  }
  call_ = std::move(*call);
  // The token log (4 bytes a token; SLIDE and COMPRESS sessions may hold more
  // tokens than their window), an Infini memory, and settings.
  const EngineOptions& o = call_.engine->options();
  const ModelConfig& m = call_.engine->info().model;
  const int64_t memory = int64_t{m.n_layers} * m.n_kv_heads *
                         (int64_t{m.head_dim} * m.head_dim + m.head_dim) *
                         static_cast<int64_t>(sizeof(float));
  max_bytes_ = std::max(service_->config().max_session_tokens, o.max_windowed_session_tokens) * 4 +
               memory + (1 << 20);
  StartRead(&req_);
}

void ImportReactor::OnReadDone(bool ok) {
  if (ok) {
    if (first_) {
      input_.id = req_.session_id();
      input_.labels.insert(req_.labels().begin(), req_.labels().end());
      first_ = false;
    }
    if (static_cast<int64_t>(input_.data.size() + req_.data().size()) > max_bytes_) {
      final_ = ToGrpcStatus(absl::ResourceExhaustedError(
          absl::StrCat("session data is over ", max_bytes_,
                       " bytes (the token log of the longest session, its memory and settings)")));
      Finish(final_);
      return;
    }
    input_.data += req_.data();
    StartRead(&req_);
    return;
  }
  // The client half-closed: all bytes are in.
  call_.fields.emplace_back("bytes", absl::StrCat(input_.data.size()));
  call_.engine->Import(call_.caller.tenant, std::move(input_),
                       [this](absl::StatusOr<SessionInfo> info) {
                         if (info.ok()) {
                           ToProto(*info, resp_);
                           call_.fields.emplace_back("session_id", info->id);
                         }
                         final_ = ToGrpcStatus(info.status());
                         Finish(final_);
                       });
}

void ImportReactor::OnDone() {
  if (call_.engine != nullptr) service_->EndCall(call_, final_);
  delete this;
}

}  // namespace longctx::server
