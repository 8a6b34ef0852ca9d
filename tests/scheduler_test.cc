// The engine thread's batching, ordering, rollback, cancellation and limits,
// driven by a fake model whose logits are a deterministic function of each
// sequence's whole token history (so a rollback or cross-talk bug changes
// them).
#include "engine/scheduler/scheduler.h"

#include <atomic>
#include <cmath>
#include <future>
#include <map>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "engine/backend/cpu_backend.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace longctx {
namespace {

constexpr int kVocab = 64;

// Logits at position p: token (hash of tokens[0..p]) % kVocab is favoured.
std::vector<float> FakeLogits(std::span<const int32_t> history) {
  uint64_t h = 1469598103934665603ull;
  for (int32_t t : history) h = (h ^ static_cast<uint64_t>(t)) * 1099511628211ull;
  std::vector<float> row(kVocab);
  for (int v = 0; v < kVocab; ++v) row[v] = static_cast<float>((h >> (v % 32)) & 7) * 0.25f;
  row[h % kVocab] += 4.f;
  return row;
}

class FakeModel final : public StepModel {
 public:
  explicit FakeModel(int64_t blocks, int block_size = 4) {
    KvCacheConfig config;
    config.block_size = block_size;
    // 1 layer, 1 kv head, head_dim 2: 4 * block_size floats per block.
    config.max_bytes = blocks * block_size * 4 * 4;
    kv_ = std::move(KvCache::Create(&backend_, 1, 1, 2, config)).value();
  }
  int vocab_size() const override { return kVocab; }
  int head_dim() const override { return 2; }
  KvCache& kv_cache() override { return *kv_; }
  bool greedy_tokens() const override { return greedy_tokens_; }

  absl::Status Forward(std::span<const StepItem> items, std::vector<float>* logits) override {
    bool fail = false;
    {
      // Recorded first, so a paused step is visible to the test.
      absl::MutexLock lock(&mu_);
      std::vector<std::pair<const KvSequence*, int>> step;
      for (const StepItem& it : items) {
        step.emplace_back(it.seq, static_cast<int>(it.tokens.size()));
        modes_.push_back(it.logits);
      }
      steps_.push_back(std::move(step));
      fail = static_cast<int>(steps_.size()) == fail_step_.load();
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !paused_; };
      mu_.Await(absl::Condition(&ready));
    }
    if (fail_next_.exchange(false) || fail) return absl::InternalError("injected failure");
    // All or nothing, like the real model.
    int64_t need = 0;
    for (const StepItem& it : items) {
      const int64_t len = it.seq->length() + static_cast<int64_t>(it.tokens.size());
      need += (len + kv_->geometry().block_size - 1) / kv_->geometry().block_size -
              static_cast<int64_t>(it.seq->block_table().size());
    }
    if (need > kv_->free_blocks()) return absl::ResourceExhaustedError("fake: KV full");
    logits->clear();
    std::vector<int32_t> slots;
    for (const StepItem& it : items) {
      std::vector<int32_t>& hist = history_[it.seq];
      hist.resize(static_cast<size_t>(it.seq->length()));  // follows truncations
      EXPECT_TRUE(kv_->Append(*it.seq, static_cast<int>(it.tokens.size()), &slots).ok());
      for (size_t i = 0; i < it.tokens.size(); ++i) {
        hist.push_back(it.tokens[i]);
        const bool want = it.logits == LogitsMode::kAll ||
                          (it.logits == LogitsMode::kLast && i + 1 == it.tokens.size());
        if (want) {
          const auto row = FakeLogits(hist);
          logits->insert(logits->end(), row.begin(), row.end());
        }
        if (it.logits == LogitsMode::kGreedy && i + 1 == it.tokens.size()) {
          EXPECT_TRUE(greedy_tokens_);
          const auto row = FakeLogits(hist);
          *it.greedy_token =
              static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin());
        }
      }
    }
    return absl::OkStatus();
  }

  void Pause() {
    absl::MutexLock lock(&mu_);
    paused_ = true;
  }
  void Resume() {
    absl::MutexLock lock(&mu_);
    paused_ = false;
  }
  std::vector<std::vector<std::pair<const KvSequence*, int>>> Steps() {
    absl::MutexLock lock(&mu_);
    return steps_;
  }
  size_t StepCount() {
    absl::MutexLock lock(&mu_);
    return steps_.size();
  }
  // The logits mode of every item so far, in order.
  std::vector<LogitsMode> Modes() {
    absl::MutexLock lock(&mu_);
    return modes_;
  }
  std::atomic<bool> fail_next_{false};
  std::atomic<int> fail_step_{0};  // the step (1-based, of all so far) that fails
  bool greedy_tokens_ = false;     // set before the scheduler starts

 private:
  CpuBackend backend_;
  std::unique_ptr<KvCache> kv_;
  std::map<const KvSequence*, std::vector<int32_t>> history_;  // engine thread only
  absl::Mutex mu_;
  bool paused_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::vector<std::pair<const KvSequence*, int>>> steps_ ABSL_GUARDED_BY(mu_);
  std::vector<LogitsMode> modes_ ABSL_GUARDED_BY(mu_);
};

