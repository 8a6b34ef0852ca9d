#include "engine/model/gguf_model.h"

#include <algorithm>
#include <limits>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/model/weight_layout.h"
#include "engine/util/status_macros.h"

namespace longctx {
namespace {

// Integer metadata as int within [lo, hi]; `fallback` when absent (nullopt:
// the key is required).
absl::StatusOr<int> IntKey(const GgufFile& f, const std::string& key, int64_t lo, int64_t hi,
                           std::optional<int> fallback = std::nullopt) {
  if (f.Find(key) == nullptr && fallback.has_value()) return *fallback;
  ASSIGN_OR_RETURN(const int64_t v, f.GetInt(key));
  if (v < lo || v > hi) {
    return absl::InvalidArgumentError(
        absl::StrCat("GGUF: metadata '", key, "' = ", v, " not in [", lo, ", ", hi, "]"));
  }
  return static_cast<int>(v);
}

absl::StatusOr<float> FloatKey(const GgufFile& f, const std::string& key, float fallback) {
  if (f.Find(key) == nullptr) return fallback;
  ASSIGN_OR_RETURN(const double v, f.GetFloat(key));
  return static_cast<float>(v);
}

absl::StatusOr<ModelConfig> GgufConfig(const GgufFile& f) {
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  ModelConfig c;
  ASSIGN_OR_RETURN(c.architecture, f.GetString("general.architecture"));
  if (c.architecture != "llama" && c.architecture != "qwen2") {
    return absl::UnimplementedError(absl::StrCat("GGUF: unsupported architecture '", c.architecture,
                                                 "' (llama and qwen2 are read)"));
  }
  const std::string a = c.architecture + ".";
  c.name =
      f.Find("general.name") != nullptr ? f.GetString("general.name").value_or("") : c.architecture;
  ASSIGN_OR_RETURN(c.n_layers, IntKey(f, a + "block_count", 1, kIntMax));
  ASSIGN_OR_RETURN(c.d_model, IntKey(f, a + "embedding_length", 1, kIntMax));
  ASSIGN_OR_RETURN(c.d_ff, IntKey(f, a + "feed_forward_length", 1, kIntMax));
  ASSIGN_OR_RETURN(c.n_heads, IntKey(f, a + "attention.head_count", 1, kIntMax));
  ASSIGN_OR_RETURN(c.n_kv_heads, IntKey(f, a + "attention.head_count_kv", 1, kIntMax, c.n_heads));
  if (c.d_model % c.n_heads != 0 && f.Find(a + "attention.key_length") == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("GGUF: embedding_length ", c.d_model,
                                                   " is not a multiple of head_count ", c.n_heads));
  }
  ASSIGN_OR_RETURN(c.head_dim,
                   IntKey(f, a + "attention.key_length", 1, kIntMax, c.d_model / c.n_heads));
  if (f.Find(a + "attention.value_length") != nullptr) {
    ASSIGN_OR_RETURN(const int v_dim, IntKey(f, a + "attention.value_length", 1, kIntMax));
    if (v_dim != c.head_dim) {
      return absl::UnimplementedError(
          absl::StrCat("GGUF: value_length ", v_dim, " differs from key_length ", c.head_dim));
    }
  }
  ASSIGN_OR_RETURN(c.context_length, IntKey(f, a + "context_length", 1, kIntMax));
  ASSIGN_OR_RETURN(c.rope_theta, FloatKey(f, a + "rope.freq_base", 10000.f));
  ASSIGN_OR_RETURN(c.rms_eps, FloatKey(f, a + "attention.layer_norm_rms_epsilon", 1e-5f));
  if (f.Find(a + "rope.dimension_count") != nullptr) {
    ASSIGN_OR_RETURN(const int rot, IntKey(f, a + "rope.dimension_count", 1, kIntMax));
    if (rot != c.head_dim) {
      return absl::UnimplementedError(
          absl::StrCat("GGUF: partial RoPE (", rot, " of ", c.head_dim, " dims) is not supported"));
    }
  }

