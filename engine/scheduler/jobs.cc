#include "engine/scheduler/jobs.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace longctx {
namespace {

int64_t Size(const std::vector<int32_t>& tokens) { return static_cast<int64_t>(tokens.size()); }

void Append(SessionEngineState& st, const std::vector<int32_t>& tokens) {
  st.log.insert(st.log.end(), tokens.begin(), tokens.end());
}

// Whether the job's prefill is all in the KV (a step may also have prefilled
// segments started behind it).
bool Prefilled(const JobContext& ctx) {
  return ctx.session.engine_state().sequence().length() >= ctx.target;
}

int64_t Position(const JobContext& ctx) { return Size(ctx.session.engine_state().log); }

float LogProb(std::span<const float> row, int32_t token) {
  float max = -std::numeric_limits<float>::infinity();
  for (float x : row) max = std::max(max, x);
  double sum = 0;
  for (float x : row) sum += std::exp(static_cast<double>(x - max));
  return static_cast<float>(row[token] - max - std::log(sum));
}

// A segment of context appended for good: a client's, or an internal one (the
// chat template's prefix, an import).
class IngestHandler final : public JobHandler {
 public:
  explicit IngestHandler(IngestJob job) : job_(std::move(job)) {}

  std::optional<PlanWork> work() const override { return PlanWork::kIngest; }
  int64_t segment() const override { return job_.seq; }
  bool starts_early() const override { return job_.seq > 0; }
  bool keeps_tokens() const override { return true; }

  absl::Status Start(const JobContext& ctx) override {
    const int64_t limit = ctx.session.settings().max_tokens;
    const int64_t after = ctx.mark + Size(job_.tokens);
    if (after > limit) {
      return absl::ResourceExhaustedError(
          absl::StrCat("segment of ", job_.tokens.size(), " tokens would bring session ",
                       ctx.session.id(), " to ", after, " tokens, over its limit of ", limit));
    }
    Append(ctx.session.engine_state(), job_.tokens);
    return absl::OkStatus();
  }

  bool OnStep(const JobContext& ctx, const JobStepOutput& out) override {
    (void)out;
    return Prefilled(ctx);
  }

  void Deliver(const JobContext& ctx, const absl::Status& status) override {
    if (!status.ok()) {
      job_.done(status);
      return;
    }
    if (job_.seq > 0) {  // client segments, not internal appends
      const int64_t n = Size(job_.tokens);
      ctx.stats.ingested_tokens_total.fetch_add(n);
      ctx.stats.ingested_segments_total.fetch_add(1);
      ctx.session.AddIngested(n);
    }
    // Its own end: segments started behind it may have appended already.
    job_.done(ctx.target);
  }

 private:
  IngestJob job_;
};

// A prompt and an answer sampled token by token after it.
class GenerateHandler final : public JobHandler {
 public:
  explicit GenerateHandler(GenerateJob job) : job_(std::move(job)) {}

  std::optional<PlanWork> work() const override { return PlanWork::kGenerate; }
  std::string DeadlineMessage() const override {
    return absl::StrCat("deadline exceeded after ", generated_, " generated tokens");
  }
  int64_t reserve() const override { return 1; }
  // The last prompt token's logits give the first answer token.
  std::optional<int64_t> first_logits(int64_t target) const override { return target - 1; }
  bool decoding() const override { return decoding_; }
  bool greedy() const override { return sampler_->greedy(); }
  bool keeps_tokens() const override { return job_.persist; }

  absl::Status Start(const JobContext& ctx) override {
    const int64_t limit = ctx.session.settings().max_tokens;
    const std::vector<int32_t>& prompt = job_.prompt;
    if (ctx.mark + Size(prompt) + 1 > limit) {
      return absl::ResourceExhaustedError(
          absl::StrCat("session ", ctx.session.id(), " holds ", ctx.mark, " tokens; a prompt of ",
                       prompt.size(), " tokens and an answer do not fit its limit of ", limit));
    }
    if (ctx.mark + Size(prompt) == 0) {
      return absl::InvalidArgumentError(
          "prompt is empty and the session holds no tokens: nothing to continue");
    }
    Append(ctx.session.engine_state(), prompt);
    sampler_ = std::make_unique<Sampler>(job_.sampling);
    for (int32_t t : prompt) sampler_->Observe(t);
    ctx.stats.prompt_tokens_total.fetch_add(Size(prompt));
    return absl::OkStatus();
  }

  // Samples once the whole context is in.
  bool OnStep(const JobContext& ctx, const JobStepOutput& out) override {
    if (out.mode != LogitsMode::kLast && out.mode != LogitsMode::kGreedy) return false;
    const int32_t token = out.mode == LogitsMode::kGreedy
                              ? out.greedy_token
                              : sampler_->Sample(out.logits.first(static_cast<size_t>(out.vocab)));
    if (generated_ == 0) {
      first_token_ = out.now;
      ctx.stats.time_to_first_token.Observe(absl::ToDoubleSeconds(out.now - ctx.submitted));
    } else {
      ctx.stats.inter_token_latency.Observe(absl::ToDoubleSeconds(out.now - last_token_));
    }
    last_token_ = out.now;
    sampler_->Observe(token);
    ++generated_;
    ctx.stats.generation_tokens_total.fetch_add(1);
    std::vector<int32_t>& log = ctx.session.engine_state().log;
    log.push_back(token);
    decoding_ = true;
    std::optional<FinishReason> reason;
    const std::vector<int32_t>& stops = job_.stop_tokens;
    if (std::find(stops.begin(), stops.end(), token) != stops.end()) {
      reason = FinishReason::kStop;
    } else if (job_.on_token && !job_.on_token(token)) {
      reason = FinishReason::kStopString;
    } else if (generated_ >= job_.max_tokens) {
      reason = FinishReason::kLength;
    } else if (Size(log) >= ctx.session.settings().max_tokens) {
      reason = FinishReason::kContext;
    }
    if (!reason) return false;
    End(ctx, *reason, out.now);
    return true;
  }

