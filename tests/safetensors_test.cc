// Hugging Face model loading: fixtures written by the `safetensors` and
// `tokenizers` packages (tools/gen_hf_fixtures.py), single-file and sharded,
// plus synthetic and hostile safetensors files written byte by byte here.
#include "engine/model/safetensors.h"

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/model/hf_model.h"
#include "engine/model/host_weights.h"
#include "engine/util/json_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace longctx {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

std::string FixtureDir(const std::string& name) {
  return std::string(LONGCTX_SOURCE_DIR) + "/tests/fixtures/loader/" + name;
}

float FromBits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

#define EXPECT_ERROR(expr, code_, text)                            \
  do {                                                             \
    const absl::Status _s = (expr);                                \
    EXPECT_EQ(_s.code(), absl::StatusCode::code_) << _s;           \
    EXPECT_THAT(std::string(_s.message()), HasSubstr(text)) << _s; \
  } while (0)

// Checks every "value DIR NAME ROW COL BITS" line of hf_expected.txt for `dir`.
void ExpectFixtureValues(const HostModel& m, const std::string& dir) {
  std::ifstream in(FixtureDir("hf_expected.txt"));
  std::string line;
  int checked = 0;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string kind, d, name, hex;
    int64_t row, col;
    ls >> kind >> d >> name >> row >> col >> hex;
    if (kind != "value" || d != dir) continue;
    const std::optional<std::string> canon = CanonicalTensorName(name);
    ASSERT_TRUE(canon.has_value()) << name;
    const HostTensor& t = m.tensors.at(*canon);
    const int64_t cols = t.shape.size() == 2 ? t.shape[1] : 1;
    EXPECT_EQ(t.data[static_cast<size_t>(row * cols + col)],
              FromBits(static_cast<uint32_t>(std::stoul(hex, nullptr, 16))))
        << name << "[" << row << ", " << col << "]";
    ++checked;
  }
  EXPECT_GT(checked, 10);
}

TEST(SafetensorsTest, CanonicalNames) {
  EXPECT_EQ(CanonicalTensorName("model.embed_tokens.weight"), "token_embd.weight");
  EXPECT_EQ(CanonicalTensorName("lm_head.weight"), "output.weight");
  EXPECT_EQ(CanonicalTensorName("model.norm.weight"), "output_norm.weight");
  EXPECT_EQ(CanonicalTensorName("model.layers.12.self_attn.q_proj.weight"), "blk.12.attn_q.weight");
  EXPECT_EQ(CanonicalTensorName("model.layers.0.self_attn.v_proj.bias"), "blk.0.attn_v.bias");
  EXPECT_EQ(CanonicalTensorName("model.layers.3.self_attn.o_proj.weight"),
            "blk.3.attn_output.weight");
  EXPECT_EQ(CanonicalTensorName("model.layers.3.input_layernorm.weight"), "blk.3.attn_norm.weight");
  EXPECT_EQ(CanonicalTensorName("model.layers.3.post_attention_layernorm.weight"),
            "blk.3.ffn_norm.weight");
  EXPECT_EQ(CanonicalTensorName("model.layers.7.mlp.gate_proj.weight"), "blk.7.ffn_gate.weight");
  EXPECT_EQ(CanonicalTensorName("model.layers.7.mlp.up_proj.weight"), "blk.7.ffn_up.weight");
  EXPECT_EQ(CanonicalTensorName("model.layers.7.mlp.down_proj.weight"), "blk.7.ffn_down.weight");
  EXPECT_EQ(CanonicalTensorName("model.layers.x.mlp.up_proj.weight"), std::nullopt);
  EXPECT_EQ(CanonicalTensorName("model.layers.01.mlp.up_proj.weight"), std::nullopt);
  EXPECT_EQ(CanonicalTensorName("model.layers.1.mlp.experts.weight"), std::nullopt);
}

