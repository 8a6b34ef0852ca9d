// End to end over real gRPC: a book chapter streamed into a session in
// segments, a question answered as a stream, and Score and Generate checked
// against the engine run directly in this process on the session's exact
// tokens (taken from an export of the session).
#include <cmath>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "clients/client.h"
#include "engine/backend/cpu_backend.h"
#include "engine/model/host_weights.h"
#include "engine/model/llama_model.h"
#include "engine/session/session_codec.h"
#include "engine/tokenizer/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/daemon.h"
#include "tests/integration/helpers.h"

namespace longctx::testing {
namespace {

// The model run directly: log-probabilities and greedy choices for a token
// sequence, computed in one pass.
class DirectModel {
 public:
  static absl::StatusOr<std::unique_ptr<DirectModel>> Load(int64_t max_tokens) {
    auto d = std::unique_ptr<DirectModel>(new DirectModel());
    auto host = LoadHostModel(ModelPath());
    if (!host.ok()) return host.status();
    KvCacheConfig kv;
    const auto& c = host->config;
    kv.max_bytes = int64_t{2} * c.n_layers * c.n_kv_heads * c.head_dim * 4 * (max_tokens + 256);
    auto model = LlamaModel::Create(*host, &d->backend_, kv);
    if (!model.ok()) return model.status();
    d->model_ = std::move(*model);
    auto tok = Tokenizer::Create(host->vocab);
    if (!tok.ok()) return tok.status();
    d->tokenizer_ = std::make_unique<Tokenizer>(std::move(*tok));
    return d;
  }

  std::string Decode(std::span<const int32_t> ids) const {
    return tokenizer_->Decode(absl::MakeConstSpan(ids.data(), ids.size()));
  }

  // Prefills `context` once; Branch() then scores continuations of it.
  absl::Status Prefill(const std::vector<int32_t>& context) {
    context_ = context;
    for (size_t at = 0; at + 1 < context.size();) {
      const size_t n = std::min<size_t>(512, context.size() - 1 - at);
      StepItem item{&seq_, {context.data() + at, n}, LogitsMode::kNone, {}};
      std::vector<float> unused;
      if (auto s = model_->Forward({&item, 1}, &unused); !s.ok()) return s;
      at += n;
    }
    return absl::OkStatus();
  }

  // Logits rows predicting tail[0], tail[1], ... after the context: row i
  // is the distribution of tail[i] given context + tail[0, i).
  absl::StatusOr<std::vector<float>> Branch(const std::vector<int32_t>& tail) {
    model_->kv_cache().Truncate(seq_, static_cast<int>(context_.size()) - 1);
    std::vector<int32_t> feed = {context_.back()};
    feed.insert(feed.end(), tail.begin(), tail.end());
    StepItem item{&seq_, {feed.data(), feed.size()}, LogitsMode::kAll, {}};
    std::vector<float> logits;
    if (auto s = model_->Forward({&item, 1}, &logits); !s.ok()) return s;
    model_->kv_cache().Truncate(seq_, static_cast<int>(context_.size()) - 1);
    return logits;
  }

  int vocab() const { return model_->config().vocab_size; }