  std::string scaling = "none";
  if (f.Find(a + "rope.scaling.type") != nullptr) {
    ASSIGN_OR_RETURN(scaling, f.GetString(a + "rope.scaling.type"));
  }
  if (scaling == "linear") {
    c.rope_scaling = RopeScalingType::kLinear;
    ASSIGN_OR_RETURN(c.rope_scaling_factor, FloatKey(f, a + "rope.scaling.factor", 1.f));
  } else if (scaling == "none") {
    // Older files state linear scaling as rope.scale_linear.
    ASSIGN_OR_RETURN(const float lin, FloatKey(f, a + "rope.scale_linear", 1.f));
    if (lin != 1.f) {
      c.rope_scaling = RopeScalingType::kLinear;
      c.rope_scaling_factor = lin;
    }
  } else {
    return absl::UnimplementedError(
        absl::StrCat("GGUF: rope scaling type '", scaling, "' is not supported"));
  }

  const GgufTensorInfo* embd = f.FindTensor("token_embd.weight");
  if (embd == nullptr) return absl::NotFoundError("missing tensor 'token_embd.weight'");
  const int64_t embd_rows = embd->ne.size() == 2 ? embd->ne[1] : 0;
  ASSIGN_OR_RETURN(c.vocab_size, IntKey(f, a + "vocab_size", 1, kIntMax,
                                        static_cast<int>(std::min<int64_t>(embd_rows, kIntMax))));
  c.tied_embeddings = f.FindTensor("output.weight") == nullptr;
  c.qkv_bias = f.FindTensor("blk.0.attn_q.bias") != nullptr;
  RETURN_IF_ERROR(c.Validate());
  return c;
}

absl::StatusOr<int32_t> TokenIdKey(const GgufFile& f, const std::string& key, size_t n_tokens) {
  if (f.Find(key) == nullptr) return -1;
  ASSIGN_OR_RETURN(const int64_t v, f.GetInt(key));
  if (v < 0 || v >= static_cast<int64_t>(n_tokens)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "GGUF: '", key, "' = ", v, " is not a token id (vocabulary of ", n_tokens, ")"));
  }
  return static_cast<int32_t>(v);
}

absl::StatusOr<VocabData> GgufVocab(const GgufFile& f) {
  VocabData v;
  ASSIGN_OR_RETURN(v.model, f.GetString("tokenizer.ggml.model"));
  v.pre = "default";
  if (f.Find("tokenizer.ggml.pre") != nullptr) {
    ASSIGN_OR_RETURN(v.pre, f.GetString("tokenizer.ggml.pre"));
  }
  ASSIGN_OR_RETURN(v.tokens, f.GetStringArray("tokenizer.ggml.tokens"));
  const size_t n = v.tokens.size();
  if (n == 0) return absl::InvalidArgumentError("GGUF: empty tokenizer.ggml.tokens");
  if (f.Find("tokenizer.ggml.scores") != nullptr) {
    ASSIGN_OR_RETURN(v.scores, f.GetFloatArray("tokenizer.ggml.scores"));
    if (v.scores.size() != n) {
      return absl::InvalidArgumentError(absl::StrCat(
          "GGUF: tokenizer.ggml.scores has ", v.scores.size(), " entries for ", n, " tokens"));
    }
  }
  if (f.Find("tokenizer.ggml.token_type") != nullptr) {
    ASSIGN_OR_RETURN(const std::vector<int64_t> types, f.GetIntArray("tokenizer.ggml.token_type"));
    if (types.size() != n) {
      return absl::InvalidArgumentError(absl::StrCat("GGUF: tokenizer.ggml.token_type has ",
                                                     types.size(), " entries for ", n, " tokens"));
    }
    v.types.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      if (types[i] < 0 || types[i] > static_cast<int64_t>(TokenType::kByte)) {
        return absl::InvalidArgumentError(
            absl::StrCat("GGUF: token ", i, " has unknown token type ", types[i]));
      }
      v.types.push_back(static_cast<TokenType>(types[i]));
    }
  }
  if (f.Find("tokenizer.ggml.merges") != nullptr) {
    ASSIGN_OR_RETURN(v.merges, f.GetStringArray("tokenizer.ggml.merges"));
  }
  ASSIGN_OR_RETURN(v.bos_id, TokenIdKey(f, "tokenizer.ggml.bos_token_id", n));
  ASSIGN_OR_RETURN(v.eos_id, TokenIdKey(f, "tokenizer.ggml.eos_token_id", n));
  ASSIGN_OR_RETURN(v.unk_id, TokenIdKey(f, "tokenizer.ggml.unknown_token_id", n));
  ASSIGN_OR_RETURN(v.pad_id, TokenIdKey(f, "tokenizer.ggml.padding_token_id", n));
  // SentencePiece vocabularies default to a BOS and a leading space.
  const bool spm = v.model == "llama";
  v.add_bos = spm;
  v.add_space_prefix = spm;
  if (f.Find("tokenizer.ggml.add_bos_token") != nullptr) {
    ASSIGN_OR_RETURN(v.add_bos, f.GetBool("tokenizer.ggml.add_bos_token"));
  }
  if (f.Find("tokenizer.ggml.add_space_prefix") != nullptr) {
    ASSIGN_OR_RETURN(v.add_space_prefix, f.GetBool("tokenizer.ggml.add_space_prefix"));
  }
  if (f.Find("tokenizer.chat_template") != nullptr) {
    ASSIGN_OR_RETURN(v.chat_template, f.GetString("tokenizer.chat_template"));
  }
  return v;
}

