// Writes GGUF files byte by byte for tests: valid tiny models, and hostile
// files through raw fields (any count, dimension, type or offset).
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

namespace longctx::testing {

class ByteWriter {
 public:
  template <typename T>
  void Put(T v) {
    const size_t at = bytes_.size();
    bytes_.resize(at + sizeof(T));
    std::memcpy(bytes_.data() + at, &v, sizeof(T));
  }
  void Str(const std::string& s) {
    Put<uint64_t>(s.size());
    Raw(s.data(), s.size());
  }
  void Raw(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    bytes_.insert(bytes_.end(), b, b + n);
  }
  std::vector<uint8_t>& bytes() { return bytes_; }

 private:
  std::vector<uint8_t> bytes_;
};

// GGUF value type ids (GgufType).
enum : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kStr = 8,
  kArr = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};

class GgufBuilder {
 public:
  uint32_t magic = 0x46554747;
  uint32_t version = 3;
  std::optional<uint64_t> tensor_count;  // overrides the real count
  std::optional<uint64_t> kv_count;
  uint64_t alignment = 32;  // used for offsets and padding; add the key yourself

  // A metadata entry whose value bytes (after the type) are given raw.
  void KvRaw(const std::string& key, uint32_t type, const std::vector<uint8_t>& value) {
    ByteWriter w;
    w.Str(key);
    w.Put<uint32_t>(type);
    w.Raw(value.data(), value.size());
    kv_.push_back(w.bytes());
  }
  void U32(const std::string& key, uint32_t v) { KvRaw(key, kU32, Le(v)); }
  void I32(const std::string& key, int32_t v) { KvRaw(key, kI32, Le(v)); }
  void F32(const std::string& key, float v) { KvRaw(key, kF32, Le(v)); }
  void Bool(const std::string& key, bool v) { KvRaw(key, kBool, {static_cast<uint8_t>(v)}); }
  void Str(const std::string& key, const std::string& v) {
    ByteWriter w;
    w.Str(v);
    KvRaw(key, kStr, w.bytes());
  }
  void StrArray(const std::string& key, const std::vector<std::string>& v) {
    ByteWriter w;
    w.Put<uint32_t>(kStr);
    w.Put<uint64_t>(v.size());
    for (const auto& s : v) w.Str(s);
    KvRaw(key, kArr, w.bytes());
  }
  void I32Array(const std::string& key, const std::vector<int32_t>& v) {
    ByteWriter w;
    w.Put<uint32_t>(kI32);
    w.Put<uint64_t>(v.size());
    for (int32_t x : v) w.Put(x);
    KvRaw(key, kArr, w.bytes());
  }

  struct Tensor {
    std::string name;
    std::vector<uint64_t> ne;  // GGUF order (ne[0] contiguous)
    uint32_t type = 0;         // ggml type
    std::vector<uint8_t> data;
    std::optional<uint64_t> offset;  // default: next aligned position; when set, the
                                     // data is not written (the offset is the test)
  };
  Tensor& AddTensor(const std::string& name, std::vector<uint64_t> ne, uint32_t type,
                    std::vector<uint8_t> data) {
    tensors_.push_back({name, std::move(ne), type, std::move(data), std::nullopt});
    return tensors_.back();
  }
  // An f32 tensor [rows, cols] (cols = 0: a vector of `rows`).
  Tensor& AddF32(const std::string& name, int64_t rows, int64_t cols,
                 const std::vector<float>& values) {
    std::vector<uint8_t> data(values.size() * 4);
    std::memcpy(data.data(), values.data(), data.size());
    std::vector<uint64_t> ne =
        cols == 0 ? std::vector<uint64_t>{static_cast<uint64_t>(rows)}
                  : std::vector<uint64_t>{static_cast<uint64_t>(cols), static_cast<uint64_t>(rows)};
    return AddTensor(name, ne, 0, std::move(data));
  }
  std::vector<Tensor>& tensors() { return tensors_; }