TEST(SafetensorsTest, LoadsSingleFileLlama) {
  auto m = LoadHostModel(FixtureDir("hf_tiny_llama"));
  ASSERT_TRUE(m.ok()) << m.status();
  const ModelConfig& c = m->config;
  EXPECT_EQ(c.architecture, "llama");
  EXPECT_EQ(c.n_layers, 2);
  EXPECT_EQ(c.d_model, 16);
  EXPECT_EQ(c.n_heads, 4);
  EXPECT_EQ(c.n_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 4);
  EXPECT_EQ(c.d_ff, 32);
  EXPECT_EQ(c.context_length, 256);
  EXPECT_EQ(c.rope_theta, 1e5f);
  EXPECT_EQ(c.rms_eps, 1e-5f);
  EXPECT_TRUE(c.tied_embeddings);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_EQ(c.rope_scaling, RopeScalingType::kLinear);
  EXPECT_EQ(c.rope_scaling_factor, 2.f);
  EXPECT_EQ(m->tensors.count("output.weight"), 0u);
  EXPECT_EQ(m->tensors.size(), 2u + 2u * 9u);
  EXPECT_EQ(m->tensors.at("blk.1.attn_k.weight").shape, (std::vector<int64_t>{8, 16}));
  ExpectFixtureValues(*m, "hf_tiny_llama");

  const VocabData& v = m->vocab;
  EXPECT_EQ(v.model, "gpt2");
  EXPECT_EQ(v.pre, "llama-bpe");  // byte-level llama
  ASSERT_EQ(v.tokens.size(), 262u);
  EXPECT_EQ(c.vocab_size, 262);
  EXPECT_EQ(v.tokens[260], "<|im_start|>");
  EXPECT_EQ(v.types[260], TokenType::kControl);
  EXPECT_EQ(v.types[0], TokenType::kNormal);
  EXPECT_EQ(v.merges, (std::vector<std::string>{"h e", "l l", "he ll", "\xc4\xa0 w"}));
  EXPECT_EQ(v.bos_id, 260);
  EXPECT_EQ(v.eos_id, 261);  // first entry of the eos list
  EXPECT_FALSE(v.add_bos);
  EXPECT_THAT(v.chat_template, HasSubstr("m['content']"));
}

TEST(SafetensorsTest, LoadsShardedQwen2) {
  auto m = LoadHostModel(FixtureDir("hf_tiny_qwen2"));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->config.architecture, "qwen2");
  EXPECT_TRUE(m->config.qkv_bias);
  EXPECT_FALSE(m->config.tied_embeddings);
  EXPECT_EQ(m->config.rope_scaling, RopeScalingType::kNone);
  EXPECT_EQ(m->tensors.size(), 3u + 2u * 12u);
  EXPECT_EQ(m->tensors.at("blk.0.attn_q.bias").shape, (std::vector<int64_t>{16}));
  EXPECT_EQ(m->vocab.pre, "qwen2");
  ExpectFixtureValues(*m, "hf_tiny_qwen2");
}

// ---- synthetic and hostile files ----

struct StTensor {
  std::string name, dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;
};

