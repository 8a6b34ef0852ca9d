// Malformed, truncated and hostile GGUF files: each yields a Status naming the
// problem (never a crash, never an allocation the file size cannot justify),
// plus the tiny valid model they are derived from, which loads and is
// un-permuted for llama but not for qwen2.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "engine/model/gguf.h"
#include "engine/model/gguf_model.h"
#include "engine/model/host_weights.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/gguf_builder.h"

namespace longctx {
namespace {

using ::longctx::testing::ByteWriter;
using ::longctx::testing::GgufBuilder;
using ::longctx::testing::TinyModel;
using ::testing::HasSubstr;

absl::Status ParseStatus(const std::vector<uint8_t>& bytes) {
  return GgufFile::Parse(bytes).status();
}

absl::StatusOr<HostModel> LoadFromBytes(const std::vector<uint8_t>& bytes) {
  auto f = GgufFile::Parse(bytes);
  if (!f.ok()) return f.status();
  return LoadGgufModel(**f);
}

// Header with the given counts followed by `rest`.
std::vector<uint8_t> Header(uint64_t n_tensors, uint64_t n_kv, const std::vector<uint8_t>& rest) {
  ByteWriter w;
  w.Put<uint32_t>(0x46554747);
  w.Put<uint32_t>(3);
  w.Put(n_tensors);
  w.Put(n_kv);
  w.Raw(rest.data(), rest.size());
  return w.bytes();
}

#define EXPECT_ERROR(expr, code_, text)                            \
  do {                                                             \
    const absl::Status _s = (expr);                                \
    EXPECT_EQ(_s.code(), absl::StatusCode::code_) << _s;           \
    EXPECT_THAT(std::string(_s.message()), HasSubstr(text)) << _s; \
  } while (0)

TEST(GgufHostileTest, TinyModelLoads) {
  auto m = LoadFromBytes(TinyModel().Build());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->config.architecture, "llama");
  EXPECT_EQ(m->config.n_heads, 2);
  EXPECT_EQ(m->config.n_kv_heads, 1);
  EXPECT_EQ(m->config.head_dim, 4);
  EXPECT_EQ(m->config.vocab_size, 6);
  EXPECT_EQ(m->config.rms_eps, 1e-6f);
  EXPECT_TRUE(m->config.tied_embeddings);
  EXPECT_FALSE(m->config.qkv_bias);
  EXPECT_EQ(m->vocab.tokens.size(), 6u);
  EXPECT_EQ(m->vocab.bos_id, 3);
  EXPECT_EQ(m->vocab.pre, "qwen2");
  EXPECT_EQ(m->tensors.at("blk.0.ffn_down.weight").shape, (std::vector<int64_t>{8, 16}));
  // Unpermuted tensors keep the file layout: element [r][c] = id*1000 + r*10 + c/100.
  const HostTensor& v = m->tensors.at("blk.0.attn_v.weight");
  EXPECT_FLOAT_EQ(v.data[2 * 8 + 5], 6 * 1000 + 20 + 0.05f);
}

// Row order of a head of dim 4 in the file is (x0, y0, x1, y1) for rotate-half
// pairs (x, y): loaded rows must be (x0, x1, y0, y1) = file rows 0, 2, 1, 3.
TEST(GgufHostileTest, LlamaQkRowsAreUnpermuted) {
  auto m = LoadFromBytes(TinyModel("llama", false, true).Build());
  ASSERT_TRUE(m.ok()) << m.status();
  const int file_row_of[8] = {0, 2, 1, 3, 4, 6, 5, 7};
  const HostTensor& q = m->tensors.at("blk.0.attn_q.weight");  // tensor id 4
  const HostTensor& k = m->tensors.at("blk.0.attn_k.weight");  // tensor id 5
  const HostTensor& qb = m->tensors.at("blk.0.attn_q.bias");   // tensor id 7
  for (int r = 0; r < 8; ++r) {
    EXPECT_FLOAT_EQ(q.data[r * 8 + 3], 4000 + file_row_of[r] * 10 + 0.03f) << r;
    EXPECT_FLOAT_EQ(qb.data[r], 7000 + file_row_of[r] * 10) << r;
  }
  for (int r = 0; r < 4; ++r) EXPECT_FLOAT_EQ(k.data[r * 8], 5000 + file_row_of[r] * 10) << r;
}

TEST(GgufHostileTest, Qwen2RowsAreNotPermuted) {
  auto m = LoadFromBytes(TinyModel("qwen2", true, true).Build());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_FALSE(m->config.tied_embeddings);
  EXPECT_TRUE(m->config.qkv_bias);
  const HostTensor& q = m->tensors.at("blk.0.attn_q.weight");
  for (int r = 0; r < 8; ++r) EXPECT_FLOAT_EQ(q.data[r * 8], 5000 + r * 10) << r;
}

TEST(GgufHostileTest, LoadHostModelFromFile) {
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("longctx_tiny_" + std::to_string(::getpid()) + ".gguf"))
                               .string();
  const std::vector<uint8_t> bytes = TinyModel().Build();
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()),
             static_cast<std::streamsize>(bytes.size()));
  auto m = LoadHostModel(path);
  std::remove(path.c_str());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->tensors.size(), 11u);
  EXPECT_ERROR(LoadHostModel(path).status(), kNotFound, "cannot open");
}