// q/k weights (and biases) of llama-arch GGUF files are stored permuted for
// adjacent-pair RoPE; returns the head count to un-permute with, or 0.
int UnpermuteHeads(const ModelConfig& c, const std::string& name) {
  if (c.architecture != "llama") return 0;
  auto ends_with = [&](const char* s) {
    const std::string suffix = s;
    return name.size() > suffix.size() &&
           name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  if (name.rfind("blk.", 0) != 0) return 0;
  if (ends_with(".attn_q.weight") || ends_with(".attn_q.bias")) return c.n_heads;
  if (ends_with(".attn_k.weight") || ends_with(".attn_k.bias")) return c.n_kv_heads;
  return 0;
}

// The DType of a ggml type, when it has one.
std::optional<DType> DTypeOfGgml(uint32_t type) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::kF16:
      return DType::kF16;
    case GgmlType::kBF16:
      return DType::kBF16;
    case GgmlType::kQ4_0:
      return DType::kQ4_0;
    case GgmlType::kQ4_1:
      return DType::kQ4_1;
    case GgmlType::kQ8_0:
      return DType::kQ8_0;
    case GgmlType::kQ4_K:
      return DType::kQ4_K;
    case GgmlType::kQ5_K:
      return DType::kQ5_K;
    case GgmlType::kQ6_K:
      return DType::kQ6_K;
    default:
      return std::nullopt;
  }
}

// A matrix kept in its blocks: rows copied whole (un-permuted with `heads`).
absl::Status CopyRawTensor(const GgufFile& f, const GgufTensorInfo& t, DType dtype, int heads,
                           HostTensor* out) {
  const std::span<const uint8_t> src = f.TensorData(t);
  const int64_t rows = t.rows(), row_bytes = DTypeRowBytes(dtype, t.cols());
  if (row_bytes <= 0 || rows * row_bytes != static_cast<int64_t>(src.size()) ||
      (heads != 0 && (rows % heads != 0 || (rows / heads) % 2 != 0))) {
    return absl::InvalidArgumentError(
        absl::StrCat("GGUF: tensor '", t.name, "' of shape ", ShapeString(out->shape),
                     " cannot be kept in its blocks"));
  }
  out->dtype = dtype;
  out->raw.resize(src.size());
  if (heads == 0) {
    std::copy(src.begin(), src.end(), out->raw.begin());
    return absl::OkStatus();
  }
  const std::vector<int64_t> map = UnpermuteRowMap(rows, heads);
  for (int64_t r = 0; r < rows; ++r) {
    std::copy_n(src.begin() + r * row_bytes, row_bytes, out->raw.begin() + map[r] * row_bytes);
  }
  return absl::OkStatus();
}