// Safetensors bytes; `header_override` replaces the generated JSON header.
std::string SafetensorsBytes(const std::vector<StTensor>& ts,
                             const std::string& header_override = "") {
  std::string header = "{\"__metadata__\":{\"format\":\"pt\"}";
  std::string data;
  for (const StTensor& t : ts) {
    absl::StrAppend(&header, ",\"", t.name, "\":{\"dtype\":\"", t.dtype, "\",\"shape\":[",
                    absl::StrJoin(t.shape, ","), "],\"data_offsets\":[", data.size(), ",",
                    data.size() + t.data.size(), "]}");
    data.append(t.data.begin(), t.data.end());
  }
  header += "}";
  if (!header_override.empty()) header = header_override;
  while (header.size() % 8 != 0) header += ' ';
  std::string out(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}

absl::Status ParseBytes(const std::string& b) {
  return SafetensorsFile::Parse(std::span(reinterpret_cast<const uint8_t*>(b.data()), b.size()))
      .status();
}

std::vector<uint8_t> F32Bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

TEST(SafetensorsTest, ConvertsF32F16Bf16) {
  // 1.5 = f16 0x3e00 = bf16 0x3fc0; -2 = f16 0xc000 = bf16 0xc000.
  const std::string b = SafetensorsBytes({
      {"a", "F32", {2}, F32Bytes({1.5f, -2.f})},
      {"h", "F16", {1, 2}, {0x00, 0x3e, 0x00, 0xc0}},
      {"b", "BF16", {2, 1}, {0xc0, 0x3f, 0x00, 0xc0}},
      {"i", "I64", {1}, std::vector<uint8_t>(8)},
  });
  auto f = SafetensorsFile::Parse(std::span(reinterpret_cast<const uint8_t*>(b.data()), b.size()));
  ASSERT_TRUE(f.ok()) << f.status();
  for (const char* name : {"a", "h", "b"}) {
    const SafetensorsTensorInfo* t = (*f)->Find(name);
    ASSERT_NE(t, nullptr) << name;
    std::vector<float> out(2);
    ASSERT_TRUE((*f)->ToF32(*t, out).ok()) << name;
    EXPECT_EQ(out, (std::vector<float>{1.5f, -2.f})) << name;
  }
  std::vector<float> one(1);
  EXPECT_ERROR((*f)->ToF32(*(*f)->Find("i"), one), kUnimplemented, "dtype I64");
}

TEST(SafetensorsTest, HostileFiles) {
  const std::vector<uint8_t> four = F32Bytes({1, 2, 3, 4});
  EXPECT_ERROR(ParseBytes("abc"), kInvalidArgument, "no header length");
  {
    std::string b = SafetensorsBytes({{"a", "F32", {4}, four}});
    const uint64_t huge = uint64_t{1} << 60;
    std::memcpy(b.data(), &huge, 8);
    EXPECT_ERROR(ParseBytes(b), kInvalidArgument, "header length");
  }
  EXPECT_ERROR(ParseBytes(SafetensorsBytes({}, "{\"a\": ")), kInvalidArgument, "JSON");
  EXPECT_ERROR(ParseBytes(SafetensorsBytes({}, "[1,2]")), kInvalidArgument, "not a JSON object");
  EXPECT_ERROR(ParseBytes(SafetensorsBytes(
                   {}, "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}")),
               kInvalidArgument, "past the end");
  EXPECT_ERROR(ParseBytes(SafetensorsBytes({{"a", "F32", {5}, four}})), kInvalidArgument,
               "needs 5 x 4 bytes");
  EXPECT_ERROR(ParseBytes(SafetensorsBytes({{"a", "F33", {4}, four}})), kInvalidArgument,
               "unknown dtype 'F33'");
  EXPECT_ERROR(ParseBytes(SafetensorsBytes({{"a", "F32", {-4}, four}})), kInvalidArgument,
               "non-negative");
  EXPECT_ERROR(ParseBytes(SafetensorsBytes({{"a", "F32", {1, 1, 1, 1, 1, 1, 1, 1, 4}, four}})),
               kInvalidArgument, "at most 8 dims");
  EXPECT_ERROR(
      ParseBytes(SafetensorsBytes({{"a", "F32", {4294967296, 4294967296, 4294967296}, four}})),
      kInvalidArgument, "overflows");
  const std::string base = SafetensorsBytes({{"a", "F32", {4}, four}});
  EXPECT_ERROR(ParseBytes(SafetensorsBytes(
                              {},
                              "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                              "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}") +
                          std::string(16, '\0')),
               kInvalidArgument, "overlaps");
  // Truncation at every byte never crashes.
  for (size_t n = 0; n < base.size(); ++n) {
    EXPECT_FALSE(ParseBytes(base.substr(0, n)).ok()) << n;
  }
}

TEST(SafetensorsTest, HostileHeaders) {
  const std::string entry = "{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}";
  EXPECT_ERROR(ParseBytes(SafetensorsBytes({}, "{\"a\":" + entry + ",\"a\":" + entry + "}") +
                          std::string(4, '\0')),
               kInvalidArgument, "safetensors: header: JSON: duplicate key \"a\"");
  // Nesting is bounded at 16 levels (a tensor entry needs 3).
  std::string deep = "{\"__metadata__\":";
  for (int i = 0; i < 16; ++i) deep += "[";
  deep += std::string(16, ']') + "}";
  EXPECT_ERROR(ParseBytes(SafetensorsBytes({}, deep)), kInvalidArgument, "nesting deeper than 16");
  // At most 2^21 values: a header of ~2.1M zeros in 4.2 MB is refused.
  std::string many = "{\"__metadata__\":[";
  for (int i = 0; i < (1 << 21) + 1; ++i) many += "0,";
  many += "0]}";
  EXPECT_ERROR(ParseBytes(SafetensorsBytes({}, many)), kInvalidArgument,
               "more than 2097152 values");
}

TEST(SafetensorsTest, TensorsInHeaderOrder) {
  const std::string b = SafetensorsBytes({{"z", "F32", {1}, F32Bytes({1})},
                                          {"a", "F32", {1}, F32Bytes({2})},
                                          {"m", "F32", {1}, F32Bytes({3})}});
  auto f = SafetensorsFile::Parse(std::span(reinterpret_cast<const uint8_t*>(b.data()), b.size()));
  ASSERT_TRUE(f.ok()) << f.status();
  std::vector<std::string> names;
  for (const SafetensorsTensorInfo& t : (*f)->tensors()) names.push_back(t.name);
  EXPECT_EQ(names, (std::vector<std::string>{"z", "a", "m"}));
  EXPECT_EQ((*f)->Find("a")->begin, 4u);
}

// A directory model built by hand, edited per test.
class HfDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           absl::StrCat("longctx_hf_", ::getpid(), "_",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    for (const char* f : {"config.json", "tokenizer.json", "tokenizer_config.json"}) {
      fs::copy_file(fs::path(FixtureDir("hf_tiny_llama")) / f, dir_ / f);
    }
  }
  void TearDown() override { fs::remove_all(dir_); }

  void Write(const std::string& name, const std::string& bytes) {
    std::ofstream(dir_ / name, std::ios::binary) << bytes;
  }
  // The tiny llama's tensors in F32 (d 16, 4 heads of 4, 2 kv heads, ff 32,
  // vocab 262), `skip` left out.
  std::vector<StTensor> Tensors(const std::string& skip = "") {
    std::vector<StTensor> ts;
    auto add = [&](const std::string& name, std::vector<int64_t> shape) {
      if (name == skip) return;
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      ts.push_back({name, "F32", shape, F32Bytes(std::vector<float>(n, 0.5f))});
    };
    add("model.embed_tokens.weight", {262, 16});
    add("model.norm.weight", {16});
    for (int l = 0; l < 2; ++l) {
      const std::string p = absl::StrCat("model.layers.", l, ".");
      add(p + "input_layernorm.weight", {16});
      add(p + "post_attention_layernorm.weight", {16});
      add(p + "self_attn.q_proj.weight", {16, 16});
      add(p + "self_attn.k_proj.weight", {8, 16});
      add(p + "self_attn.v_proj.weight", {8, 16});
      add(p + "self_attn.o_proj.weight", {16, 16});
      add(p + "mlp.gate_proj.weight", {32, 16});
      add(p + "mlp.up_proj.weight", {32, 16});
      add(p + "mlp.down_proj.weight", {16, 32});
    }
    return ts;
  }
  absl::StatusOr<HostModel> Load() { return LoadHostModel(dir_.string()); }

  fs::path dir_;
};