std::string SeedPath(const std::string& name) {
  return std::string(LONGCTX_SOURCE_DIR) + "/tests/fuzz/corpus/" + name;
}

// Files from the gguf package's GGUFWriter (tools/gen_gguf_seeds.py).
TEST(GgufHostileTest, IndependentWriterMetadataOfEveryType) {
  auto f = GgufFile::Open(SeedPath("all_types.gguf"));
  ASSERT_TRUE(f.ok()) << f.status();
  const GgufFile& g = **f;
  EXPECT_EQ(g.version(), 3u);
  EXPECT_EQ(*g.GetInt("t.u8"), 200);
  EXPECT_EQ(*g.GetInt("t.i8"), -100);
  EXPECT_EQ(*g.GetInt("t.u16"), 60000);
  EXPECT_EQ(*g.GetInt("t.i16"), -30000);
  EXPECT_EQ(*g.GetInt("t.u32"), 4000000000);
  EXPECT_EQ(*g.GetInt("t.i32"), -2000000000);
  EXPECT_EQ(*g.GetFloat("t.f32"), 1.5);
  EXPECT_TRUE(*g.GetBool("t.bool"));
  EXPECT_EQ(*g.GetString("t.str"), "h\xc3\xa9llo");
  EXPECT_ERROR(g.GetInt("t.u64").status(), kInvalidArgument, "out of range");
  ASSERT_NE(g.Find("t.u64"), nullptr);
  EXPECT_EQ(g.Find("t.u64")->bits, (uint64_t{1} << 63) + 5);
  EXPECT_EQ(*g.GetInt("t.i64"), -(int64_t{1} << 62));
  EXPECT_EQ(*g.GetFloat("t.f64"), -2.25);
  EXPECT_EQ(*g.GetIntArray("t.arr_i16"), (std::vector<int64_t>{1, -2, 3}));
  EXPECT_EQ(*g.GetFloatArray("t.arr_f64"), (std::vector<float>{0.5f, 1.5f}));
  EXPECT_EQ(*g.GetStringArray("t.arr_str"), (std::vector<std::string>{"x", "", "yz"}));
  const GgufValue* nested = g.Find("t.arr_nested");
  ASSERT_NE(nested, nullptr);
  ASSERT_EQ(nested->items.size(), 2u);
  EXPECT_EQ(nested->items[0].count, 2u);
  EXPECT_EQ(nested->items[1].count, 1u);
  ASSERT_EQ(g.tensors().size(), 12u);
  for (const GgufTensorInfo& t : g.tensors()) {
    std::vector<float> out(static_cast<size_t>(t.n_elements));
    EXPECT_TRUE(g.Dequantize(t, out).ok()) << t.name;
  }
  EXPECT_EQ(g.FindTensor("t.3d")->Shape(), (std::vector<int64_t>{2, 3, 32}));
}