// The log-probability the fake model gives `tokens[i]` after `tokens[0..i)`.
float DirectLogProb(const std::vector<int32_t>& tokens, size_t i) {
  const auto row = FakeLogits(std::span<const int32_t>(tokens.data(), i));
  float max = *std::max_element(row.begin(), row.end());
  double sum = 0;
  for (float x : row) sum += std::exp(static_cast<double>(x - max));
  return static_cast<float>(row[tokens[i]] - max - std::log(sum));
}

std::vector<int32_t> Tokens(int n, int32_t first = 1) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) t[static_cast<size_t>(i)] = (first + i * 7) % kVocab;
  return t;
}

std::shared_ptr<Session> NewSession(const std::string& id, int64_t window = 1 << 20,
                                    const std::string& tenant = "tenant") {
  SessionSettings s;
  s.window_tokens = window;
  s.max_tokens = window;
  return std::make_shared<Session>(id, tenant, s, absl::Now());
}

class SchedulerTest : public ::testing::Test {
 protected:
  void Start(int64_t blocks = 4096, SchedulerOptions options = {}, bool greedy_tokens = false) {
    model_ = std::make_unique<FakeModel>(blocks);
    model_->greedy_tokens_ = greedy_tokens;
    scheduler_ = std::make_unique<Scheduler>(model_.get(), options, &stats_);
  }
  void StartWithBudget(int prefill_budget) {
    SchedulerOptions options;
    options.prefill_budget = prefill_budget;
    Start(4096, options);
  }
  void TearDown() override {
    if (scheduler_) scheduler_->Stop();
  }

  absl::StatusOr<int64_t> Ingest(const std::shared_ptr<Session>& s, std::vector<int32_t> tokens,
                                 int64_t seq = 0) {
    std::promise<absl::StatusOr<int64_t>> p;
    IngestJob job;
    job.session = s;
    job.seq = seq;
    job.tokens = std::move(tokens);
    job.done = [&p](absl::StatusOr<int64_t> r) { p.set_value(std::move(r)); };
    scheduler_->SubmitIngest(std::move(job));
    return p.get_future().get();
  }

  struct GenerateOutcome {
    absl::StatusOr<GenerateResult> result;
    std::vector<int32_t> tokens;
  };
  GenerateJob MakeGenerate(const std::shared_ptr<Session>& s, std::vector<int32_t> prompt,
                           int max_tokens, GenerateOutcome* out, std::promise<void>* done) {
    GenerateJob job;
    job.session = s;
    job.prompt = std::move(prompt);
    job.max_tokens = max_tokens;
    job.on_token = [out](int32_t t) {
      out->tokens.push_back(t);
      return true;
    };
    job.done = [out, done](absl::StatusOr<GenerateResult> r) {
      out->result = std::move(r);
      done->set_value();
    };
    return job;
  }
  GenerateOutcome Generate(GenerateJob job) {
    GenerateOutcome out;
    std::promise<void> done;
    auto on_token = job.on_token;
    job.on_token = [&out, on_token](int32_t t) {
      out.tokens.push_back(t);
      return on_token ? on_token(t) : true;
    };
    job.done = [&out, &done](absl::StatusOr<GenerateResult> r) {
      out.result = std::move(r);
      done.set_value();
    };
    scheduler_->SubmitGenerate(std::move(job));
    done.get_future().wait();
    return out;
  }
  absl::StatusOr<ScoreResult> Score(const std::shared_ptr<Session>& s, std::vector<int32_t> t) {
    std::promise<absl::StatusOr<ScoreResult>> p;
    ScoreJob job;
    job.session = s;
    job.tokens = std::move(t);
    job.done = [&p](absl::StatusOr<ScoreResult> r) { p.set_value(std::move(r)); };
    scheduler_->SubmitScore(std::move(job));
    return p.get_future().get();
  }
  std::vector<int32_t> Log(const std::shared_ptr<Session>& s) {
    std::promise<std::vector<int32_t>> p;
    ReadJob job;
    job.session = s;
    job.fn = [&p](absl::Status st, const SessionEngineState* state) {
      p.set_value(st.ok() ? state->log : std::vector<int32_t>{});
    };
    scheduler_->SubmitRead(std::move(job));
    return p.get_future().get();
  }

  EngineStats stats_;
  std::unique_ptr<FakeModel> model_;
  std::unique_ptr<Scheduler> scheduler_;
};

TEST_F(SchedulerTest, IngestAppendsInOrderAndReportsPosition) {
  Start();
  auto s = NewSession("a");
  EXPECT_EQ(*Ingest(s, Tokens(10), /*seq=*/1), 10);
  EXPECT_EQ(*Ingest(s, Tokens(5, 3), /*seq=*/2), 15);
  std::vector<int32_t> want = Tokens(10);
  for (int32_t t : Tokens(5, 3)) want.push_back(t);
  EXPECT_EQ(Log(s), want);
  EXPECT_EQ(s->tokens(), 15);
  EXPECT_EQ(stats_.ingested_tokens_total.load(), 15);
  EXPECT_GT(s->device_bytes(), 0);
}

TEST_F(SchedulerTest, LongIngestIsCutIntoBudgetPieces) {
  StartWithBudget(64);
  auto s = NewSession("a");
  ASSERT_TRUE(Ingest(s, Tokens(1000)).ok());
  const auto steps = model_->Steps();
  ASSERT_EQ(steps.size(), 16u);  // ceil(1000 / 64)
  for (const auto& step : steps) EXPECT_LE(step[0].second, 64);
}

