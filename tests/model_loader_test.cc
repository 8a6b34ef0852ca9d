// LoadHostModel on the real default model, checked against values computed by
// tools/gen_loader_fixtures.py with the `gguf` Python package and transformers'
// GGUF q/k reverse permutation (tests/fixtures/loader/smollm2_q4_1.txt).
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "engine/model/gguf.h"
#include "engine/model/host_weights.h"
#include "gtest/gtest.h"

namespace longctx {
namespace {

struct Fixture {
  std::map<std::string, std::string> config;
  std::map<std::string, std::string> vocab;
  std::map<std::string, std::pair<int64_t, int64_t>> shapes;
  struct Value {
    std::string name;
    int64_t row, col;
    uint32_t bits;
  };
  std::vector<Value> values;
  std::vector<Value> permuted;
};

Fixture ReadFixture() {
  Fixture f;
  std::ifstream in(std::string(LONGCTX_SOURCE_DIR) + "/tests/fixtures/loader/smollm2_q4_1.txt");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string kind, a, b;
    ls >> kind >> a;
    if (kind == "config" || kind == "vocab") {
      ls >> b;
      (kind == "config" ? f.config : f.vocab)[a] = b;
    } else if (kind == "tensor") {
      int64_t r, c;
      ls >> r >> c;
      f.shapes[a] = {r, c};
    } else if (kind == "value" || kind == "permuted") {
      Fixture::Value v;
      v.name = a;
      std::string hex;
      ls >> v.row >> v.col >> hex;
      v.bits = static_cast<uint32_t>(std::stoul(hex, nullptr, 16));
      (kind == "value" ? f.values : f.permuted).push_back(v);
    }
  }
  return f;
}

std::string Unhex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

float FromBits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

const char* ModelPath() { return std::getenv("LONGCTX_MODEL"); }

class ModelLoaderTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (ModelPath() == nullptr) return;
    fixture_ = new Fixture(ReadFixture());
    const auto t0 = std::chrono::steady_clock::now();
    auto m = LoadHostModel(ModelPath());
    const double load_seconds_ =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ASSERT_TRUE(m.ok()) << m.status();
    // Informational only (no timing assertions in unit tests; the machine may be shared).
    std::printf("LoadHostModel(%s): %.3f s\n", ModelPath(), load_seconds_);
    model_ = new HostModel(*std::move(m));
  }
  static void TearDownTestSuite() {
    delete model_;
    delete fixture_;
    model_ = nullptr;
    fixture_ = nullptr;
  }
  void SetUp() override {
    if (ModelPath() == nullptr) GTEST_SKIP() << "LONGCTX_MODEL is not set";
    ASSERT_NE(model_, nullptr);
  }

  static HostModel* model_;
  static Fixture* fixture_;
};

HostModel* ModelLoaderTest::model_ = nullptr;
Fixture* ModelLoaderTest::fixture_ = nullptr;