TEST(GgufHostileTest, IndependentWriterModelsLoad) {
  auto llama = LoadHostModel(SeedPath("tiny_llama.gguf"));
  ASSERT_TRUE(llama.ok()) << llama.status();
  EXPECT_EQ(llama->config.n_heads, 4);
  EXPECT_EQ(llama->config.n_kv_heads, 2);
  EXPECT_EQ(llama->config.head_dim, 8);
  EXPECT_TRUE(llama->config.tied_embeddings);
  EXPECT_EQ(llama->vocab.chat_template, "{{ messages }}");
  auto qwen = LoadHostModel(SeedPath("tiny_qwen2.gguf"));
  ASSERT_TRUE(qwen.ok()) << qwen.status();
  EXPECT_TRUE(qwen->config.qkv_bias);
  EXPECT_FALSE(qwen->config.tied_embeddings);
  EXPECT_EQ(qwen->tensors.at("output.weight").shape, (std::vector<int64_t>{16, 32}));
}

TEST(GgufHostileTest, BadMagic) {
  GgufBuilder g = TinyModel();
  g.magic = 0x46554746;
  EXPECT_ERROR(ParseStatus(g.Build()), kInvalidArgument, "bad magic");
  EXPECT_ERROR(ParseStatus({}), kInvalidArgument, "truncated");
}

TEST(GgufHostileTest, UnsupportedVersion) {
  for (uint32_t v : {0u, 1u, 4u, 0x03000000u}) {
    GgufBuilder g = TinyModel();
    g.version = v;
    EXPECT_ERROR(ParseStatus(g.Build()), kInvalidArgument, "unsupported version");
  }
  GgufBuilder v2 = TinyModel();
  v2.version = 2;
  EXPECT_TRUE(ParseStatus(v2.Build()).ok());
}

// Every proper prefix of a valid file fails cleanly; those cut inside the
// header, metadata or tensor infos say they are truncated (or that a count
// exceeds the bytes left), those cut inside the data say which tensor lies
// past the end.
TEST(GgufHostileTest, TruncatedAtEveryByte) {
  const std::vector<uint8_t> full = TinyModel().Build();
  auto f = GgufFile::Parse(full);
  ASSERT_TRUE(f.ok()) << f.status();
  const uint64_t data_start = (*f)->data_offset();
  for (size_t n = 0; n < full.size(); ++n) {
    const std::vector<uint8_t> cut(full.begin(), full.begin() + n);
    const absl::Status s = ParseStatus(cut);
    ASSERT_FALSE(s.ok()) << n;
    ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << n;
    if (n + 32 <= data_start) {
      ASSERT_THAT(std::string(s.message()),
                  ::testing::AnyOf(HasSubstr("truncated"), HasSubstr("bytes left")))
          << n << ": " << s;
    } else if (n > data_start) {
      ASSERT_THAT(std::string(s.message()), HasSubstr("past the end")) << n << ": " << s;
    }
  }
}

TEST(GgufHostileTest, HugeCounts) {
  const uint64_t huge = std::numeric_limits<uint64_t>::max();
  EXPECT_ERROR(ParseStatus(Header(huge, 0, {})), kInvalidArgument, "tensor count");
  EXPECT_ERROR(ParseStatus(Header(0, huge, {})), kInvalidArgument, "metadata count");
  EXPECT_ERROR(ParseStatus(Header(1u << 20, 0, std::vector<uint8_t>(1000))), kInvalidArgument,
               "tensor count 1048576 exceeds");
  GgufBuilder g = TinyModel();
  g.kv_count = 1000;  // more entries than the metadata holds
  EXPECT_FALSE(ParseStatus(g.Build()).ok());
}