absl::Status LoadGgufTensor(const GgufFile& f, const GgufTensorInfo& t, const ModelConfig& c,
                            const HostLoadOptions& options, HostTensor* out) {
  out->shape = t.Shape();
  const std::optional<DType> dtype = DTypeOfGgml(t.type);
  if (t.ne.size() == 2 && dtype.has_value() &&
      std::find(options.raw_types.begin(), options.raw_types.end(), *dtype) !=
          options.raw_types.end()) {
    return CopyRawTensor(f, t, *dtype, UnpermuteHeads(c, t.name), out);
  }
  out->data.resize(static_cast<size_t>(t.n_elements));
  const int heads = UnpermuteHeads(c, t.name);
  if (heads == 0) return f.Dequantize(t, out->data);
  const int64_t rows = t.ne.size() == 1 ? t.ne[0] : t.rows();
  if (t.ne.size() > 2 || rows % heads != 0 || (rows / heads) % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("GGUF: tensor '", t.name, "' of shape ", ShapeString(out->shape),
                     " cannot be split into ", heads, " heads of even size"));
  }
  const std::vector<int64_t> map = UnpermuteRowMap(rows, heads);
  if (t.ne.size() == 2) return f.Dequantize(t, out->data, map);
  // A bias: one element per row.
  std::vector<float> tmp(static_cast<size_t>(rows));
  RETURN_IF_ERROR(f.Dequantize(t, tmp));
  for (int64_t r = 0; r < rows; ++r) out->data[static_cast<size_t>(map[r])] = tmp[r];
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<HostModel> LoadGgufModel(const GgufFile& f, const HostLoadOptions& options) {
  HostModel m;
  ASSIGN_OR_RETURN(m.config, GgufConfig(f));
  ASSIGN_OR_RETURN(m.vocab, GgufVocab(f));
  if (m.vocab.tokens.size() > static_cast<size_t>(m.config.vocab_size)) {
    return absl::InvalidArgumentError(absl::StrCat("GGUF: tokenizer has ", m.vocab.tokens.size(),
                                                   " tokens, the model ", m.config.vocab_size));
  }
  RETURN_IF_ERROR(CheckWeightShapes(
      m.config, [&](const std::string& name) -> std::optional<std::vector<int64_t>> {
        const GgufTensorInfo* t = f.FindTensor(name);
        if (t == nullptr) return std::nullopt;
        return t->Shape();
      }));
  // Unsupported types are rejected before any f32 buffer is sized for them.
  for (const GgufTensorInfo& t : f.tensors()) {
    const GgmlTypeTraits* traits = GgmlTypeInfo(t.type);
    if (traits == nullptr || !traits->dequantizable) {
      return absl::UnimplementedError(
          absl::StrCat("GGUF: tensor '", t.name, "' has ggml type ",
                       traits == nullptr ? std::to_string(t.type) : std::string(traits->name),
                       ", which is not supported"));
    }
  }
  // One parallel loop over tensors, largest first, rather than one parallel
  // region per tensor: far fewer thread hand-offs, which matters on a loaded
  // machine. Map entries are created before the loop; each task fills its own.
  std::vector<std::pair<const GgufTensorInfo*, HostTensor*>> jobs;
  jobs.reserve(f.tensors().size());
  for (const GgufTensorInfo& t : f.tensors()) jobs.emplace_back(&t, &m.tensors[t.name]);
  std::sort(jobs.begin(), jobs.end(),
            [](const auto& a, const auto& b) { return a.first->n_elements > b.first->n_elements; });
  std::vector<absl::Status> status(jobs.size());
  const auto n_jobs = static_cast<int64_t>(jobs.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < n_jobs; ++i) {
    status[i] = LoadGgufTensor(f, *jobs[i].first, m.config, options, jobs[i].second);
  }
  for (const absl::Status& s : status) RETURN_IF_ERROR(s);
  return m;
}

absl::StatusOr<HostModel> LoadGgufModel(const std::string& path, const HostLoadOptions& options) {
  ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> f, GgufFile::Open(path));
  absl::StatusOr<HostModel> m = LoadGgufModel(*f, options);
  if (!m.ok())
    return absl::Status(m.status().code(), absl::StrCat(path, ": ", m.status().message()));
  return m;
}

}  // namespace longctx
