// DCA settings: defaults from the model, layered overrides, validation errors
// that name the field, and the kernel parameters they produce.
#include "engine/model/dca_config.h"

#include <cmath>
#include <limits>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace longctx {
namespace {

using ::testing::HasSubstr;

ModelConfig SmolLm2Shape() {
  ModelConfig m;
  m.name = "smollm2-shape";
  m.n_heads = 9;
  m.n_kv_heads = 3;
  m.head_dim = 64;
  m.context_length = 8192;
  m.rope_theta = 100000.f;
  return m;
}

TEST(DcaConfigTest, DefaultsDeriveFromModelContextLength) {
  auto c = DcaConfig::Resolve(SmolLm2Shape(), {});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->mode, DcaMode::kDca);
  EXPECT_EQ(c->pretrain_len, 8192);
  EXPECT_EQ(c->chunk_size, 6144);    // 3c/4
  EXPECT_EQ(c->local_window, 1024);  // c/8
  EXPECT_EQ(c->chunk_len(), 5120);
  EXPECT_FALSE(c->length_temperature);
  EXPECT_TRUE(c->compose_rope_scaling);
  EXPECT_TRUE(c->Validate(64).ok());
}

TEST(DcaConfigTest, ChunkDefaultsFollowOverriddenPretrainLength) {
  DcaOverrides o;
  o.pretrain_len = 2048;
  auto c = DcaConfig::Resolve(SmolLm2Shape(), o);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->chunk_size, 1536);
  EXPECT_EQ(c->local_window, 256);
  EXPECT_TRUE(c->Validate(64).ok());
}

TEST(DcaConfigTest, DefaultsAreRoundedToKeepChunkLengthBlockAligned) {
  ModelConfig m = SmolLm2Shape();
  m.context_length = 3000;  // 3c/4 = 2250, c/8 = 375: neither a multiple of 64
  auto c = DcaConfig::Resolve(m, {});
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->chunk_size, 2240);
  EXPECT_EQ(c->local_window, 320);
  EXPECT_TRUE(c->Validate(64).ok()) << c->Validate(64);
}

TEST(DcaConfigTest, MissingPretrainLengthIsAnError) {
  ModelConfig m = SmolLm2Shape();
  m.context_length = 0;
  auto c = DcaConfig::Resolve(m, {});
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("pretrain_len"));
  DcaOverrides o;
  o.pretrain_len = 4096;
  EXPECT_TRUE(DcaConfig::Resolve(m, o).ok());
}

TEST(DcaConfigTest, HugePretrainLengthIsRefusedNotOverflowed) {
  const ModelConfig m = SmolLm2Shape();
  DcaOverrides o;
  o.pretrain_len = std::numeric_limits<int>::max();  // 3c overflows an int
  auto c = DcaConfig::Resolve(m, o);
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("pretrain_len"));
  // The largest accepted c derives C = 3c/4 and w = c/8 without overflow.
  o.pretrain_len = DcaConfig::kMaxPretrainLen;
  c = DcaConfig::Resolve(m, o);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->chunk_size, DcaConfig::kMaxPretrainLen / 4 * 3);
  EXPECT_EQ(c->local_window, DcaConfig::kMaxPretrainLen / 8);
  EXPECT_TRUE(c->Validate(64).ok()) << c->Validate(64);
  DcaConfig forged = *c;
  forged.pretrain_len = DcaConfig::kMaxPretrainLen + 1;
  EXPECT_EQ(forged.Validate(64).code(), absl::StatusCode::kInvalidArgument);
}

TEST(DcaConfigTest, LaterOverridesWin) {
  DcaOverrides session;
  session.pretrain_len = 4096;
  session.mode = DcaMode::kRope;
  DcaOverrides request;
  request.mode = DcaMode::kDca;
  request.local_window = 128;
  const DcaOverrides merged = session.Then(request);
  auto c = DcaConfig::Resolve(SmolLm2Shape(), merged);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->mode, DcaMode::kDca);
  EXPECT_EQ(c->pretrain_len, 4096);
  EXPECT_EQ(c->chunk_size, 3072);
  EXPECT_EQ(c->local_window, 128);
}

struct BadCase {
  int c, C, w, block;
  const char* field;
};