TEST(GgufHostileTest, HugeStringAndArrayLengths) {
  {
    ByteWriter w;  // key length 2^63
    w.Put<uint64_t>(uint64_t{1} << 63);
    w.Raw(std::string(40, 'x').data(), 40);
    EXPECT_ERROR(ParseStatus(Header(0, 1, w.bytes())), kInvalidArgument, "key length");
  }
  {
    ByteWriter w;  // string value of length 2^40 in a small file
    w.Str("k");
    w.Put<uint32_t>(testing::kStr);
    w.Put<uint64_t>(uint64_t{1} << 40);
    w.Raw("xyz", 3);
    EXPECT_ERROR(ParseStatus(Header(0, 1, w.bytes())), kInvalidArgument, "truncated");
  }
  for (uint32_t elem : {testing::kU8, testing::kU64, testing::kStr, testing::kArr}) {
    ByteWriter w;  // array claiming 2^62 elements
    w.Str("k");
    w.Put<uint32_t>(testing::kArr);
    w.Put<uint32_t>(elem);
    w.Put<uint64_t>(uint64_t{1} << 62);
    w.Raw("0123456789abcdef", 16);
    EXPECT_ERROR(ParseStatus(Header(0, 1, w.bytes())), kInvalidArgument, "exceeds the");
  }
  {
    ByteWriter w;  // tensor name of length 2^50
    w.Put<uint64_t>(uint64_t{1} << 50);
    w.Raw(std::string(40, 'x').data(), 40);
    EXPECT_ERROR(ParseStatus(Header(1, 0, w.bytes())), kInvalidArgument, "name length");
  }
}

TEST(GgufHostileTest, DeeplyNestedArrays) {
  ByteWriter w;
  w.Str("k");
  w.Put<uint32_t>(testing::kArr);
  for (int i = 0; i < 20; ++i) {
    w.Put<uint32_t>(testing::kArr);
    w.Put<uint64_t>(1);
  }
  w.Put<uint32_t>(testing::kU8);
  w.Put<uint64_t>(0);
  EXPECT_ERROR(ParseStatus(Header(0, 1, w.bytes())), kInvalidArgument, "nested deeper");
}

TEST(GgufHostileTest, BadMetadataValues) {
  {
    GgufBuilder g;
    g.KvRaw("k", 13, {0, 0, 0, 0});
    EXPECT_ERROR(ParseStatus(g.Build()), kInvalidArgument, "unknown metadata value type 13");
  }
  {
    GgufBuilder g;
    g.KvRaw("k", testing::kBool, {2});
    EXPECT_ERROR(ParseStatus(g.Build()), kInvalidArgument, "bool value 2");
  }
  {
    GgufBuilder g;
    g.U32("k", 1);
    g.U32("k", 2);
    EXPECT_ERROR(ParseStatus(g.Build()), kInvalidArgument, "duplicate metadata key");
  }
  {
    GgufBuilder g;
    g.U32("", 1);
    EXPECT_ERROR(ParseStatus(g.Build()), kInvalidArgument, "empty metadata key");
  }
  for (uint32_t a : {0u, 3u, 48u}) {
    GgufBuilder g;
    g.U32("general.alignment", a);
    EXPECT_ERROR(ParseStatus(g.Build()), kInvalidArgument, "power of two");
  }
  {
    GgufBuilder g;
    g.Str("general.alignment", "32");
    EXPECT_ERROR(ParseStatus(g.Build()), kInvalidArgument, "not an integer");
  }
}

TEST(GgufHostileTest, OffsetsPastTheEnd) {
  GgufBuilder g = TinyModel();
  g.tensors().back().offset = uint64_t{1} << 40;
  EXPECT_ERROR(ParseStatus(g.Build()), kInvalidArgument, "past the end of the file");
  GgufBuilder g2 = TinyModel();
  g2.tensors().back().offset = std::numeric_limits<uint64_t>::max() - 31;  // wraps if added
  EXPECT_ERROR(ParseStatus(g2.Build()), kInvalidArgument, "past the end of the file");
}