  void Deliver(const JobContext& ctx, const absl::Status& status) override {
    if (!status.ok()) {
      job_.done(status);
      return;
    }
    result_.session_tokens = Position(ctx);
    job_.done(result_);
  }

 private:
  // Generation ended with `reason`: the result, the persisted turn's suffix.
  void End(const JobContext& ctx, FinishReason reason, absl::Time now) {
    result_.finish_reason = reason;
    result_.prompt_tokens = Size(job_.prompt);
    result_.generated_tokens = generated_;
    result_.time_to_first_token = first_token_ - ctx.submitted;
    result_.total_time = now - ctx.submitted;
    if (job_.persist && job_.persist_suffix) {
      const std::vector<int32_t> suffix = job_.persist_suffix(reason);
      SessionEngineState& st = ctx.session.engine_state();
      if (Size(suffix) <= ctx.session.settings().max_tokens - Size(st.log)) Append(st, suffix);
    }
    ctx.stats.request_success_total[static_cast<int>(reason)].fetch_add(1);
    ctx.stats.e2e_request_latency.Observe(absl::ToDoubleSeconds(result_.total_time));
  }

  GenerateJob job_;
  std::unique_ptr<Sampler> sampler_;  // from Start
  bool decoding_ = false;
  int generated_ = 0;
  absl::Time first_token_;
  absl::Time last_token_;
  GenerateResult result_;  // filled when generation ends
};

// Log-probabilities of a continuation, which is then rolled back.
class ScoreHandler final : public JobHandler {
 public:
  explicit ScoreHandler(ScoreJob job) : job_(std::move(job)) {}

  std::optional<PlanWork> work() const override { return PlanWork::kScore; }
  std::optional<int64_t> first_logits(int64_t target) const override {
    (void)target;
    return score_from_;
  }

  absl::Status Start(const JobContext& ctx) override {
    Append(ctx.session.engine_state(), job_.tokens);
    // The row of the token before the continuation predicts its first token.
    score_from_ = std::max<int64_t>(ctx.mark - 1, 0);
    logprobs_.assign(job_.tokens.size(), std::numeric_limits<float>::quiet_NaN());
    return absl::OkStatus();
  }

  bool OnStep(const JobContext& ctx, const JobStepOutput& out) override {
    const std::vector<int32_t>& log = ctx.session.engine_state().log;
    const size_t vocab = static_cast<size_t>(out.vocab);
    for (int64_t r = 0; r < out.n; ++r) {
      const int64_t pos = out.start + r;  // this row predicts log[pos + 1]
      if (pos < score_from_ || pos + 1 >= ctx.target) continue;
      logprobs_[static_cast<size_t>(pos + 1 - ctx.mark)] =
          LogProb(out.logits.subspan(static_cast<size_t>(r) * vocab, vocab),
                  log[static_cast<size_t>(pos + 1)]);
    }
    return Prefilled(ctx);
  }

  void Deliver(const JobContext& ctx, const absl::Status& status) override {
    if (!status.ok()) {
      job_.done(status);
      return;
    }
    ScoreResult result;
    result.logprobs = std::move(logprobs_);
    result.session_tokens = Position(ctx);
    ctx.stats.scored_tokens_total.fetch_add(Size(job_.tokens));
    job_.done(std::move(result));
  }

 private:
  ScoreJob job_;
  int64_t score_from_ = 0;  // rows for positions >= score_from_ predict a continuation token
  std::vector<float> logprobs_;
};

// A look at the session's committed state, taken when it reaches the head.
class ReadHandler final : public JobHandler {
 public:
  explicit ReadHandler(ReadJob job) : job_(std::move(job)) {}

  std::optional<PlanWork> work() const override { return std::nullopt; }
  bool counted() const override { return false; }
  bool starts_early() const override { return job_.segment_check; }

  absl::Status Start(const JobContext& ctx) override {
    job_.fn(absl::OkStatus(), &ctx.session.engine_state());
    return absl::OkStatus();
  }

  bool OnStep(const JobContext& ctx, const JobStepOutput& out) override {
    (void)ctx;
    (void)out;
    return true;  // never planned: a read ends at Start
  }

  void Deliver(const JobContext& ctx, const absl::Status& status) override {
    (void)ctx;
    if (!status.ok()) job_.fn(status, nullptr);
  }

 private:
  ReadJob job_;
};

}  // namespace

std::unique_ptr<JobHandler> MakeJobHandler(IngestJob job) {
  return std::make_unique<IngestHandler>(std::move(job));
}
std::unique_ptr<JobHandler> MakeJobHandler(GenerateJob job) {
  return std::make_unique<GenerateHandler>(std::move(job));
}
std::unique_ptr<JobHandler> MakeJobHandler(ScoreJob job) {
  return std::make_unique<ScoreHandler>(std::move(job));
}
std::unique_ptr<JobHandler> MakeJobHandler(ReadJob job) {
  return std::make_unique<ReadHandler>(std::move(job));
}

}  // namespace longctx