TEST_F(SchedulerTest, GenerateRollsBackUnlessPersist) {
  Start();
  auto s = NewSession("a");
  ASSERT_TRUE(Ingest(s, Tokens(20)).ok());
  const auto before = Log(s);

  GenerateJob job;
  job.session = s;
  job.prompt = Tokens(6, 9);
  job.max_tokens = 5;
  GenerateOutcome out = Generate(job);
  ASSERT_TRUE(out.result.ok()) << out.result.status();
  EXPECT_EQ(out.result->finish_reason, FinishReason::kLength);
  EXPECT_EQ(out.result->generated_tokens, 5);
  EXPECT_EQ(out.result->prompt_tokens, 6);
  EXPECT_EQ(out.result->session_tokens, 20);
  EXPECT_EQ(out.tokens.size(), 5u);
  EXPECT_EQ(Log(s), before);

  // The answer is the fake model's greedy continuation of context + prompt.
  std::vector<int32_t> ctx = before;
  ctx.insert(ctx.end(), job.prompt.begin(), job.prompt.end());
  for (int32_t t : out.tokens) {
    const auto row = FakeLogits(ctx);
    EXPECT_EQ(t, std::max_element(row.begin(), row.end()) - row.begin());
    ctx.push_back(t);
  }

  // Same request again gives the same answer (the rollback was exact).
  EXPECT_EQ(Generate(job).tokens, out.tokens);

  job.persist = true;
  job.persist_suffix = [](FinishReason r) {
    return std::vector<int32_t>{r == FinishReason::kLength ? 60 : 61, 62};
  };
  GenerateOutcome kept = Generate(job);
  ASSERT_TRUE(kept.result.ok());
  EXPECT_EQ(kept.tokens, out.tokens);
  EXPECT_EQ(kept.result->session_tokens, 20 + 6 + 5 + 2);
  std::vector<int32_t> want = ctx;
  want.push_back(60);
  want.push_back(62);
  EXPECT_EQ(Log(s), want);
  EXPECT_EQ(s->tokens(), 33);
}

// With a model that picks greedy tokens itself, greedy requests ask it for
// them (no logits back) and get the same answer; sampling at a temperature
// still takes the logits.
TEST_F(SchedulerTest, GreedyRequestsTakeTheModelsGreedyTokens) {
  std::vector<int32_t> with_logits;
  for (bool greedy_tokens : {false, true}) {
    Start(4096, {}, greedy_tokens);
    auto s = NewSession("a");
    ASSERT_TRUE(Ingest(s, Tokens(20)).ok());
    GenerateJob job;
    job.session = s;
    job.prompt = Tokens(6, 9);
    job.max_tokens = 8;
    GenerateOutcome out = Generate(job);
    ASSERT_TRUE(out.result.ok()) << out.result.status();
    ASSERT_EQ(out.tokens.size(), 8u);
    const std::vector<LogitsMode> modes = model_->Modes();
    const auto count = [&](LogitsMode m) { return std::count(modes.begin(), modes.end(), m); };
    if (!greedy_tokens) {
      with_logits = out.tokens;
      EXPECT_EQ(count(LogitsMode::kGreedy), 0);
      EXPECT_EQ(count(LogitsMode::kLast), 8);
    } else {
      EXPECT_EQ(out.tokens, with_logits);
      EXPECT_EQ(count(LogitsMode::kGreedy), 8);
      EXPECT_EQ(count(LogitsMode::kLast), 0);
      job.sampling.temperature = 0.8f;
      job.sampling.seed = 5;
      ASSERT_TRUE(Generate(job).result.ok());
      const std::vector<LogitsMode> warm = model_->Modes();
      EXPECT_EQ(
          std::count(warm.begin() + static_cast<long>(modes.size()), warm.end(), LogitsMode::kLast),
          8);
    }
    scheduler_->Stop();
    scheduler_.reset();
  }
}

TEST_F(SchedulerTest, StopTokenAndStopCallbackEndGeneration) {
  Start();
  auto s = NewSession("a");
  ASSERT_TRUE(Ingest(s, Tokens(8)).ok());
  GenerateJob job;
  job.session = s;
  job.prompt = Tokens(3, 5);
  job.max_tokens = 50;
  const GenerateOutcome free_run = Generate(job);
  ASSERT_TRUE(free_run.result.ok());
  ASSERT_GE(free_run.tokens.size(), 3u);

  job.stop_tokens = {free_run.tokens[2]};
  const GenerateOutcome stopped = Generate(job);
  ASSERT_TRUE(stopped.result.ok());
  EXPECT_EQ(stopped.result->finish_reason, FinishReason::kStop);
  // Stop tokens are counted but not passed on.
  const auto first = std::find(free_run.tokens.begin(), free_run.tokens.end(), free_run.tokens[2]);
  const size_t before_stop = static_cast<size_t>(first - free_run.tokens.begin());
  EXPECT_EQ(stopped.tokens.size(), before_stop);
  EXPECT_EQ(stopped.result->generated_tokens, static_cast<int64_t>(before_stop) + 1);

  job.stop_tokens.clear();
  int seen = 0;
  job.on_token = [&seen](int32_t) { return ++seen < 2; };
  const GenerateOutcome by_callback = Generate(job);
  ASSERT_TRUE(by_callback.result.ok());
  EXPECT_EQ(by_callback.result->finish_reason, FinishReason::kStopString);
  EXPECT_EQ(by_callback.result->generated_tokens, 2);
}