TEST(GgufHostileTest, OverlappingTensors) {
  // Many tensor infos sharing one data region would multiply the memory the
  // file can claim.
  GgufBuilder g = TinyModel();
  g.tensors()[3].offset = 0;
  EXPECT_ERROR(ParseStatus(g.Build()), kInvalidArgument, "overlaps the data of tensor");
}

TEST(GgufHostileTest, MisalignedOffset) {
  GgufBuilder g = TinyModel();
  g.tensors()[1].offset = 3;
  EXPECT_ERROR(ParseStatus(g.Build()), kInvalidArgument, "not a multiple of the alignment");
}

TEST(GgufHostileTest, UnknownAndUnsupportedGgmlTypes) {
  GgufBuilder g = TinyModel();
  g.tensors()[0].type = 200;
  EXPECT_ERROR(ParseStatus(g.Build()), kInvalidArgument, "unknown ggml type 200");
  // Q2_K is a known type this loader does not dequantize: parsing succeeds,
  // loading names the tensor and type.
  GgufBuilder q = TinyModel();
  q.AddTensor("extra.weight", {256, 1}, 10, std::vector<uint8_t>(84));
  EXPECT_TRUE(ParseStatus(q.Build()).ok());
  EXPECT_ERROR(LoadFromBytes(q.Build()).status(), kUnimplemented,
               "tensor 'extra.weight' has ggml type Q2_K");
}

TEST(GgufHostileTest, BadShapes) {
  struct Bad {
    std::vector<uint64_t> ne;
    uint32_t type;
    const char* error;
  };
  const uint64_t neg = static_cast<uint64_t>(-5);
  const Bad cases[] = {
      {{8, 1, 1, 1, 1}, 0, "dimension count 5"},
      {{}, 0, "dimension count 0"},
      {{8, 0}, 0, "invalid size 0"},
      {{8, neg}, 0, "invalid size -5"},
      {{uint64_t{1} << 32, uint64_t{1} << 32}, 0, "element count overflows"},
      {{uint64_t{1} << 62, 2}, 0, "element count overflows"},
      {{uint64_t{1} << 61, 1}, 0, "byte size overflows"},
      {{33, 1}, 2, "not a multiple of the Q4_0 block size 32"},
  };
  for (const Bad& b : cases) {
    GgufBuilder g = TinyModel();
    g.tensors()[2].ne = b.ne;
    g.tensors()[2].type = b.type;
    EXPECT_ERROR(ParseStatus(g.Build()), kInvalidArgument, b.error);
  }
  // A tensor whose stated size exceeds its data runs past the end.
  GgufBuilder g = TinyModel();
  g.tensors().back().ne = {16, 1000};
  EXPECT_ERROR(ParseStatus(g.Build()), kInvalidArgument, "past the end");
}

TEST(GgufHostileTest, DuplicateTensorName) {
  GgufBuilder g = TinyModel();
  g.tensors()[1].name = g.tensors()[0].name;
  EXPECT_ERROR(ParseStatus(g.Build()), kInvalidArgument, "duplicate tensor name");
}

TEST(GgufHostileTest, MissingRequiredTensor) {
  for (const char* name : {"blk.0.ffn_up.weight", "token_embd.weight", "output_norm.weight"}) {
    GgufBuilder g = TinyModel();
    auto& ts = g.tensors();
    std::erase_if(ts, [&](const auto& t) { return t.name == name; });
    EXPECT_ERROR(LoadFromBytes(g.Build()).status(), kNotFound,
                 std::string("missing tensor '") + name + "'");
  }
  // qkv bias present in layer 0 implies it for every tensor of the triple.
  GgufBuilder g = TinyModel("qwen2", false, true);
  std::erase_if(g.tensors(), [](const auto& t) { return t.name == "blk.0.attn_v.bias"; });
  EXPECT_ERROR(LoadFromBytes(g.Build()).status(), kNotFound, "blk.0.attn_v.bias");
}