TEST_F(ModelLoaderTest, ConfigMatchesMetadata) {
  const ModelConfig& c = model_->config;
  const auto& want = fixture_->config;
  EXPECT_EQ(c.architecture, want.at("architecture"));
  EXPECT_EQ(c.n_layers, std::stoi(want.at("n_layers")));
  EXPECT_EQ(c.d_model, std::stoi(want.at("d_model")));
  EXPECT_EQ(c.n_heads, std::stoi(want.at("n_heads")));
  EXPECT_EQ(c.n_kv_heads, std::stoi(want.at("n_kv_heads")));
  EXPECT_EQ(c.head_dim, std::stoi(want.at("head_dim")));
  EXPECT_EQ(c.d_ff, std::stoi(want.at("d_ff")));
  EXPECT_EQ(c.vocab_size, std::stoi(want.at("vocab_size")));
  EXPECT_EQ(c.context_length, std::stoi(want.at("context_length")));
  EXPECT_EQ(c.rope_theta, FromBits(std::stoul(want.at("rope_theta"), nullptr, 16)));
  EXPECT_EQ(c.rms_eps, FromBits(std::stoul(want.at("rms_eps"), nullptr, 16)));
  EXPECT_EQ(c.tied_embeddings, want.at("tied_embeddings") == "1");
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_EQ(c.rope_scaling, RopeScalingType::kNone);
  EXPECT_TRUE(c.Validate().ok());
  // The documented default model (docs/design.md §2).
  EXPECT_EQ(c.n_layers, 30);
  EXPECT_EQ(c.n_heads, 9);
  EXPECT_EQ(c.n_kv_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_EQ(c.rope_theta, 1e5f);
}

TEST_F(ModelLoaderTest, VocabMatchesMetadata) {
  const VocabData& v = model_->vocab;
  const auto& want = fixture_->vocab;
  EXPECT_EQ(v.model, Unhex(want.at("model")));
  EXPECT_EQ(v.pre, Unhex(want.at("pre")));
  ASSERT_EQ(v.tokens.size(), std::stoul(want.at("n_tokens")));
  EXPECT_EQ(v.merges.size(), std::stoul(want.at("n_merges")));
  EXPECT_EQ(v.bos_id, std::stoi(want.at("bos_token_id")));
  EXPECT_EQ(v.eos_id, std::stoi(want.at("eos_token_id")));
  EXPECT_EQ(v.unk_id, std::stoi(want.at("unknown_token_id")));
  EXPECT_EQ(v.pad_id, std::stoi(want.at("padding_token_id")));
  for (size_t id : {0ul, 1ul, 2ul, 100ul, 1000ul, v.tokens.size() - 1}) {
    EXPECT_EQ(v.tokens[id], Unhex(want.at("token_" + std::to_string(id)))) << id;
  }
  EXPECT_EQ(v.merges.front(), Unhex(want.at("merge_0")));
  EXPECT_EQ(v.merges.back(), Unhex(want.at("merge_last")));
  ASSERT_EQ(v.types.size(), v.tokens.size());
  EXPECT_EQ(static_cast<int>(v.types[0]), std::stoi(want.at("type_0")));
  EXPECT_EQ(static_cast<int>(v.types[1000]), std::stoi(want.at("type_1000")));
  EXPECT_TRUE(v.scores.empty());
  EXPECT_FALSE(v.add_bos);
  EXPECT_NE(v.chat_template.find("<|im_start|>"), std::string::npos);
}

TEST_F(ModelLoaderTest, AllTensorsLoadedWithGgufNamesAndShapes) {
  EXPECT_EQ(model_->tensors.size(), std::stoul(fixture_->config.at("n_tensors")));
  EXPECT_EQ(model_->tensors.count("output.weight"), 0u);  // tied
  for (const auto& [name, rc] : fixture_->shapes) {
    auto it = model_->tensors.find(name);
    ASSERT_NE(it, model_->tensors.end()) << name;
    const HostTensor& t = it->second;
    if (rc.second == 0) {
      EXPECT_EQ(t.shape, (std::vector<int64_t>{rc.first})) << name;
    } else {
      EXPECT_EQ(t.shape, (std::vector<int64_t>{rc.first, rc.second})) << name;
    }
    EXPECT_EQ(static_cast<int64_t>(t.data.size()), t.numel()) << name;
  }
}

// Exact f32 equality: both sides compute d * q + m (or x * d) in f32 from the
// same f16 scales, and q/k rows are reordered, not recomputed.
TEST_F(ModelLoaderTest, ValuesMatchGgufPackageDequantizationAndUnpermute) {
  ASSERT_FALSE(fixture_->values.empty());
  for (const auto& v : fixture_->values) {
    const HostTensor& t = model_->tensors.at(v.name);
    const int64_t cols = t.shape.size() == 2 ? t.shape[1] : t.shape[0];
    const float got = t.data[static_cast<size_t>(v.row * cols + v.col)];
    EXPECT_EQ(got, FromBits(v.bits)) << v.name << "[" << v.row << ", " << v.col << "]";
  }
}

// Reading q/k in the file's row order must not match: proves the fixture
// distinguishes permuted from un-permuted rows, so the test above checks the
// un-permutation rather than passing for both layouts.
TEST_F(ModelLoaderTest, FileRowOrderOfQkDiffersFromLoadedOrder) {
  ASSERT_FALSE(fixture_->permuted.empty());
  int differing = 0;
  for (const auto& v : fixture_->permuted) {
    const HostTensor& t = model_->tensors.at(v.name);
    const float got = t.data[static_cast<size_t>(v.row * t.shape[1] + v.col)];
    if (got != FromBits(v.bits)) ++differing;
  }
  EXPECT_GT(differing, static_cast<int>(fixture_->permuted.size()) * 3 / 4);
}

TEST_F(ModelLoaderTest, VWeightsKeepFileRowOrder) {
  // Un-permuting is for q/k only: attn_v as loaded equals a direct read.
  auto f = GgufFile::Open(ModelPath());
  ASSERT_TRUE(f.ok()) << f.status();
  const GgufTensorInfo* info = (*f)->FindTensor("blk.0.attn_v.weight");
  ASSERT_NE(info, nullptr);
  std::vector<float> raw(static_cast<size_t>(info->n_elements));
  ASSERT_TRUE((*f)->Dequantize(*info, raw).ok());
  EXPECT_EQ(raw, model_->tensors.at("blk.0.attn_v.weight").data);
}

}  // namespace
}  // namespace longctx