TEST_F(SchedulerTest, ScoreMatchesDirectComputationAndLeavesSessionAlone) {
  Start();
  auto s = NewSession("a");
  const auto ctx = Tokens(30);
  ASSERT_TRUE(Ingest(s, ctx).ok());
  const auto cont = Tokens(300, 11);  // longer than max_logit_rows: several steps
  auto r = Score(s, cont);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->logprobs.size(), cont.size());
  EXPECT_EQ(r->session_tokens, 30);
  std::vector<int32_t> all = ctx;
  all.insert(all.end(), cont.begin(), cont.end());
  for (size_t i = 0; i < cont.size(); ++i) {
    EXPECT_NEAR(r->logprobs[i], DirectLogProb(all, ctx.size() + i), 1e-5) << i;
  }
  EXPECT_EQ(Log(s), ctx);
  // And again: identical.
  auto again = Score(s, cont);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->logprobs, r->logprobs);
}

TEST_F(SchedulerTest, ScoreOnEmptySessionLeavesFirstTokenUnscored) {
  Start();
  auto s = NewSession("a");
  const auto cont = Tokens(5);
  auto r = Score(s, cont);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(std::isnan(r->logprobs[0]));
  for (size_t i = 1; i < cont.size(); ++i)
    EXPECT_NEAR(r->logprobs[i], DirectLogProb(cont, i), 1e-5);
}

TEST_F(SchedulerTest, LongIngestDelaysGenerateOnAnotherSessionByAtMostOneStep) {
  SchedulerOptions options;
  options.prefill_budget = 64;
  Start(1 << 16, options);
  auto big = NewSession("big");
  auto small = NewSession("small");
  ASSERT_TRUE(Ingest(small, Tokens(10)).ok());

  model_->Pause();
  std::promise<absl::StatusOr<int64_t>> ingest_done;
  IngestJob ingest;
  ingest.session = big;
  ingest.tokens = Tokens(20000);
  ingest.done = [&](absl::StatusOr<int64_t> r) { ingest_done.set_value(r); };
  scheduler_->SubmitIngest(std::move(ingest));
  // The engine is now blocked inside the ingest's first step.
  while (model_->StepCount() < 2) absl::SleepFor(absl::Milliseconds(1));
  const size_t submitted_at = model_->StepCount();

  std::atomic<size_t> first_token_step{0};
  GenerateJob gen;
  gen.session = small;
  gen.prompt = Tokens(5, 2);
  gen.max_tokens = 3;
  gen.on_token = [&](int32_t) {
    if (first_token_step == 0) first_token_step = model_->StepCount();
    return true;
  };
  std::promise<void> gen_done;
  gen.done = [&](absl::StatusOr<GenerateResult>) { gen_done.set_value(); };
  scheduler_->SubmitGenerate(std::move(gen));
  model_->Resume();
  gen_done.get_future().wait();
  // The step in flight when the request arrived, then one step with its prompt.
  EXPECT_LE(first_token_step.load(), submitted_at + 1);
  const auto steps = model_->Steps();
  // That step carried both the prompt and a budget-limited piece of the ingest.
  const auto& shared = steps[first_token_step - 1];
  EXPECT_EQ(shared.size(), 2u);
  int total = 0;
  for (const auto& [seq, n] : shared) total += n;
  EXPECT_LE(total, 64);
  ASSERT_TRUE(ingest_done.get_future().get().ok());
}

TEST_F(SchedulerTest, StepsThatDecodeTakeTheSmallerPrefillBudget) {
  SchedulerOptions options;
  options.prefill_budget = 64;
  options.prefill_budget_decoding = 16;
  Start(1 << 16, options);
  auto talker = NewSession("talker");
  auto reader = NewSession("reader");
  ASSERT_TRUE(Ingest(talker, Tokens(8)).ok());
  model_->Pause();
  GenerateOutcome out;
  std::promise<void> gen_done;
  scheduler_->SubmitGenerate(MakeGenerate(talker, Tokens(2), 6, &out, &gen_done));
  std::promise<absl::StatusOr<int64_t>> ingest_done;
  IngestJob job;
  job.session = reader;
  job.tokens = Tokens(400);
  job.done = [&](absl::StatusOr<int64_t> r) { ingest_done.set_value(r); };
  scheduler_->SubmitIngest(std::move(job));
  const size_t before = model_->StepCount();
  model_->Resume();
  gen_done.get_future().wait();
  ASSERT_TRUE(ingest_done.get_future().get().ok());
  const auto steps = model_->Steps();
  bool saw_decode_with_prefill = false;
  for (size_t i = before; i < steps.size(); ++i) {
    int prefill = 0;
    bool decodes = false;
    for (const auto& [seq, n] : steps[i]) {
      if (seq == &talker->engine_state().kv && n == 1) {
        decodes = true;
      } else {
        prefill += n;
      }
    }
    EXPECT_LE(prefill, decodes ? 16 : 64) << "step " << i;
    saw_decode_with_prefill |= decodes && prefill > 0;
  }
  EXPECT_TRUE(saw_decode_with_prefill);
}

