// Infini window sessions through longctxd (docs/design.md §4): SLIDE and COMPRESS keep
// a session's KV bounded however much it ingests, REJECT refuses what does not
// fit and stays usable, generation works after folds, Export/Import carries the
// compressive memory, and the metrics and server info say what happened.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "clients/client.h"
#include "engine/model/infini_memory.h"
#include "engine/session/session_codec.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/daemon.h"
#include "tests/integration/helpers.h"

namespace longctx::testing {
namespace {

// DCA with L = C − w = 64 tokens (one KV block), so that a window of a few
// chunks overflows after a few hundred tokens.
constexpr int kChunkLen = 64;
constexpr int kWindow = 2 * kChunkLen;
constexpr int kSinks = 64;

double Metric(const std::map<std::string, double>& m, const std::string& key) {
  auto it = m.find(key);
  return it == m.end() ? 0 : it->second;
}

class InfiniServiceTest : public SharedDaemonTest {
 protected:
  void SetUp() override {
    SharedDaemonTest::SetUp();
    if (IsSkipped()) return;
    grpc::ClientContext ctx;
    v1::GetServerInfoRequest req;
    ASSERT_TRUE(stub_->GetServerInfo(&ctx, req, &info_).ok());
  }

  // Bytes of KV a windowed session may hold at most: sinks, W and the chunk
  // being filled, in whole blocks.
  int64_t KvBound() const {
    const int64_t bs = info_.kv_cache().block_size();
    const int64_t tokens = kSinks + kWindow + kChunkLen;
    return (tokens + bs - 1) / bs * bs * info_.kv_cache().bytes_per_token();
  }

  v1::ServerInfo info_;
};

TEST_F(InfiniServiceTest, ServerInfoSaysMixingIsOffWithoutGates) {
  // The default model carries no blk.N.infini_beta gates.
  EXPECT_FALSE(info_.memory_mixing());
}

TEST_F(InfiniServiceTest, CompressKeepsKvBoundedFoldsAndStillGenerates) {
  auto before = ScrapeMetrics(daemon_->metrics_port());
  ASSERT_TRUE(before.ok()) << before.status();
  auto s =
      CreateSession(stub_.get(), WindowedSession(v1::OVERFLOW_POLICY_COMPRESS, kWindow, kSinks));
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->memory().overflow(), v1::OVERFLOW_POLICY_COMPRESS);
  int64_t max_device = 0;
  int64_t seq = 1;
  for (int round = 0; round < 4; ++round) {
    auto pos = IngestTexts(stub_.get(), s->id(), Paragraphs(3), seq);
    ASSERT_TRUE(pos.ok()) << pos.status();
    seq += 3;
    auto now = GetSession(stub_.get(), s->id());
    ASSERT_TRUE(now.ok());
    max_device = std::max(max_device, now->state_bytes().at("device"));
  }
  auto after_ingest = GetSession(stub_.get(), s->id());
  ASSERT_TRUE(after_ingest.ok());
  const int64_t tokens = after_ingest->tokens();
  // Well past the window: about 12 × 60 tokens against W = 128.
  ASSERT_GT(tokens, 4 * kWindow);
  EXPECT_GT(max_device, 0);
  EXPECT_LE(max_device, KvBound());
  // Everything between the sinks and the window was folded, nothing more.
  const int64_t folded = after_ingest->folded_tokens();
  EXPECT_GE(folded, tokens - kSinks - kWindow - kChunkLen);
  EXPECT_LE(folded, tokens - kSinks - kWindow + kChunkLen);
  EXPECT_EQ(folded % kChunkLen, 0);
  EXPECT_EQ(after_ingest->dropped_tokens(), 0);
  // M [D, D] and z [D] per layer and kv head, fp32.
  const int64_t layers = info_.model().n_layers(), kv_heads = info_.model().n_kv_heads(),
                d = info_.model().head_dim();
  EXPECT_EQ(after_ingest->state_bytes().at("infini_memory"), layers * kv_heads * (d * d + d) * 4);

  v1::GenerateRequest g;
  g.set_session_id(s->id());
  g.set_prompt(" The river keeper");
  g.set_max_tokens(4);
  g.mutable_sampling()->set_temperature(0);
  const GenerateOutcome out = Generate(stub_.get(), g);
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  ASSERT_TRUE(out.complete.has_value());
  EXPECT_GE(out.complete->usage().generated_tokens(), 1);
  auto after_generate = GetSession(stub_.get(), s->id());
  ASSERT_TRUE(after_generate.ok());
  EXPECT_EQ(after_generate->tokens(), tokens);  // rolled back
  EXPECT_LE(after_generate->state_bytes().at("device"), KvBound());