TEST(DcaConfigTest, ValidationErrorsNameTheField) {
  const BadCase cases[] = {
      {8192, 6144, 0, 64, "local_window"},     // w = 0
      {8192, 6144, -64, 64, "local_window"},   // w < 0
      {8192, 1024, 1024, 64, "local_window"},  // w = C
      {8192, 1024, 2048, 64, "local_window"},  // w > C
      {8192, 9216, 1024, 64, "chunk_size"},    // C > c
      {8192, 6144, 1000, 64, "block_size"},    // L = 5144 not a multiple of 64
      {8192, 6144, 1024, 0, "block_size"},     // no block size
      {0, 6144, 1024, 64, "pretrain_len"},
  };
  for (const BadCase& b : cases) {
    DcaConfig c;
    c.pretrain_len = b.c;
    c.chunk_size = b.C;
    c.local_window = b.w;
    const absl::Status s = c.Validate(b.block);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.DebugString();
    EXPECT_THAT(s.message(), HasSubstr(b.field)) << c.DebugString();
  }
}

TEST(DcaConfigTest, BoundaryValuesAreAccepted) {
  DcaConfig c;
  c.pretrain_len = 8192;
  c.chunk_size = 8192;  // C = c
  c.local_window = 64;  // smallest block-aligned w
  EXPECT_TRUE(c.Validate(64).ok());
  c.chunk_size = 128;
  c.local_window = 64;  // L = one block
  EXPECT_TRUE(c.Validate(64).ok());
}

TEST(DcaConfigTest, RopeModeIgnoresChunkSettings) {
  DcaConfig c;
  c.mode = DcaMode::kRope;
  c.pretrain_len = 8192;
  EXPECT_TRUE(c.Validate(64).ok());
  const cpu::DcaParams p = c.ToParams(64, 100000);
  EXPECT_EQ(p.chunk_len, cpu::kDcaUnbounded);
  EXPECT_EQ(p.chunk_size, cpu::kDcaUnbounded);
  EXPECT_FLOAT_EQ(p.softmax_scale, 0.125f);
}

TEST(DcaConfigTest, ToParamsCarriesChunksAndScale) {
  auto c = DcaConfig::Resolve(SmolLm2Shape(), {});
  ASSERT_TRUE(c.ok());
  const cpu::DcaParams p = c->ToParams(64, 32768);
  EXPECT_EQ(p.chunk_len, 5120);
  EXPECT_EQ(p.chunk_size, 6144);
  EXPECT_FLOAT_EQ(p.softmax_scale, 0.125f);  // temperature off by default
}

TEST(DcaConfigTest, LengthTemperatureScalesOnlyPastPretrainLength) {
  DcaOverrides o;
  o.length_temperature = true;
  auto c = DcaConfig::Resolve(SmolLm2Shape(), o);
  ASSERT_TRUE(c.ok());
  EXPECT_FLOAT_EQ(c->TemperatureFactor(4096), 1.f);
  EXPECT_FLOAT_EQ(c->TemperatureFactor(8192), 1.f);
  const double sf = 0.1 * std::log(4.0) + 1.0;  // T = 4c
  EXPECT_NEAR(c->TemperatureFactor(32768), sf * sf, 1e-6);
  EXPECT_NEAR(c->ToParams(64, 32768).softmax_scale, sf * sf / 8.0, 1e-7);
}

TEST(DcaConfigTest, ParsesModeNames) {
  EXPECT_EQ(*ParseDcaMode("rope"), DcaMode::kRope);
  EXPECT_EQ(*ParseDcaMode("dca"), DcaMode::kDca);
  EXPECT_EQ(ParseDcaMode("chunked").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_STREQ(DcaModeName(DcaMode::kRope), "rope");
}

TEST(DcaConfigTest, RopeFrequenciesComposeWithModelScaling) {
  ModelConfig m = SmolLm2Shape();
  const std::vector<float> base = RopeInverseFrequencies(m, true);
  ASSERT_EQ(base.size(), 32u);
  EXPECT_FLOAT_EQ(base[0], 1.f);
  EXPECT_FLOAT_EQ(base[1], static_cast<float>(std::pow(100000.0, -2.0 / 64)));

  m.rope_scaling = RopeScalingType::kLinear;
  m.rope_scaling_factor = 4.f;
  const std::vector<float> linear = RopeInverseFrequencies(m, true);
  for (size_t i = 0; i < base.size(); ++i) EXPECT_FLOAT_EQ(linear[i], base[i] / 4.f);
  EXPECT_EQ(RopeInverseFrequencies(m, false), base);

  m.rope_scaling = RopeScalingType::kNtk;
  const std::vector<float> ntk = RopeInverseFrequencies(m, true);
  EXPECT_FLOAT_EQ(ntk[0], 1.f);                 // the fastest rotation is kept
  EXPECT_NEAR(ntk[31] / base[31], 0.25, 1e-5);  // the slowest slows by the factor
  EXPECT_EQ(RopeInverseFrequencies(m, false), base);
}

}  // namespace
}  // namespace longctx