TEST_F(SchedulerTest, DecodeStepsBatchAllGeneratingSessions) {
  Start();
  std::vector<std::shared_ptr<Session>> sessions;
  for (int i = 0; i < 4; ++i) {
    sessions.push_back(NewSession(absl::StrCat("s", i)));
    ASSERT_TRUE(Ingest(sessions.back(), Tokens(5 + i, i)).ok());
  }
  model_->Pause();
  const size_t before = model_->StepCount();
  std::vector<GenerateOutcome> outs(4);
  std::vector<std::promise<void>> done(4);
  for (int i = 0; i < 4; ++i) {
    scheduler_->SubmitGenerate(MakeGenerate(sessions[i], Tokens(3, 40 + i), 8, &outs[i], &done[i]));
  }
  model_->Resume();
  for (auto& d : done) d.get_future().wait();
  const auto steps = model_->Steps();
  size_t four_wide = 0;
  for (size_t i = before; i < steps.size(); ++i) four_wide += steps[i].size() == 4;
  EXPECT_GE(four_wide, 7u);  // 1 prefill step + 7 decode steps of 4 sessions
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(outs[i].result.ok());
    EXPECT_EQ(outs[i].tokens.size(), 8u);
    // No cross-talk: each equals the same request run alone.
    GenerateJob alone;
    alone.session = sessions[i];
    alone.prompt = Tokens(3, 40 + i);
    alone.max_tokens = 8;
    EXPECT_EQ(Generate(alone).tokens, outs[i].tokens) << i;
  }
}

