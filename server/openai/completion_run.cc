#include "server/openai/completion_run.h"

#include <utility>
#include <vector>

#include "absl/synchronization/notification.h"
#include "engine/util/status_macros.h"

namespace longctx::server::openai {
namespace {

// Runs `start`, which hands its one result to the callback it is given, and
// waits for that result. Only for engine calls whose callbacks never block.
template <typename T, typename Start>
absl::StatusOr<T> Await(Start start) {
  absl::Notification done;
  absl::StatusOr<T> result = absl::UnknownError("no result");
  start([&](absl::StatusOr<T> r) {
    result = std::move(r);
    done.Notify();
  });
  done.WaitForNotification();
  return result;
}

}  // namespace

absl::StatusOr<std::unique_ptr<CompletionRun>> CompletionRun::Start(Engine* engine,
                                                                    const std::string& tenant,
                                                                    CompletionRequest request) {
  std::unique_ptr<CompletionRun> run(new CompletionRun(engine, tenant));
  GenerateInput input = std::move(request.input);
  if (!request.session_id.empty()) {
    run->session_id_ = request.session_id;
    if (request.kind == ApiKind::kChat) {
      ASSIGN_OR_RETURN(input.prompt, LastUserMessage(request.messages));
    } else {
      input.prompt = std::move(request.prompt);
    }
  } else {
    RETURN_IF_ERROR(run->CreateTransient(request));
    if (request.kind == ApiKind::kCompletion) input.prompt = std::move(request.prompt);
  }
  run->Generate(std::move(input));
  return run;
}

absl::Status CompletionRun::CreateTransient(const CompletionRequest& request) {
  std::vector<int32_t> ids;
  if (request.kind == ApiKind::kChat) {
    const ChatTemplate* chat = engine_->chat_template();
    if (chat == nullptr) {
      return absl::FailedPreconditionError(
          "the model has no supported chat template: use /v1/completions");
    }
    ASSIGN_OR_RETURN(ids, EncodeChat(engine_->tokenizer(), request.messages,
                                     /*add_generation_prompt=*/true, *chat));
  }
  SessionRequest create;
  create.prompt_format = PromptFormat::kRaw;
  create.labels = {{"longctx.openai", "transient"}};
  ASSIGN_OR_RETURN(SessionInfo info, Await<SessionInfo>([&](auto done) {
                     engine_->CreateSession(tenant_, create, std::move(done));
                   }));
  session_id_ = info.id;
  transient_ = true;
  if (ids.empty()) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::shared_ptr<Session> session, engine_->FindSession(tenant_, session_id_));
  SegmentInput segment;
  segment.seq = 1;
  segment.has_tokens = true;
  segment.tokens = std::move(ids);
  ASSIGN_OR_RETURN(IngestAck ack, Await<IngestAck>([&](auto done) {
                     engine_->Ingest(session, std::move(segment), std::move(done));
                   }));
  ingested_tokens_ = ack.tokens_ingested;
  return absl::OkStatus();
}

void CompletionRun::Generate(GenerateInput input) {
  GenerateCallbacks callbacks;
  // Engine thread: append and wake, never wait on the HTTP side.
  callbacks.on_chunk = [this](std::string text, std::vector<int32_t>) {
    absl::MutexLock lock(&mu_);
    pending_ += text;
  };
  callbacks.done = [this](absl::StatusOr<GenerateSummary> r) {
    absl::MutexLock lock(&mu_);
    result_ = std::move(r);
    finished_ = true;
  };
  generating_ = true;
  handle_ = engine_->Generate(tenant_, session_id_, std::move(input), std::move(callbacks));
}

CompletionRun::Update CompletionRun::Wait(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto ready = [this]()
                   ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return finished_ || !pending_.empty(); };
  mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  Update u;
  u.text = std::move(pending_);
  pending_.clear();
  u.finished = finished_;
  if (finished_) u.result = result_;
  return u;
}

void CompletionRun::Cancel() {
  if (handle_) handle_->Cancel();
}

Usage CompletionRun::usage() const {
  absl::MutexLock lock(&mu_);
  Usage u;
  u.prompt_tokens = ingested_tokens_;
  if (result_.ok()) {
    u.prompt_tokens += result_->result.prompt_tokens;
    u.completion_tokens = result_->result.generated_tokens;
  }
  return u;
}

CompletionRun::~CompletionRun() {
  Cancel();
  if (generating_) {
    // The callbacks hold `this`: the engine must be done with them.
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&finished_));
  }
  if (transient_) engine_->DeleteSession(tenant_, session_id_).IgnoreError();
}

}  // namespace longctx::server::openai