  std::vector<uint8_t> Build() const {
    ByteWriter w;
    w.Put(magic);
    w.Put(version);
    w.Put<uint64_t>(tensor_count.value_or(tensors_.size()));
    w.Put<uint64_t>(kv_count.value_or(kv_.size()));
    for (const auto& kv : kv_) w.Raw(kv.data(), kv.size());
    std::vector<uint64_t> offsets;
    uint64_t next = 0;
    for (const Tensor& t : tensors_) {
      const uint64_t off = t.offset.value_or(next);
      offsets.push_back(off);
      if (!t.offset.has_value()) next = Align(next + t.data.size());
      w.Str(t.name);
      w.Put<uint32_t>(static_cast<uint32_t>(t.ne.size()));
      for (uint64_t d : t.ne) w.Put(d);
      w.Put(t.type);
      w.Put(off);
    }
    std::vector<uint8_t>& b = w.bytes();
    b.resize(Align(b.size()), 0);
    const size_t data_start = b.size();
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const Tensor& t = tensors_[i];
      if (t.data.empty() || t.offset.has_value()) continue;  // overridden: points elsewhere
      const size_t at = data_start + offsets[i];
      if (b.size() < at + t.data.size()) b.resize(at + t.data.size(), 0);
      std::memcpy(b.data() + at, t.data.data(), t.data.size());
    }
    return b;
  }

  template <typename T>
  static std::vector<uint8_t> Le(T v) {
    std::vector<uint8_t> b(sizeof(T));
    std::memcpy(b.data(), &v, sizeof(T));
    return b;
  }

 private:
  uint64_t Align(uint64_t x) const { return (x + alignment - 1) / alignment * alignment; }
  std::vector<std::vector<uint8_t>> kv_;
  std::vector<Tensor> tensors_;
};

// A complete tiny model: 1 layer, d_model 8, 2 q heads and 1 kv head of dim 4,
// d_ff 16, vocab 6, f32 weights whose every element encodes its tensor, row
// and column: value = tensor_id * 1000 + row * 10 + col * 0.01f.
inline GgufBuilder TinyModel(const std::string& arch = "llama", bool with_output = false,
                             bool qkv_bias = false) {
  GgufBuilder g;
  const std::string a = arch + ".";
  g.Str("general.architecture", arch);
  g.Str("general.name", "tiny");
  g.U32(a + "block_count", 1);
  g.U32(a + "context_length", 64);
  g.U32(a + "embedding_length", 8);
  g.U32(a + "feed_forward_length", 16);
  g.U32(a + "attention.head_count", 2);
  g.U32(a + "attention.head_count_kv", 1);
  g.F32(a + "rope.freq_base", 10000.f);
  g.F32(a + "attention.layer_norm_rms_epsilon", 1e-6f);
  g.Str("tokenizer.ggml.model", "gpt2");
  g.Str("tokenizer.ggml.pre", "qwen2");
  g.StrArray("tokenizer.ggml.tokens", {"a", "b", "ab", "<s>", "</s>", "\xc4\xa0"});
  g.I32Array("tokenizer.ggml.token_type", {1, 1, 1, 3, 3, 1});
  g.StrArray("tokenizer.ggml.merges", {"a b"});
  g.U32("tokenizer.ggml.bos_token_id", 3);
  g.U32("tokenizer.ggml.eos_token_id", 4);
  int id = 0;
  auto add = [&](const std::string& name, int64_t rows, int64_t cols) {
    ++id;
    std::vector<float> v;
    const int64_t c = cols == 0 ? 1 : cols;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t k = 0; k < c; ++k) {
        v.push_back(static_cast<float>(id * 1000 + r * 10) + static_cast<float>(k) * 0.01f);
      }
    }
    g.AddF32(name, rows, cols, v);
  };
  add("token_embd.weight", 6, 8);
  add("output_norm.weight", 8, 0);
  if (with_output) add("output.weight", 6, 8);
  add("blk.0.attn_norm.weight", 8, 0);
  add("blk.0.attn_q.weight", 8, 8);
  add("blk.0.attn_k.weight", 4, 8);
  add("blk.0.attn_v.weight", 4, 8);
  if (qkv_bias) {
    add("blk.0.attn_q.bias", 8, 0);
    add("blk.0.attn_k.bias", 4, 0);
    add("blk.0.attn_v.bias", 4, 0);
  }
  add("blk.0.attn_output.weight", 8, 8);
  add("blk.0.ffn_norm.weight", 8, 0);
  add("blk.0.ffn_gate.weight", 16, 8);
  add("blk.0.ffn_up.weight", 16, 8);
  add("blk.0.ffn_down.weight", 8, 16);
  return g;
}

}  // namespace longctx::testing