  auto m = ScrapeMetrics(daemon_->metrics_port());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_GE(Metric(*m, "longctx_infini_folded_tokens_total") -
                Metric(*before, "longctx_infini_folded_tokens_total"),
            folded);
  EXPECT_GE(Metric(*m, "longctx_infini_evictions_total{policy=\"compress\"}") -
                Metric(*before, "longctx_infini_evictions_total{policy=\"compress\"}"),
            folded / kChunkLen);
  EXPECT_GE(Metric(*m, "longctx_infini_memory_bytes"),
            after_ingest->state_bytes().at("infini_memory"));
  EXPECT_TRUE(DeleteSession(stub_.get(), s->id()).ok());
}

TEST_F(InfiniServiceTest, SlideKeepsKvBoundedAndDropsWithoutMemory) {
  auto before = ScrapeMetrics(daemon_->metrics_port());
  ASSERT_TRUE(before.ok()) << before.status();
  auto s = CreateSession(stub_.get(), WindowedSession(v1::OVERFLOW_POLICY_SLIDE, kWindow, kSinks));
  ASSERT_TRUE(s.ok()) << s.status();
  int64_t max_device = 0;
  int64_t seq = 1;
  for (int round = 0; round < 4; ++round) {
    ASSERT_TRUE(IngestTexts(stub_.get(), s->id(), Paragraphs(3), seq).ok());
    seq += 3;
    auto now = GetSession(stub_.get(), s->id());
    ASSERT_TRUE(now.ok());
    max_device = std::max(max_device, now->state_bytes().at("device"));
  }
  auto after = GetSession(stub_.get(), s->id());
  ASSERT_TRUE(after.ok());
  ASSERT_GT(after->tokens(), 4 * kWindow);
  EXPECT_LE(max_device, KvBound());
  EXPECT_EQ(after->folded_tokens(), 0);
  EXPECT_GE(after->dropped_tokens(), after->tokens() - kSinks - kWindow - kChunkLen);
  EXPECT_EQ(after->state_bytes().at("infini_memory"), 0);
  auto m = ScrapeMetrics(daemon_->metrics_port());
  ASSERT_TRUE(m.ok());
  EXPECT_GE(Metric(*m, "longctx_infini_evictions_total{policy=\"slide\"}") -
                Metric(*before, "longctx_infini_evictions_total{policy=\"slide\"}"),
            after->dropped_tokens() / kChunkLen);

  v1::GenerateRequest g;
  g.set_session_id(s->id());
  g.set_prompt(" The lamps");
  g.set_max_tokens(3);
  const GenerateOutcome out = Generate(stub_.get(), g);
  EXPECT_TRUE(out.status.ok()) << out.status.error_message();
  EXPECT_TRUE(DeleteSession(stub_.get(), s->id()).ok());
}

TEST_F(InfiniServiceTest, RejectRefusesPastTheWindowAndStaysUsable) {
  auto s = CreateSession(stub_.get(), WindowedSession(v1::OVERFLOW_POLICY_REJECT, kWindow, 0));
  ASSERT_TRUE(s.ok()) << s.status();
  auto pos = IngestTexts(stub_.get(), s->id(), Paragraphs(1));
  ASSERT_TRUE(pos.ok()) << pos.status();
  const int64_t held = *pos;
  ASSERT_LT(held, kWindow);
  // Two more paragraphs do not fit the window.
  const IngestOutcome full =
      Ingest(stub_.get(), {Segment(2, Paragraphs(3)[1] + Paragraphs(3)[2], s->id())});
  EXPECT_EQ(full.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << full.status.error_message();
  auto same = GetSession(stub_.get(), s->id());
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(same->tokens(), held);
  EXPECT_EQ(same->next_seq(), 2);
  // Still usable: a short segment with the refused seq, and a generation.
  auto more = IngestTexts(stub_.get(), s->id(), {" The end."}, 2);
  ASSERT_TRUE(more.ok()) << more.status();
  EXPECT_GT(*more, held);
  v1::GenerateRequest g;
  g.set_session_id(s->id());
  g.set_max_tokens(3);
  const GenerateOutcome out = Generate(stub_.get(), g);
  EXPECT_TRUE(out.status.ok()) << out.status.error_message();
  EXPECT_TRUE(DeleteSession(stub_.get(), s->id()).ok());
}

TEST_F(InfiniServiceTest, ExportImportCarriesTheMemoryBitIdentical) {
  auto s =
      CreateSession(stub_.get(), WindowedSession(v1::OVERFLOW_POLICY_COMPRESS, kWindow, kSinks));
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_TRUE(IngestTexts(stub_.get(), s->id(), Paragraphs(8)).ok());
  auto data = Export(stub_.get(), s->id());
  ASSERT_TRUE(data.ok()) << data.status();
  auto snap = DecodeSessionSnapshot(*data);
  ASSERT_TRUE(snap.ok()) << snap.status();
  ASSERT_FALSE(snap->memory.empty());
  auto memory = InfiniMemory::Deserialize(snap->memory);
  ASSERT_TRUE(memory.ok()) << memory.status();
  EXPECT_GT(memory->folded_tokens(), 0);
  EXPECT_GT(snap->evicted_end, kSinks);

  grpc::ClientContext ctx;
  v1::Session imported;
  auto writer = stub_->ImportSession(&ctx, &imported);
  // In pieces under the server's message limit (the memory alone is ~1.5 MB).
  constexpr size_t kPiece = 256 << 10;
  for (size_t at = 0; at < data->size(); at += kPiece) {
    v1::ImportSessionRequest req;
    if (at == 0) req.set_session_id(s->id() + "-copy");
    req.set_data(data->substr(at, kPiece));
    ASSERT_TRUE(writer->Write(req));
  }
  writer->WritesDone();
  const grpc::Status st = writer->Finish();
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(imported.tokens(), snap->tokens.size());
  EXPECT_EQ(imported.folded_tokens(), memory->folded_tokens());
  EXPECT_LE(imported.state_bytes().at("device"), KvBound());

  // The imported session's own export holds the same memory, bit for bit.
  auto again = Export(stub_.get(), imported.id());
  ASSERT_TRUE(again.ok()) << again.status();
  auto snap2 = DecodeSessionSnapshot(*again);
  ASSERT_TRUE(snap2.ok()) << snap2.status();
  EXPECT_EQ(snap2->evicted_end, snap->evicted_end);
  EXPECT_EQ(snap2->tokens, snap->tokens);
  EXPECT_TRUE(snap2->memory == snap->memory);
  auto memory2 = InfiniMemory::Deserialize(snap2->memory);
  ASSERT_TRUE(memory2.ok());
  EXPECT_TRUE(*memory2 == *memory);

  // And it keeps working: more text folds on from the restored memory.
  ASSERT_TRUE(IngestTexts(stub_.get(), imported.id(), Paragraphs(3), imported.next_seq()).ok());
  auto grown = GetSession(stub_.get(), imported.id());
  ASSERT_TRUE(grown.ok());
  EXPECT_GT(grown->folded_tokens(), memory->folded_tokens());
  v1::GenerateRequest g;
  g.set_session_id(imported.id());
  g.set_max_tokens(3);
  EXPECT_TRUE(Generate(stub_.get(), g).status.ok());
  EXPECT_TRUE(DeleteSession(stub_.get(), s->id()).ok());
  EXPECT_TRUE(DeleteSession(stub_.get(), imported.id()).ok());
}

// A generation longer than the window pushes its own question out of it; the
// rollback then rebuilds the window from the token log, and the session is
// exactly as before: same tokens, same memory and restore point in its export.
TEST_F(InfiniServiceTest, GenerationLongerThanTheWindowRollsBack) {
  auto s =
      CreateSession(stub_.get(), WindowedSession(v1::OVERFLOW_POLICY_COMPRESS, kWindow, kSinks));
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_TRUE(IngestTexts(stub_.get(), s->id(), Paragraphs(6)).ok());
  auto before = GetSession(stub_.get(), s->id());
  ASSERT_TRUE(before.ok());
  auto data = Export(stub_.get(), s->id());
  ASSERT_TRUE(data.ok()) << data.status();
  auto snap = DecodeSessionSnapshot(*data);
  ASSERT_TRUE(snap.ok()) << snap.status();

  v1::GenerateRequest g;
  g.set_session_id(s->id());
  g.set_prompt(" Paragraph 6.");
  g.set_max_tokens(kWindow + 3 * kChunkLen);
  g.mutable_sampling()->set_temperature(0);
  const GenerateOutcome out = Generate(stub_.get(), g);
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  ASSERT_TRUE(out.complete.has_value());
  auto after = GetSession(stub_.get(), s->id());
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->tokens(), before->tokens());
  EXPECT_LE(after->state_bytes().at("device"), KvBound());
  // Greedy decoding of this prose runs to max_tokens (no end token), so the
  // question left the window and the window was rebuilt as it stood.
  ASSERT_GT(out.complete->usage().generated_tokens(), kWindow + kChunkLen);
  auto again = Export(stub_.get(), s->id());
  ASSERT_TRUE(again.ok()) << again.status();
  auto snap2 = DecodeSessionSnapshot(*again);
  ASSERT_TRUE(snap2.ok()) << snap2.status();
  EXPECT_EQ(snap2->tokens, snap->tokens);
  EXPECT_EQ(snap2->evicted_end, snap->evicted_end);
  EXPECT_TRUE(snap2->memory == snap->memory);
  // The session goes on: the re-prefill runs with the next request.
  ASSERT_TRUE(IngestTexts(stub_.get(), s->id(), Paragraphs(2), after->next_seq()).ok());
  v1::GenerateRequest short_g;
  short_g.set_session_id(s->id());
  short_g.set_max_tokens(2);
  EXPECT_TRUE(Generate(stub_.get(), short_g).status.ok());
  auto last = GetSession(stub_.get(), s->id());
  ASSERT_TRUE(last.ok());
  EXPECT_GT(last->folded_tokens(), before->folded_tokens());
  EXPECT_LE(last->state_bytes().at("device"), KvBound());
  EXPECT_TRUE(DeleteSession(stub_.get(), s->id()).ok());
}

TEST_F(InfiniServiceTest, BadWindowSettingsAreRefusedByName) {
  // W not a multiple of L.
  auto odd = CreateSession(stub_.get(),
                           WindowedSession(v1::OVERFLOW_POLICY_COMPRESS, kWindow + 1, kSinks));
  EXPECT_EQ(odd.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(odd.status().message()), ::testing::HasSubstr("window_tokens"));
  // Sinks not whole KV blocks.
  auto sinks = CreateSession(stub_.get(), WindowedSession(v1::OVERFLOW_POLICY_SLIDE, kWindow, 3));
  EXPECT_EQ(sinks.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(sinks.status().message()), ::testing::HasSubstr("sink_tokens"));
  // A window is required.
  auto none = CreateSession(stub_.get(), WindowedSession(v1::OVERFLOW_POLICY_SLIDE, 0, 0));
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
}

// Writes a gate sidecar: every layer's q heads at `beta` (safetensors, F32).
std::string WriteGates(const std::string& path, int layers, int heads, float beta) {
  std::string header = "{", data;
  for (int l = 0; l < layers; ++l) {
    const size_t at = data.size();
    for (int h = 0; h < heads; ++h) data.append(reinterpret_cast<const char*>(&beta), 4);
    absl::StrAppend(&header, l ? "," : "", "\"blk.", l, ".infini_beta\":{\"dtype\":\"F32\",",
                    "\"shape\":[", heads, "],\"data_offsets\":[", at, ",", data.size(), "]}");
  }
  header += "}";
  const uint64_t n = header.size();
  std::ofstream(path, std::ios::binary)
      << std::string(reinterpret_cast<const char*>(&n), 8) << header << data;
  return path;
}

// Score of the same continuation after the same ingest, in a SLIDE and a
// COMPRESS session: equal without gates (the memory is kept, not mixed).
std::pair<double, double> SlideAndCompressScores(v1::LongContext::Stub* stub) {
  double out[2] = {0, 0};
  const v1::OverflowPolicy policies[2] = {v1::OVERFLOW_POLICY_SLIDE, v1::OVERFLOW_POLICY_COMPRESS};
  for (int i = 0; i < 2; ++i) {
    auto s = CreateSession(stub, WindowedSession(policies[i], kWindow, kSinks));
    EXPECT_TRUE(s.ok()) << s.status();
    if (!s.ok()) return {0, 0};
    EXPECT_TRUE(IngestTexts(stub, s->id(), Paragraphs(8), 1).ok());
    auto score = Score(stub, s->id(), " The river keeper walked along the bank.");
    EXPECT_TRUE(score.ok()) << score.status();
    if (score.ok()) out[i] = score->logprob();
    EXPECT_TRUE(DeleteSession(stub, s->id()).ok());
  }
  return {out[0], out[1]};
}

TEST_F(InfiniServiceTest, SmallSegmentsInOneStreamEqualOneAtATime) {
  // The same small segments into two COMPRESS sessions: all on one stream
  // (queued segments prefilled together, up to the window's chunk
  // boundaries) and one stream per segment, each waited for (one segment per
  // step). Same tokens, same folds, the same score after, in fewer steps.
  std::vector<std::string> segments;
  for (const std::string& p : Paragraphs(16)) {
    const size_t quarter = p.size() / 4;
    for (size_t at = 0; at < p.size(); at += quarter) segments.push_back(p.substr(at, quarter));
  }
  double scores[2] = {0, 0}, steps[2] = {0, 0};
  int64_t tokens[2] = {0, 0}, folded[2] = {0, 0};
  for (int way = 0; way < 2; ++way) {
    auto s =
        CreateSession(stub_.get(), WindowedSession(v1::OVERFLOW_POLICY_COMPRESS, kWindow, kSinks));
    ASSERT_TRUE(s.ok()) << s.status();
    auto before = ScrapeMetrics(daemon_->metrics_port());
    ASSERT_TRUE(before.ok());
    if (way == 0) {
      ASSERT_TRUE(IngestTexts(stub_.get(), s->id(), segments, 1).ok());
    } else {
      for (size_t i = 0; i < segments.size(); ++i) {
        ASSERT_TRUE(
            IngestTexts(stub_.get(), s->id(), {segments[i]}, static_cast<int64_t>(i) + 1).ok());
      }
    }
    auto after = ScrapeMetrics(daemon_->metrics_port());
    ASSERT_TRUE(after.ok());
    steps[way] = Metric(*after, "longctx_engine_steps_total") -
                 Metric(*before, "longctx_engine_steps_total");
    auto now = GetSession(stub_.get(), s->id());
    ASSERT_TRUE(now.ok());
    tokens[way] = now->tokens();
    folded[way] = now->folded_tokens();
    auto score = Score(stub_.get(), s->id(), " The river keeper walked along the bank.");
    ASSERT_TRUE(score.ok()) << score.status();
    scores[way] = score->logprob();
    EXPECT_TRUE(DeleteSession(stub_.get(), s->id()).ok());
  }
  EXPECT_EQ(tokens[0], tokens[1]);
  EXPECT_GT(tokens[0], 4 * kWindow);
  std::printf(
      "[small segments] %zu segments, %lld tokens: %g steps on one stream, %g one at a time\n",
      segments.size(), static_cast<long long>(tokens[0]), steps[0], steps[1]);
  EXPECT_EQ(folded[0], folded[1]);
  EXPECT_GT(folded[0], 0);
  EXPECT_NEAR(scores[0], scores[1], 1e-3 * std::abs(scores[1]));
  EXPECT_LT(steps[0], steps[1]) << "segments on one stream were not prefilled together";
}

TEST_F(InfiniServiceTest, WithoutGatesCompressScoresAsSlide) {
  const auto [slide, compress] = SlideAndCompressScores(stub_.get());
  EXPECT_NEAR(compress, slide, 1e-4 * std::abs(slide));
}

TEST_F(InfiniServiceTest, AGateSidecarTurnsMixingOnForCompress) {
  const std::string path = WriteGates(
      absl::StrCat(::testing::TempDir(), "/gates_", getpid(), ".infini_gates.safetensors"),
      info_.model().n_layers(), info_.model().n_heads(), 0.f);
  auto d = Daemon::Start({"--infini_gates=" + path});
  ASSERT_TRUE(d.ok()) << d.status();
  ASSERT_TRUE((*d)->WaitServing(absl::Minutes(2)).ok()) << (*d)->LogTail();
  auto stub = (*d)->Stub();
  grpc::ClientContext ctx;
  v1::ServerInfo info;
  ASSERT_TRUE(stub->GetServerInfo(&ctx, v1::GetServerInfoRequest(), &info).ok());
  EXPECT_TRUE(info.memory_mixing());
  EXPECT_EQ(info.infini_gates(), path);
  // Half of every head's output now comes from the memory (sigmoid(0)).
  const auto [slide, compress] = SlideAndCompressScores(stub.get());
  EXPECT_GT(std::abs(compress - slide), 1e-2) << "slide " << slide << " compress " << compress;
  std::remove(path.c_str());
  // A named sidecar that is missing stops the server at start-up.
  auto missing = Daemon::Start({"--infini_gates=" + path});
  ASSERT_TRUE(missing.ok());
  auto code = (*missing)->Wait(absl::Minutes(1));
  ASSERT_TRUE(code.ok());
  EXPECT_NE(*code, 0);
  EXPECT_THAT((*missing)->LogTail(), ::testing::HasSubstr(path));
}

}  // namespace
}  // namespace longctx::testing
