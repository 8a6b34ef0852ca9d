#include "engine/session/session_codec.h"

#include <cstring>
#include <random>

#include "engine/model/infini_memory.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace longctx {
namespace {

SessionSnapshot Sample() {
  SessionSnapshot s;
  s.model = {"SmolLM2", 49152, 30, 576, 0x1234abcdull};
  s.settings.labels = {{"doc", "war-and-peace"}, {"owner", "team-a"}};
  s.settings.ttl = absl::Minutes(90);
  s.settings.attention.mode = DcaMode::kDca;
  s.settings.attention.pretrain_len = 8192;
  s.settings.attention.chunk_size = 6144;
  s.settings.attention.local_window = 1024;
  s.settings.attention.length_temperature = true;
  s.settings.prompt_format = PromptFormat::kRaw;
  s.settings.system_prompt = "Be brief.";
  s.settings.window_tokens = 100000;
  s.applied_seq = 42;
  s.segments = 42;
  s.ingested_tokens = 900;
  s.user_turn_start = 17;
  for (int i = 0; i < 1000; ++i) s.tokens.push_back(i * 37 % 49152);
  return s;
}

TEST(SessionCodecTest, RoundTrips) {
  const SessionSnapshot s = Sample();
  auto back = DecodeSessionSnapshot(EncodeSessionSnapshot(s));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->model, s.model);
  EXPECT_EQ(back->settings.labels, s.settings.labels);
  EXPECT_EQ(back->settings.ttl, s.settings.ttl);
  EXPECT_EQ(back->settings.attention.mode, DcaMode::kDca);
  EXPECT_EQ(back->settings.attention.pretrain_len, 8192);
  EXPECT_EQ(back->settings.attention.chunk_size, 6144);
  EXPECT_TRUE(back->settings.attention.length_temperature);
  EXPECT_EQ(back->settings.prompt_format, PromptFormat::kRaw);
  EXPECT_EQ(back->settings.system_prompt, "Be brief.");
  EXPECT_EQ(back->settings.window_tokens, 100000);
  EXPECT_EQ(back->applied_seq, 42);
  EXPECT_EQ(back->user_turn_start, 17);
  EXPECT_EQ(back->tokens, s.tokens);
}