 private:
  DirectModel() = default;
  CpuBackend backend_;
  std::unique_ptr<LlamaModel> model_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::vector<int32_t> context_;
  KvSequence seq_;
};

float LogSoftmaxAt(const float* row, int vocab, int32_t token) {
  float max = row[0];
  for (int v = 1; v < vocab; ++v) max = std::max(max, row[v]);
  double sum = 0;
  for (int v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(row[v] - max));
  return static_cast<float>(row[token] - max - std::log(sum));
}

using EndToEndTest = SharedDaemonTest;

TEST_F(EndToEndTest, BookChapterStreamedInAnsweredAndScoredLikeTheEngine) {
  const auto book = ReadBook("anna_karenina.txt");
  if (!book) GTEST_SKIP() << "sample books not found (set LONGCTX_BOOKS)";
  const size_t end = book->find("\nChapter 2\n");
  ASSERT_NE(end, std::string::npos);
  const std::string chapter = book->substr(0, end + 1);
  const auto segments = client::SplitSegments(chapter, 1500);
  ASSERT_GE(segments.size(), 3u);

  v1::CreateSessionRequest create;
  (*create.mutable_labels())["book"] = "anna-karenina";
  auto session = CreateSession(stub_.get(), create);
  ASSERT_TRUE(session.ok()) << session.status();
  const int64_t prefix = session->tokens();  // the chat template's system turn
  EXPECT_GT(prefix, 0);
  EXPECT_EQ(session->prompt_format(), v1::PROMPT_FORMAT_CHAT);
  EXPECT_EQ(session->next_seq(), 1);

  // Stream the chapter in; every segment is acknowledged in order.
  std::vector<v1::IngestRequest> reqs;
  for (size_t i = 0; i < segments.size(); ++i) {
    reqs.push_back(Segment(static_cast<int64_t>(i + 1), segments[i], i == 0 ? session->id() : ""));
  }
  const IngestOutcome ingest = Ingest(stub_.get(), reqs);
  ASSERT_TRUE(ingest.status.ok()) << ingest.status.error_message() << daemon_->LogTail();
  ASSERT_EQ(ingest.acks.size(), segments.size());
  int64_t position = prefix;
  for (size_t i = 0; i < ingest.acks.size(); ++i) {
    const auto& ack = ingest.acks[i];
    EXPECT_EQ(ack.seq(), static_cast<int64_t>(i + 1));
    EXPECT_FALSE(ack.duplicate());
    EXPECT_GT(ack.tokens_ingested(), 100);
    position += ack.tokens_ingested();
    EXPECT_EQ(ack.session_tokens(), position);
  }
  auto after = GetSession(stub_.get(), session->id());
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->tokens(), position);
  EXPECT_EQ(after->segments(), static_cast<int64_t>(segments.size()));
  EXPECT_EQ(after->next_seq(), static_cast<int64_t>(segments.size() + 1));
  EXPECT_EQ(after->ingested_tokens(), position - prefix);
  EXPECT_GT(after->state_bytes().at("device"), 0);

  // A question, answered as a stream and rolled back afterwards.
  v1::GenerateRequest ask;
  ask.set_session_id(session->id());
  ask.set_prompt("Who woke up on the sofa in his study?");
  ask.set_max_tokens(12);
  const GenerateOutcome answer = Generate(stub_.get(), ask);
  ASSERT_TRUE(answer.status.ok()) << answer.status.error_message();
  ASSERT_TRUE(answer.complete.has_value());
  EXPECT_GE(answer.chunks, 1);
  EXPECT_FALSE(answer.text.empty());
  EXPECT_EQ(answer.complete->usage().generated_tokens(),
            static_cast<int64_t>(answer.ids.size()) +
                (answer.complete->finish_reason() == v1::FINISH_REASON_STOP ? 1 : 0));
  EXPECT_EQ(answer.complete->usage().session_tokens(), position);
  EXPECT_GT(answer.complete->usage().prompt_tokens(), 8);
  EXPECT_EQ(GetSession(stub_.get(), session->id())->tokens(), position);

  // Score the opening of chapter 2 after the chapter.
  const std::string next = client::SplitSegments(book->substr(end + 11, 400), 200)[0];
  auto score = Score(stub_.get(), session->id(), next, /*per_token=*/true);
  ASSERT_TRUE(score.ok()) << score.status();
  ASSERT_GT(score->tokens_size(), 10);
  EXPECT_EQ(score->scored_tokens(), score->tokens_size());
  EXPECT_EQ(score->session_tokens(), position);
  double sum = 0;
  for (const auto& t : score->tokens()) sum += t.logprob();
  EXPECT_NEAR(score->logprob(), sum, 1e-3);
  EXPECT_NEAR(score->perplexity(), std::exp(-score->logprob() / score->scored_tokens()), 1e-6);