TEST(GgufHostileTest, TensorShapeMismatch) {
  GgufBuilder g = TinyModel();
  for (auto& t : g.tensors()) {
    if (t.name == "blk.0.attn_k.weight") t.ne = {8, 8}, t.data.resize(8 * 8 * 4);
  }
  EXPECT_ERROR(LoadFromBytes(g.Build()).status(), kInvalidArgument,
               "'blk.0.attn_k.weight' has shape [8, 8], expected [4, 8]");
}

TEST(GgufHostileTest, BadConfigMetadata) {
  auto with = [](auto edit) {
    GgufBuilder g = TinyModel();
    edit(g);
    return LoadFromBytes(g.Build()).status();
  };
  // Later duplicates are rejected, so build models with a changed key instead.
  GgufBuilder no_arch;
  EXPECT_ERROR(LoadFromBytes(no_arch.Build()).status(), kNotFound, "general.architecture");
  GgufBuilder other;
  other.Str("general.architecture", "gpt2");
  EXPECT_ERROR(LoadFromBytes(other.Build()).status(), kUnimplemented, "unsupported architecture");
  GgufBuilder wrong_type;
  wrong_type.Str("general.architecture", "llama");
  wrong_type.Str("llama.block_count", "thirty");
  EXPECT_ERROR(LoadFromBytes(wrong_type.Build()).status(), kInvalidArgument,
               "'llama.block_count' is string, expected an integer");
  GgufBuilder zero_heads;
  zero_heads.Str("general.architecture", "llama");
  zero_heads.U32("llama.block_count", 1);
  zero_heads.U32("llama.embedding_length", 8);
  zero_heads.U32("llama.feed_forward_length", 8);
  zero_heads.U32("llama.attention.head_count", 0);
  EXPECT_ERROR(LoadFromBytes(zero_heads.Build()).status(), kInvalidArgument,
               "'llama.attention.head_count' = 0");
  // A token id outside the vocabulary.
  EXPECT_ERROR(with([](GgufBuilder& g) { g.U32("tokenizer.ggml.unknown_token_id", 99); }),
               kInvalidArgument, "unknown_token_id' = 99");
  // Scaling types the forward pass does not implement are refused, not ignored.
  EXPECT_ERROR(with([](GgufBuilder& g) { g.Str("llama.rope.scaling.type", "yarn"); }),
               kUnimplemented, "rope scaling type 'yarn'");
}

TEST(GgufHostileTest, GettersCheckTypes) {
  GgufBuilder g;
  g.U32("u", 7);
  g.I32("i", -7);
  g.F32("f", 0.5f);
  g.StrArray("s", {"x", "yz"});
  g.StrArray("empty", {});
  g.I32Array("a", {1, -2});
  const std::vector<uint8_t> bytes = g.Build();  // the file views these bytes
  auto f = GgufFile::Parse(bytes);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(*(*f)->GetInt("u"), 7);
  EXPECT_EQ(*(*f)->GetInt("i"), -7);
  EXPECT_EQ(*(*f)->GetFloat("f"), 0.5);
  EXPECT_EQ(*(*f)->GetStringArray("s"), (std::vector<std::string>{"x", "yz"}));
  EXPECT_EQ(*(*f)->GetIntArray("a"), (std::vector<int64_t>{1, -2}));
  EXPECT_TRUE((*f)->GetStringArray("empty")->empty());
  EXPECT_ERROR((*f)->GetFloat("u").status(), kInvalidArgument, "expected a float");
  EXPECT_ERROR((*f)->GetString("missing").status(), kNotFound, "missing");
  EXPECT_ERROR((*f)->GetFloatArray("a").status(), kInvalidArgument, "array of int32");
}

}  // namespace
}  // namespace longctx