TEST_F(HfDirTest, SyntheticModelLoads) {
  Write("model.safetensors", SafetensorsBytes(Tensors()));
  auto m = Load();
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->tensors.at("blk.1.ffn_down.weight").data[5], 0.5f);
}

TEST_F(HfDirTest, MissingTensor) {
  Write("model.safetensors", SafetensorsBytes(Tensors("model.layers.1.mlp.up_proj.weight")));
  EXPECT_ERROR(Load().status(), kNotFound, "missing tensor 'blk.1.ffn_up.weight'");
}

TEST_F(HfDirTest, UntiedNeedsLmHead) {
  std::ifstream in(dir_ / "config.json");
  std::string cfg((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t at = cfg.find("\"tie_word_embeddings\": true");
  ASSERT_NE(at, std::string::npos);
  cfg.replace(at, 27, "\"tie_word_embeddings\": false");
  Write("config.json", cfg);
  Write("model.safetensors", SafetensorsBytes(Tensors()));
  EXPECT_ERROR(Load().status(), kNotFound, "missing tensor 'output.weight'");
}

TEST_F(HfDirTest, UnrecognizedTensorName) {
  auto ts = Tensors();
  ts.push_back({"model.layers.0.mlp.extra.weight", "F32", {1}, F32Bytes({1})});
  Write("model.safetensors", SafetensorsBytes(ts));
  EXPECT_ERROR(Load().status(), kInvalidArgument, "unrecognized tensor");
}

TEST_F(HfDirTest, UnsupportedDtypeForAWeight) {
  auto ts = Tensors();
  ts[1].dtype = "I32";
  Write("model.safetensors", SafetensorsBytes(ts));
  EXPECT_ERROR(Load().status(), kUnimplemented, "has dtype I32");
}

TEST_F(HfDirTest, ShardPathTraversalAndMissingShardTensor) {
  Write("model.safetensors.index.json",
        "{\"weight_map\": {\"model.norm.weight\": \"../evil.safetensors\"}}");
  EXPECT_ERROR(Load().status(), kInvalidArgument, "invalid shard file");
  auto ts = Tensors();
  Write("a.safetensors", SafetensorsBytes(ts));
  Write("model.safetensors.index.json",
        "{\"weight_map\": {\"model.norm.weight\": \"a.safetensors\", \"model.x\": "
        "\"a.safetensors\"}}");
  EXPECT_ERROR(Load().status(), kNotFound, "tensor 'model.x' is not in a.safetensors");
}

TEST_F(HfDirTest, MissingFilesAndBadConfig) {
  EXPECT_ERROR(Load().status(), kNotFound, "model.safetensors");
  Write("model.safetensors", SafetensorsBytes(Tensors()));
  Write("config.json", "{\"model_type\": \"gpt_neox\"}");
  EXPECT_ERROR(Load().status(), kUnimplemented, "unsupported model_type 'gpt_neox'");
  Write("config.json", "{\"model_type\": \"llama\", \"hidden_size\": 16}");
  EXPECT_ERROR(Load().status(), kNotFound, "num_hidden_layers");
  Write("config.json", "{\"model_type\": \"llama\", \"hidden_size\": 16,");
  EXPECT_ERROR(Load().status(), kInvalidArgument, "config.json: JSON");
  fs::remove(dir_ / "tokenizer.json");
  fs::copy_file(fs::path(FixtureDir("hf_tiny_llama")) / "config.json", dir_ / "config.json",
                fs::copy_options::overwrite_existing);
  EXPECT_ERROR(Load().status(), kNotFound, "tokenizer.json");
}

nlohmann::json Json(const std::string& text) {
  auto v = ParseJson(text);
  EXPECT_TRUE(v.ok()) << v.status();
  return v.ok() ? *std::move(v) : nlohmann::json();
}

TEST(SafetensorsTest, HfConfigRopeScalingAndDefaults) {
  const std::string base =
      "\"model_type\": \"llama\", \"hidden_size\": 64, \"intermediate_size\": 128, "
      "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"vocab_size\": 100, "
      "\"max_position_embeddings\": 4096";
  auto c = ConfigFromHfJson(Json("{" + base + "}"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->n_kv_heads, 4);
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_EQ(c->rope_theta, 10000.f);
  EXPECT_FALSE(c->tied_embeddings);
  EXPECT_EQ(c->rope_scaling, RopeScalingType::kNone);
  auto ntk = ConfigFromHfJson(
      Json("{" + base + ", \"rope_scaling\": {\"type\": \"dynamic\", \"factor\": 4}}"));
  ASSERT_TRUE(ntk.ok()) << ntk.status();
  EXPECT_EQ(ntk->rope_scaling, RopeScalingType::kNtk);
  EXPECT_EQ(ntk->rope_scaling_factor, 4.f);
  EXPECT_ERROR(ConfigFromHfJson(Json("{" + base +
                                     ", \"rope_scaling\": {\"rope_type\": \"llama3\", "
                                     "\"factor\": 8}}"))
                   .status(),
               kUnimplemented, "rope scaling type 'llama3'");
  EXPECT_ERROR(ConfigFromHfJson(Json("{" + base + ", \"num_key_value_heads\": 3}")).status(),
               kInvalidArgument, "not a multiple of n_kv_heads");
  auto bias = ConfigFromHfJson(Json("{" + base + ", \"attention_bias\": true}"));
  ASSERT_TRUE(bias.ok());
  EXPECT_TRUE(bias->qkv_bias);
}

TEST(SafetensorsTest, TokenizerJsonVariants) {
  // Pair-form merges, a non-byte-level llama vocabulary, unk token.
  const nlohmann::json tok = Json(
      "{\"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"vocab\": "
      "{\"<unk>\": 0, \"a\": 1, \"b\": 2, \"ab\": 3}, \"merges\": [[\"a\", \"b\"]]}, "
      "\"added_tokens\": [{\"id\": 4, \"content\": \"<x>\", \"special\": false}]}");
  auto v = VocabFromTokenizerJson(tok, nlohmann::json(), Json("{\"model_type\": \"llama\"}"));
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->pre, "default");
  EXPECT_EQ(v->merges, (std::vector<std::string>{"a b"}));
  EXPECT_EQ(v->unk_id, 0);
  EXPECT_EQ(v->types[4], TokenType::kUserDefined);
  EXPECT_EQ(v->bos_id, -1);
  EXPECT_ERROR(VocabFromTokenizerJson(Json("{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}"),
                                      nlohmann::json(), nlohmann::json())
                   .status(),
               kUnimplemented, "Unigram");
  EXPECT_ERROR(VocabFromTokenizerJson(Json("{\"model\": {\"vocab\": {\"a\": 0, \"b\": 2}}}"),
                                      nlohmann::json(), nlohmann::json())
                   .status(),
               kInvalidArgument, "token id 1 has no entry");
  EXPECT_ERROR(VocabFromTokenizerJson(Json("{\"model\": {\"vocab\": {\"a\": 0}}}"),
                                      nlohmann::json(), Json("{\"eos_token_id\": 7}"))
                   .status(),
               kInvalidArgument, "'eos_token_id' = 7");
}

}  // namespace
}  // namespace longctx
