// One completion of the HTTP door on the engine: over a transient session
// (created RAW, the conversation formatted by the model's chat template and
// ingested, deleted at the end) or over a client's ingested session (the
// `session_id` extension), then one Generate.
//
// The engine's callbacks run on the engine thread and must not block: they
// only append to a buffer under mu_ and wake the HTTP thread, which takes the
// text with Wait() at its own pace (a slow client never stalls the engine).
//
// Thread safety: Start, Wait and Cancel from the one HTTP thread that owns
// the run; the engine thread only calls the private callbacks.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/engine.h"
#include "server/openai/openai_api.h"

namespace longctx::server::openai {

class CompletionRun {
 public:
  // Prepares the session (blocking the calling thread while a transient
  // session is created and its conversation ingested) and starts Generate.
  // Errors of either step come back here; errors of the generation itself
  // come from Wait. REQUIRES: `engine` outlives the run.
  static absl::StatusOr<std::unique_ptr<CompletionRun>> Start(Engine* engine,
                                                              const std::string& tenant,
                                                              CompletionRequest request);
  // Cancels an unfinished generation, waits for the engine to let go of it and
  // deletes a transient session.
  ~CompletionRun();
  CompletionRun(const CompletionRun&) = delete;
  CompletionRun& operator=(const CompletionRun&) = delete;

  struct Update {
    std::string text;  // answer text since the last update (valid UTF-8)
    bool finished = false;
    absl::StatusOr<GenerateSummary> result = absl::UnknownError("unfinished");  // when finished
  };
  // Waits until there is new text or the generation has ended, at most
  // `timeout` (then an empty, unfinished update).
  Update Wait(absl::Duration timeout);
  // Stops the generation (the client went away); Wait then reports CANCELLED.
  void Cancel();

  // Tokens of the prompt (a transient session's whole conversation) and of
  // the answer. REQUIRES: Wait reported the end.
  Usage usage() const;

 private:
  CompletionRun(Engine* engine, std::string tenant) : engine_(engine), tenant_(std::move(tenant)) {}
  // A transient RAW session holding the conversation formatted for the
  // model (chat) or nothing (completion: the prompt is Generate's).
  absl::Status CreateTransient(const CompletionRequest& request);
  void Generate(GenerateInput input);

  Engine* const engine_;
  const std::string tenant_;
  std::string session_id_;
  bool transient_ = false;
  int64_t ingested_tokens_ = 0;  // the transient session's conversation
  bool generating_ = false;      // Generate was called: its `done` will come
  std::shared_ptr<WorkHandle> handle_;

  mutable absl::Mutex mu_;
  std::string pending_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  absl::StatusOr<GenerateSummary> result_ ABSL_GUARDED_BY(mu_) = absl::UnknownError("unfinished");
};

}  // namespace longctx::server::openai