TEST(SessionCodecTest, CarriesTheInfiniMemoryBitIdentical) {
  SessionSnapshot s = Sample();
  s.settings.overflow = OverflowPolicy::kCompress;
  s.settings.window_tokens = 256;
  s.settings.sink_tokens = 64;
  // A memory of 2 layers, 3 kv heads, D = 8 after two random folds.
  InfiniMemory memory(2, 3, 8, cpu::InfiniUpdateRule::kDelta, 1e-6f);
  std::mt19937 rng(7);
  std::normal_distribution<float> dist;
  for (int round = 0; round < 2; ++round) {
    std::vector<float> k(5 * 3 * 8), v(k.size());
    for (float& x : k) x = dist(rng);
    for (float& x : v) x = dist(rng);
    for (int l = 0; l < 2; ++l) memory.Fold(l, k.data(), v.data(), 5);
    memory.CountFolded(5);
  }
  s.evicted_end = 320;
  s.memory = memory.Serialize();
  auto back = DecodeSessionSnapshot(EncodeSessionSnapshot(s));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->settings.overflow, OverflowPolicy::kCompress);
  EXPECT_EQ(back->settings.sink_tokens, 64);
  EXPECT_EQ(back->evicted_end, 320);
  EXPECT_EQ(back->tokens, s.tokens);
  auto restored = InfiniMemory::Deserialize(back->memory);
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_TRUE(*restored == memory);
  EXPECT_EQ(restored->folded_tokens(), 10);

  // A memory larger than the 1 MiB string cap (SmolLM2's is 1.5 MB) passes too.
  s.memory.assign(size_t{3} << 19, '\x5a');
  back = DecodeSessionSnapshot(EncodeSessionSnapshot(s));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->memory, s.memory);

  // A restore point past the token log is refused.
  s.evicted_end = static_cast<int64_t>(s.tokens.size()) + 64;
  EXPECT_EQ(DecodeSessionSnapshot(EncodeSessionSnapshot(s)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Rewrites the version of encoded session data (or, with `offset` 4, of a
// serialized Infini memory) and seals it with the FNV-1a checksum those
// earlier versions used.
std::string AsFnvVersion(std::string bytes, size_t offset, uint32_t version) {
  std::memcpy(bytes.data() + offset, &version, sizeof(version));
  const size_t body = bytes.size() - sizeof(uint64_t);
  const uint64_t sum = Fnv1a64(absl::string_view(bytes).substr(0, body));
  std::memcpy(bytes.data() + body, &sum, sizeof(sum));
  return bytes;
}

TEST(SessionCodecTest, ReadsEarlierVersionsWithTheFnvChecksum) {
  SessionSnapshot s = Sample();
  s.settings.overflow = OverflowPolicy::kCompress;
  InfiniMemory memory(1, 2, 4, cpu::InfiniUpdateRule::kLinear, 1e-6f);
  std::vector<float> k(3 * 2 * 4, 0.5f), v(k.size(), -0.25f);
  memory.Fold(0, k.data(), v.data(), 3);
  memory.CountFolded(3);
  s.evicted_end = 10;
  s.memory = AsFnvVersion(memory.Serialize(), 4, 1);  // Infini memory version 1
  const std::string v3 = EncodeSessionSnapshot(s);
  const std::string v2 = AsFnvVersion(v3, 8, 2);
  auto back = DecodeSessionSnapshot(v2);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->tokens, s.tokens);
  EXPECT_EQ(back->evicted_end, 10);
  auto restored = InfiniMemory::Deserialize(back->memory);
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_TRUE(*restored == memory);
  // The current versions end with XXH3; under the old checksum they are corrupt.
  EXPECT_EQ(Checksum64(absl::string_view(v3).substr(0, v3.size() - 8)),
            *reinterpret_cast<const uint64_t*>(v3.data() + v3.size() - 8));
  EXPECT_THAT(DecodeSessionSnapshot(AsFnvVersion(v3, 8, 3)).status().message(),
              ::testing::HasSubstr("checksum mismatch"));
  EXPECT_EQ(InfiniMemory::Deserialize(AsFnvVersion(memory.Serialize(), 4, 2)).status().code(),
            absl::StatusCode::kDataLoss);
  // A version this build does not know is named as such.
  EXPECT_THAT(DecodeSessionSnapshot(AsFnvVersion(v3, 8, 5)).status().message(),
              ::testing::HasSubstr("version 5 is not supported"));
}

TEST(SessionCodecTest, RejectsDamage) {
  const std::string good = EncodeSessionSnapshot(Sample());
  EXPECT_THAT(DecodeSessionSnapshot("nonsense").status().message(), ::testing::HasSubstr("header"));
  // Every truncation and every single-byte change is caught.
  for (size_t cut = 0; cut < good.size(); cut += 97) {
    EXPECT_FALSE(DecodeSessionSnapshot(absl::string_view(good).substr(0, cut)).ok()) << cut;
  }
  for (size_t i = 8; i < good.size(); i += 13) {
    std::string bad = good;
    bad[i] ^= 0x20;
    EXPECT_EQ(DecodeSessionSnapshot(bad).status().code(), absl::StatusCode::kInvalidArgument) << i;
  }
}

// Re-seals `bytes` with a valid XXH3 checksum, as a client forging a blob can.
std::string Reseal(std::string bytes) {
  const size_t body = bytes.size() - sizeof(uint64_t);
  const uint64_t sum = Checksum64(absl::string_view(bytes).substr(0, body));
  std::memcpy(bytes.data() + body, &sum, sizeof(sum));
  return bytes;
}

TEST(SessionCodecTest, RefusesForgedCounters) {
  struct Case {
    const char* name;
    void (*forge)(SessionSnapshot&);
  };
  const Case cases[] = {
      {"applied seq INT64_MAX", [](SessionSnapshot& s) { s.applied_seq = INT64_MAX; }},
      {"applied seq over segments", [](SessionSnapshot& s) { s.applied_seq = s.segments + 1; }},
      {"segments over ingested", [](SessionSnapshot& s) { s.segments = s.ingested_tokens + 1; }},
      {"ingested over the log", [](SessionSnapshot& s) { s.ingested_tokens = 1001; }},
      {"user turn past the log", [](SessionSnapshot& s) { s.user_turn_start = 1001; }},
      {"negative segments", [](SessionSnapshot& s) { s.segments = -1; }},
      {"evicted end past the log", [](SessionSnapshot& s) { s.evicted_end = 5000; }},
  };
  for (const Case& c : cases) {
    SessionSnapshot s = Sample();
    c.forge(s);
    const auto back = DecodeSessionSnapshot(EncodeSessionSnapshot(s));
    EXPECT_EQ(back.status().code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_THAT(back.status().message(), ::testing::HasSubstr("session data")) << c.name;
  }
  SessionSnapshot ok = Sample();
  ok.applied_seq = ok.segments = ok.ingested_tokens = 1000;  // one token a segment
  EXPECT_TRUE(DecodeSessionSnapshot(EncodeSessionSnapshot(ok)).ok());
}

TEST(SessionCodecTest, SignedBlobsNeedTheKey) {
  const std::string key = "0123456789abcdef-secret";
  const SessionSnapshot s = Sample();
  const std::string signed_blob = EncodeSessionSnapshot(s, key);
  const std::string unsigned_blob = EncodeSessionSnapshot(s);
  EXPECT_EQ(signed_blob.size(), unsigned_blob.size() + 32);

  auto back = DecodeSessionSnapshot(signed_blob, key);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->tokens, s.tokens);
  // Without a key, blobs are trusted input: signed or not, both are read.
  EXPECT_TRUE(DecodeSessionSnapshot(signed_blob).ok());
  EXPECT_TRUE(DecodeSessionSnapshot(unsigned_blob).ok());

  // With a key: an unsigned blob, another key's signature and a tampered
  // blob (checksum recomputed, as a client can) are all refused.
  EXPECT_EQ(DecodeSessionSnapshot(unsigned_blob, key).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(DecodeSessionSnapshot(signed_blob, "another-key-0123456789").status().code(),
            absl::StatusCode::kPermissionDenied);
  std::string tampered = signed_blob;
  tampered[signed_blob.size() - 32 - 8 - 4] ^= 1;  // the last token
  tampered = Reseal(tampered);
  EXPECT_EQ(DecodeSessionSnapshot(tampered, key).status().code(),
            absl::StatusCode::kPermissionDenied);
  // Without the key the same tampering goes unnoticed (trusted input).
  EXPECT_TRUE(DecodeSessionSnapshot(tampered).ok());
  // Without a valid checksum it is corrupt, key or not.
  std::string damaged = signed_blob;
  damaged[40] ^= 1;
  EXPECT_EQ(DecodeSessionSnapshot(damaged, key).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(SessionCodecTest, TheHeaderDeclaresTheBlobsSize) {
  for (const std::string& key : {std::string(), std::string("0123456789abcdef")}) {
    const std::string blob = EncodeSessionSnapshot(Sample(), key);
    size_t known_at = 0;
    for (size_t n = 0; n <= blob.size(); ++n) {
      auto size = SessionSnapshotSize(absl::string_view(blob).substr(0, n));
      ASSERT_TRUE(size.ok()) << size.status();
      if (!size->has_value()) continue;
      EXPECT_EQ(**size, blob.size());
      known_at = n;
      break;
    }
    // Known once the header is in: well before the 4000 bytes of tokens.
    EXPECT_GT(known_at, 0u);
    EXPECT_LT(known_at, blob.size() - 4000);
  }
  EXPECT_FALSE(SessionSnapshotSize("NOTASESSIONHEADER").ok());
}

}  // namespace
}  // namespace longctx