  // The same numbers from the engine run directly on the session's tokens.
  auto exported = Export(stub_.get(), session->id());
  ASSERT_TRUE(exported.ok()) << exported.status();
  auto snap = DecodeSessionSnapshot(*exported);
  ASSERT_TRUE(snap.ok()) << snap.status();
  ASSERT_EQ(static_cast<int64_t>(snap->tokens.size()), position);
  std::vector<int32_t> cont;
  for (const auto& t : score->tokens()) cont.push_back(t.id());
  auto direct = DirectModel::Load(static_cast<int64_t>(snap->tokens.size()) + 256);
  ASSERT_TRUE(direct.ok()) << direct.status();
  ASSERT_TRUE((*direct)->Prefill(snap->tokens).ok());
  auto rows = (*direct)->Branch(cont);
  ASSERT_TRUE(rows.ok()) << rows.status();
  const int vocab = (*direct)->vocab();
  double direct_sum = 0;
  for (int i = 0; i < score->tokens_size(); ++i) {
    const float lp =
        LogSoftmaxAt(rows->data() + static_cast<size_t>(i) * vocab, vocab, score->tokens(i).id());
    // The server batched and chunked its prefill differently; float32
    // summation order differs, nothing else.
    EXPECT_NEAR(score->tokens(i).logprob(), lp, 2e-3) << "token " << i;
    direct_sum += lp;
  }
  EXPECT_NEAR(score->logprob(), direct_sum, 2e-2);

  // A persisted greedy answer is the direct model's greedy continuation.
  ask.set_persist(true);
  ask.set_max_tokens(6);
  const GenerateOutcome kept = Generate(stub_.get(), ask);
  ASSERT_TRUE(kept.status.ok()) << kept.status.error_message();
  auto exported2 = Export(stub_.get(), session->id());
  ASSERT_TRUE(exported2.ok());
  auto snap2 = DecodeSessionSnapshot(*exported2);
  ASSERT_TRUE(snap2.ok());
  const int64_t prompt_tokens = kept.complete->usage().prompt_tokens();
  const size_t answer_at = static_cast<size_t>(position + prompt_tokens);
  ASSERT_GE(snap2->tokens.size(), answer_at + kept.ids.size());
  for (size_t i = 0; i < kept.ids.size(); ++i) {
    EXPECT_EQ(snap2->tokens[answer_at + i], kept.ids[i]) << i;
  }
  // The chat template frames the document and the turn: the system turn, the
  // user turn holding the chapter, the question, the assistant's answer, and
  // a fresh user turn after it (persist).
  const std::string context_text = (*direct)->Decode(snap->tokens);
  EXPECT_EQ(context_text.rfind("<|im_start|>system\n", 0), 0u) << context_text.substr(0, 200);
  EXPECT_THAT(context_text,
              ::testing::HasSubstr("<|im_end|>\n<|im_start|>user\n" + segments[0].substr(0, 40)));
  const std::string turn = (*direct)->Decode(
      std::span<const int32_t>(snap2->tokens).subspan(static_cast<size_t>(position)));
  EXPECT_EQ(turn.rfind("\n\nWho woke up on the sofa in his study?<|im_end|>\n"
                       "<|im_start|>assistant\n",
                       0),
            0u)
      << turn;
  EXPECT_TRUE(absl::EndsWith(turn, "<|im_start|>user\n")) << turn;