TEST_F(SchedulerTest, CancelStopsGenerationAndRollsBack) {
  Start();
  auto s = NewSession("a");
  ASSERT_TRUE(Ingest(s, Tokens(10)).ok());
  GenerateOutcome out;
  std::promise<void> done;
  std::shared_ptr<WorkHandle> handle;
  absl::Notification got_token;
  GenerateJob job = MakeGenerate(s, Tokens(3), 100000, &out, &done);
  job.on_token = [&](int32_t) {
    if (!got_token.HasBeenNotified()) got_token.Notify();
    return true;
  };
  handle = scheduler_->SubmitGenerate(std::move(job));
  got_token.WaitForNotification();
  handle->Cancel();
  done.get_future().wait();
  EXPECT_EQ(out.result.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(Log(s), Tokens(10));
  EXPECT_EQ(stats_.requests_running.load(), 0);
  EXPECT_EQ(stats_.requests_waiting.load(), 0);
}

TEST_F(SchedulerTest, DeadlineStopsGeneration) {
  Start();
  auto s = NewSession("a");
  ASSERT_TRUE(Ingest(s, Tokens(10)).ok());
  GenerateJob job;
  job.session = s;
  job.prompt = Tokens(3);
  job.max_tokens = 1 << 30;
  job.deadline = absl::Now() + absl::Milliseconds(50);
  const GenerateOutcome out = Generate(job);
  EXPECT_EQ(out.result.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(Log(s), Tokens(10));
}

TEST_F(SchedulerTest, WindowEndsGenerationWithContextReason) {
  Start();
  auto s = NewSession("a", /*window=*/20);
  ASSERT_TRUE(Ingest(s, Tokens(10)).ok());
  GenerateJob job;
  job.session = s;
  job.prompt = Tokens(4);
  job.max_tokens = 100;
  const GenerateOutcome out = Generate(job);
  ASSERT_TRUE(out.result.ok());
  EXPECT_EQ(out.result->finish_reason, FinishReason::kContext);
  EXPECT_EQ(out.result->generated_tokens, 6);
  // An ingest past the window is refused whole.
  EXPECT_EQ(Ingest(s, Tokens(11)).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Log(s), Tokens(10));
}

TEST_F(SchedulerTest, FullKvCacheFailsTheSegmentWholeAndKeepsServing) {
  Start(/*blocks=*/8);  // 32 tokens
  auto a = NewSession("a");
  ASSERT_TRUE(Ingest(a, Tokens(20)).ok());
  auto b = NewSession("b");
  auto r = Ingest(b, Tokens(20));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(Log(b).empty());
  EXPECT_EQ(model_->kv_cache().free_blocks(), 3);
  // Session a still works.
  GenerateJob job;
  job.session = a;
  job.prompt = Tokens(2);
  job.max_tokens = 3;
  EXPECT_TRUE(Generate(job).result.ok());
}

TEST_F(SchedulerTest, FailedSegmentAbortsLaterQueuedSegments) {
  Start();
  auto s = NewSession("a", /*window=*/25);
  model_->Pause();
  std::vector<std::promise<absl::StatusOr<int64_t>>> results(3);
  const int sizes[] = {10, 20, 5};
  for (int i = 0; i < 3; ++i) {
    IngestJob job;
    job.session = s;
    job.seq = i + 1;
    job.tokens = Tokens(sizes[i]);
    job.done = [&results, i](absl::StatusOr<int64_t> r) { results[i].set_value(r); };
    scheduler_->SubmitIngest(std::move(job));
  }
  model_->Resume();
  EXPECT_EQ(*results[0].get_future().get(), 10);
  EXPECT_EQ(results[1].get_future().get().status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(results[2].get_future().get().status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(Log(s).size(), 10u);
}

// Submits client segments 1..n of `sizes` tokens to `s` (a segment check read
// before each odd one, as the durable path queues them); results[i] gets
// segment i + 1's.
void SubmitSegments(Scheduler* scheduler, const std::shared_ptr<Session>& s,
                    const std::vector<int>& sizes,
                    std::vector<std::promise<absl::StatusOr<int64_t>>>* results,
                    std::atomic<int>* checks) {
  results->resize(sizes.size());
  int32_t first = 1;
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (i % 2 == 1) {
      ReadJob check;
      check.session = s;
      check.segment_check = true;
      check.fn = [checks](absl::Status st, const SessionEngineState*) {
        if (st.ok()) checks->fetch_add(1);
      };
      scheduler->SubmitRead(std::move(check));
    }
    IngestJob job;
    job.session = s;
    job.seq = static_cast<int64_t>(i) + 1;
    job.tokens = Tokens(sizes[i], first);
    first += sizes[i];
    job.done = [results, i](absl::StatusOr<int64_t> r) { (*results)[i].set_value(r); };
    scheduler->SubmitIngest(std::move(job));
  }
}

std::vector<int32_t> SegmentTokens(const std::vector<int>& sizes) {
  std::vector<int32_t> all;
  int32_t first = 1;
  for (int n : sizes) {
    for (int32_t t : Tokens(n, first)) all.push_back(t);
    first += n;
  }
  return all;
}

TEST_F(SchedulerTest, QueuedSegmentsArePrefilledTogether) {
  StartWithBudget(64);
  auto s = NewSession("a");
  const std::vector<int> sizes(20, 10);
  std::vector<std::promise<absl::StatusOr<int64_t>>> results;
  std::atomic<int> checks{0};
  model_->Pause();
  SubmitSegments(scheduler_.get(), s, sizes, &results, &checks);
  model_->Resume();
  // Each ack reports the session's size after its own segment, in order.
  for (size_t i = 0; i < sizes.size(); ++i) {
    auto r = results[i].get_future().get();
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(*r, 10 * static_cast<int64_t>(i + 1));
  }
  EXPECT_EQ(checks.load(), 10);
  const std::vector<int32_t> all = SegmentTokens(sizes);
  EXPECT_EQ(Log(s), all);
  EXPECT_EQ(s->tokens(), 200);
  EXPECT_EQ(stats_.ingested_segments_total.load(), 20);
  // Budget-sized pieces across segments rather than one step per segment.
  const auto steps = model_->Steps();
  EXPECT_LE(steps.size(), 5u);  // ceil(200 / 64) = 4, and the first segment alone
  int64_t prefilled = 0;
  for (const auto& step : steps) {
    EXPECT_LE(step[0].second, 64);
    prefilled += step[0].second;
  }
  EXPECT_EQ(prefilled, 200);
  // The KV holds what one long segment would have put there.
  std::vector<int32_t> more = Tokens(3, 5);
  auto scored = Score(s, more);
  ASSERT_TRUE(scored.ok()) << scored.status();
  std::vector<int32_t> whole = all;
  whole.insert(whole.end(), more.begin(), more.end());
  for (size_t i = 0; i < more.size(); ++i) {
    EXPECT_NEAR(scored->logprobs[i], DirectLogProb(whole, all.size() + i), 1e-5);
  }
}

TEST_F(SchedulerTest, ASegmentStartedEarlyFailsAloneAndAbortsTheRest) {
  StartWithBudget(64);
  auto s = NewSession("a", /*window=*/25);
  std::vector<std::promise<absl::StatusOr<int64_t>>> results;
  std::atomic<int> checks{0};
  model_->Pause();
  SubmitSegments(scheduler_.get(), s, {10, 10, 10, 3}, &results, &checks);
  model_->Resume();
  EXPECT_EQ(*results[0].get_future().get(), 10);
  EXPECT_EQ(*results[1].get_future().get(), 20);
  EXPECT_EQ(results[2].get_future().get().status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(results[3].get_future().get().status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(Log(s), SegmentTokens({10, 10}));
  EXPECT_EQ(s->tokens(), 20);
  // The session goes on from what was applied.
  EXPECT_EQ(*Ingest(s, Tokens(5), /*seq=*/3), 25);
}

TEST_F(SchedulerTest, AFailedStepFailsTheSegmentsItCarried) {
  StartWithBudget(64);
  auto s = NewSession("a");
  std::vector<std::promise<absl::StatusOr<int64_t>>> results;
  std::atomic<int> checks{0};
  // Segment 1's first 64 tokens run in step 1 while the others queue; step 2
  // carries its last 36 and all of segments 2 to 4, and fails.
  model_->Pause();
  SubmitSegments(scheduler_.get(), s, {100}, &results, &checks);
  while (model_->Steps().empty()) absl::SleepFor(absl::Milliseconds(1));
  std::vector<std::promise<absl::StatusOr<int64_t>>> rest;
  IngestJob jobs[3];
  rest.resize(3);
  for (int i = 0; i < 3; ++i) {
    jobs[i].session = s;
    jobs[i].seq = i + 2;
    jobs[i].tokens = Tokens(8, 100 + 8 * i);
    jobs[i].done = [&rest, i](absl::StatusOr<int64_t> r) { rest[i].set_value(r); };
    scheduler_->SubmitIngest(std::move(jobs[i]));
  }
  model_->fail_step_ = 2;
  model_->Resume();
  EXPECT_EQ(results[0].get_future().get().status().code(), absl::StatusCode::kInternal);
  for (auto& r : rest) {
    EXPECT_EQ(r.get_future().get().status().code(), absl::StatusCode::kAborted);
  }
  const auto steps = model_->Steps();
  ASSERT_EQ(steps.size(), 2u);
  EXPECT_EQ(steps[1][0].second, 36 + 24);
  // Nothing of the four stays; the session goes on from where it was.
  EXPECT_EQ(Log(s), std::vector<int32_t>{});
  EXPECT_EQ(*Ingest(s, Tokens(4, 2), /*seq=*/1), 4);
  auto scored = Score(s, Tokens(2, 9));
  ASSERT_TRUE(scored.ok());
  std::vector<int32_t> whole = Tokens(4, 2);
  for (int32_t t : Tokens(2, 9)) whole.push_back(t);
  EXPECT_NEAR(scored->logprobs[1], DirectLogProb(whole, 5), 1e-5);
}

TEST_F(SchedulerTest, AReadBetweenSegmentsSeesOnlyTheSegmentsBeforeIt) {
  StartWithBudget(64);
  auto s = NewSession("a");
  std::vector<std::promise<absl::StatusOr<int64_t>>> results;
  std::atomic<int> checks{0};
  model_->Pause();
  SubmitSegments(scheduler_.get(), s, {10, 10}, &results, &checks);
  std::promise<std::pair<std::vector<int32_t>, int64_t>> seen;
  ReadJob read;
  read.session = s;
  read.fn = [&seen](absl::Status st, const SessionEngineState* state) {
    ASSERT_TRUE(st.ok());
    seen.set_value({state->log, state->sequence().length()});
  };
  scheduler_->SubmitRead(std::move(read));
  std::vector<std::promise<absl::StatusOr<int64_t>>> later(1);
  IngestJob job;
  job.session = s;
  job.seq = 3;
  job.tokens = Tokens(10, 21);
  job.done = [&later](absl::StatusOr<int64_t> r) { later[0].set_value(r); };
  scheduler_->SubmitIngest(std::move(job));
  model_->Resume();
  const auto [log, prefilled] = seen.get_future().get();
  EXPECT_EQ(log, SegmentTokens({10, 10}));
  EXPECT_EQ(prefilled, 20);
  EXPECT_EQ(*later[0].get_future().get(), 30);
}

TEST_F(SchedulerTest, ModelErrorFailsTheStepsRequestsOnly) {
  Start();
  auto s = NewSession("a");
  ASSERT_TRUE(Ingest(s, Tokens(4)).ok());
  model_->fail_next_ = true;
  EXPECT_EQ(Ingest(s, Tokens(4)).status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(Log(s), Tokens(4));
  EXPECT_EQ(*Ingest(s, Tokens(4, 2)), 8);
}

TEST_F(SchedulerTest, ReleaseFailsQueuedWorkAndFreesKv) {
  Start();
  const int64_t free_before = model_->kv_cache().free_blocks();
  auto s = NewSession("a");
  ASSERT_TRUE(Ingest(s, Tokens(40)).ok());
  EXPECT_LT(model_->kv_cache().free_blocks(), free_before);
  model_->Pause();
  GenerateOutcome out;
  std::promise<void> done;
  scheduler_->SubmitGenerate(MakeGenerate(s, Tokens(2), 1000, &out, &done));
  while (model_->StepCount() == 1) absl::SleepFor(absl::Milliseconds(1));
  s->Close("deleted");
  scheduler_->Release(s);
  model_->Resume();
  done.get_future().wait();
  EXPECT_EQ(out.result.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(out.result.status().message(), ::testing::HasSubstr("deleted"));
  // Jobs after the release are refused, and every block came back.
  EXPECT_EQ(Ingest(s, Tokens(3)).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(model_->kv_cache().free_blocks(), free_before);
}

TEST_F(SchedulerTest, StopFailsQueuedWorkWithUnavailable) {
  Start();
  auto s = NewSession("a");
  model_->Pause();
  GenerateOutcome out;
  std::promise<void> done;
  scheduler_->SubmitGenerate(MakeGenerate(s, Tokens(2), 1 << 30, &out, &done));
  std::thread stopper([this] { scheduler_->Stop(); });
  model_->Resume();
  done.get_future().wait();
  stopper.join();
  EXPECT_EQ(out.result.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Ingest(s, Tokens(3)).status().code(), absl::StatusCode::kUnavailable);
}

// ---------------------------------------------------------------- admission

// Submits an ingest whose result lands in `out` (the future is ready once done).
std::future<absl::StatusOr<int64_t>> SubmitIngestAsync(Scheduler& scheduler,
                                                       const std::shared_ptr<Session>& s, int n) {
  auto p = std::make_shared<std::promise<absl::StatusOr<int64_t>>>();
  IngestJob job;
  job.session = s;
  job.tokens = Tokens(n);
  job.done = [p](absl::StatusOr<int64_t> r) { p->set_value(std::move(r)); };
  scheduler.SubmitIngest(std::move(job));
  return p->get_future();
}

// `count` ingests of `n` tokens on new sessions of `tenant`, submitted with
// the model paused (the caller resumes it).
std::vector<std::future<absl::StatusOr<int64_t>>> PausedBacklog(FakeModel& model,
                                                                Scheduler& scheduler,
                                                                const std::string& tenant,
                                                                int count, int n) {
  model.Pause();
  std::vector<std::future<absl::StatusOr<int64_t>>> out;
  for (int i = 0; i < count; ++i) {
    out.push_back(
        SubmitIngestAsync(scheduler, NewSession(absl::StrCat(tenant, i), 1 << 20, tenant), n));
  }
  return out;
}

TEST_F(SchedulerTest, QueueBoundRefusesWithARetryHint) {
  SchedulerOptions options;
  options.max_queued_requests = 3;
  Start(4096, options);
  model_->Pause();
  std::vector<std::future<absl::StatusOr<int64_t>>> accepted;
  for (int i = 0; i < 3; ++i) {
    accepted.push_back(SubmitIngestAsync(*scheduler_, NewSession(absl::StrCat("s", i)), 8));
  }
  auto refused = SubmitIngestAsync(*scheduler_, NewSession("over"), 8);
  ASSERT_EQ(refused.wait_for(std::chrono::seconds(0)), std::future_status::ready);
  const absl::Status s = refused.get().status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), ::testing::HasSubstr("max_queued_requests"));
  ASSERT_TRUE(RetryAfter(s).has_value());
  EXPECT_GE(*RetryAfter(s), absl::Milliseconds(100));
  EXPECT_EQ(stats_.admission_rejections_total.load(), 1);
  model_->Resume();
  for (auto& f : accepted) EXPECT_TRUE(f.get().ok());
  // Finished work leaves room again.
  EXPECT_TRUE(Ingest(NewSession("after"), Tokens(8)).ok());
}

TEST_F(SchedulerTest, OneTenantsFloodLeavesRoomForAnother) {
  SchedulerOptions options;
  options.max_queued_requests_per_tenant = 2;
  Start(4096, options);
  auto flood = PausedBacklog(*model_, *scheduler_, "a", 5, 8);
  auto other = SubmitIngestAsync(*scheduler_, NewSession("b", 1 << 20, "b"), 8);
  model_->Resume();
  int refused = 0;
  for (auto& f : flood) {
    const absl::StatusOr<int64_t> r = f.get();
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
      ++refused;
    }
  }
  EXPECT_EQ(refused, 3);
  EXPECT_TRUE(other.get().ok());
}

TEST_F(SchedulerTest, HostMemoryBudgetCountsLogsAndQueuedWork) {
  SchedulerOptions options;
  options.host_memory_budget = 1000;  // bytes: 250 tokens
  Start(4096, options);
  HostMemoryBudget& budget = stats_.host_memory;
  auto s = NewSession("s");
  const absl::StatusOr<int64_t> big = Ingest(s, Tokens(300));  // 1200 bytes queued
  EXPECT_EQ(big.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(big.status().message(), ::testing::HasSubstr("host_memory_budget"));
  ASSERT_TRUE(Ingest(s, Tokens(100)).ok());
  EXPECT_EQ(budget.used(HostMemoryKind::kQueued), 0);
  EXPECT_GE(budget.used(HostMemoryKind::kTokenLog), 400);
  // The log holds 400 or more bytes: 200 more tokens (800 bytes) do not fit.
  EXPECT_EQ(Ingest(s, Tokens(200)).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(Ingest(s, Tokens(50)).ok());
  s->Close("deleted");
  scheduler_->Release(s);
  for (int i = 0; i < 200 && budget.used() != 0; ++i) absl::SleepFor(absl::Milliseconds(5));
  EXPECT_EQ(budget.used(), 0);
}

TEST_F(SchedulerTest, ABackloggedTenantDoesNotDelayAnotherTenantsPrefill) {
  SchedulerOptions options;
  options.prefill_budget = 64;
  Start(4096, options);
  auto backlog = PausedBacklog(*model_, *scheduler_, "a", 20, 32);
  auto b = NewSession("b", 1 << 20, "b");
  auto late = SubmitIngestAsync(*scheduler_, b, 32);
  const size_t steps_before = model_->StepCount();  // the step paused meanwhile
  model_->Resume();
  EXPECT_TRUE(late.get().ok());
  for (auto& f : backlog) EXPECT_TRUE(f.get().ok());
  // b's 32 tokens fit its half of the budget: it ran whole within the first
  // step after the paused one.
  const auto steps = model_->Steps();
  size_t b_step = steps.size();
  for (size_t i = 0; i < steps.size(); ++i) {
    for (const auto& [seq, n] : steps[i]) {
      if (seq == &b->engine_state().sequence()) b_step = std::min(b_step, i);
    }
  }
  EXPECT_LE(b_step, steps_before + 1);
}

}  // namespace
}  // namespace longctx