  // The session before the question is the direct model's context.
  ASSERT_TRUE(std::equal(snap->tokens.begin(), snap->tokens.end(), snap2->tokens.begin()));
  const std::vector<int32_t> tail(
      snap2->tokens.begin() + static_cast<long>(position),
      snap2->tokens.begin() + static_cast<long>(answer_at + kept.ids.size()));
  auto greedy_rows = (*direct)->Branch(tail);
  ASSERT_TRUE(greedy_rows.ok());
  for (size_t i = 0; i < kept.ids.size(); ++i) {
    const float* row =
        greedy_rows->data() + (static_cast<size_t>(prompt_tokens) + i) * static_cast<size_t>(vocab);
    const int32_t best = static_cast<int32_t>(std::max_element(row, row + vocab) - row);
    // Equal unless two logits are within float noise of each other.
    EXPECT_TRUE(best == kept.ids[i] || row[best] - row[kept.ids[i]] < 1e-3f)
        << "position " << i << ": server chose " << kept.ids[i] << ", direct " << best;
  }
  EXPECT_GT(GetSession(stub_.get(), session->id())->tokens(),
            position + prompt_tokens + static_cast<int64_t>(kept.ids.size()) - 1);
  EXPECT_TRUE(DeleteSession(stub_.get(), session->id()).ok());
}

TEST_F(EndToEndTest, ManySmallSegmentsShareSteps) {
  // A stream of small segments: the server reads ahead and prefills the
  // queued ones together, so far fewer engine steps run than segments, while
  // every segment is acknowledged on its own, in order, with its own counts.
  v1::CreateSessionRequest create;
  create.set_prompt_format(v1::PROMPT_FORMAT_RAW);
  auto s = CreateSession(stub_.get(), create);
  ASSERT_TRUE(s.ok()) << s.status();
  constexpr int kSegments = 96;
  std::vector<v1::IngestRequest> requests;
  for (int i = 0; i < kSegments; ++i) {
    requests.push_back(Segment(i + 1, absl::StrCat("Boat ", i, " drifted down the river. "),
                               i == 0 ? s->id() : ""));
  }
  auto before = ScrapeMetrics(daemon_->metrics_port());
  ASSERT_TRUE(before.ok()) << before.status();
  const IngestOutcome out = Ingest(stub_.get(), requests);
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  ASSERT_EQ(out.acks.size(), static_cast<size_t>(kSegments));
  int64_t total = 0;
  for (int i = 0; i < kSegments; ++i) {
    const v1::IngestResponse& ack = out.acks[static_cast<size_t>(i)];
    EXPECT_EQ(ack.seq(), i + 1);
    EXPECT_GT(ack.tokens_ingested(), 0);
    total += ack.tokens_ingested();
    EXPECT_EQ(ack.session_tokens(), total) << "segment " << i + 1;
  }
  auto after = ScrapeMetrics(daemon_->metrics_port());
  ASSERT_TRUE(after.ok()) << after.status();
  const double steps =
      after->at("longctx_engine_steps_total") - before->at("longctx_engine_steps_total");
  EXPECT_GE(steps, 1);
  EXPECT_LE(steps, kSegments / 2) << "one step per segment: queued segments were not combined";
  auto now = GetSession(stub_.get(), s->id());
  ASSERT_TRUE(now.ok());
  EXPECT_EQ(now->tokens(), total);
  v1::GenerateRequest g;
  g.set_session_id(s->id());
  g.set_prompt(" Boat");
  g.set_max_tokens(3);
  g.mutable_sampling()->set_temperature(0);
  EXPECT_TRUE(Generate(stub_.get(), g).status.ok());
}

TEST_F(EndToEndTest, ExportImportRoundTripKeepsTokensAndSequence) {
  v1::CreateSessionRequest create;
  create.set_prompt_format(v1::PROMPT_FORMAT_RAW);
  auto s = CreateSession(stub_.get(), create);
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(
      IngestTexts(stub_.get(), s->id(), {"The quick brown fox ", "jumps over the lazy dog."}).ok());
  auto data = Export(stub_.get(), s->id());
  ASSERT_TRUE(data.ok()) << data.status();

  grpc::ClientContext ctx;
  v1::Session imported;
  auto writer = stub_->ImportSession(&ctx, &imported);
  v1::ImportSessionRequest first;
  first.set_session_id(s->id() + "-copy");
  first.set_data(data->substr(0, 10));
  ASSERT_TRUE(writer->Write(first));
  v1::ImportSessionRequest rest;
  rest.set_data(data->substr(10));
  ASSERT_TRUE(writer->Write(rest));
  writer->WritesDone();
  const grpc::Status st = writer->Finish();
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(imported.id(), s->id() + "-copy");
  auto original = GetSession(stub_.get(), s->id());
  EXPECT_EQ(imported.tokens(), original->tokens());
  EXPECT_EQ(imported.next_seq(), 3);  // sequence numbers continue
  auto a = Score(stub_.get(), s->id(), " Then it ran away.");
  auto b = Score(stub_.get(), imported.id(), " Then it ran away.");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NEAR(a->logprob(), b->logprob(), 1e-3);

  // Damaged data is refused with a reason.
  grpc::ClientContext bad_ctx;
  v1::Session none;
  auto bad = stub_->ImportSession(&bad_ctx, &none);
  v1::ImportSessionRequest junk;
  junk.set_data("not a session");
  bad->Write(junk);
  bad->WritesDone();
  EXPECT_EQ(bad->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(DeleteSession(stub_.get(), s->id()).ok());
  EXPECT_TRUE(DeleteSession(stub_.get(), imported.id()).ok());
}

}  // namespace
}  // namespace longctx::testing
