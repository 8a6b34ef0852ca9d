#include "engine/model/hf_model.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/model/safetensors.h"
#include "engine/model/weight_layout.h"
#include "engine/util/status_macros.h"

namespace longctx {
namespace {

// The largest published tokenizer.json files are a few tens of MB.
constexpr uint64_t kMaxJsonFileBytes = 128u << 20;
constexpr int64_t kMaxVocab = 1 << 22;

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(path, ec);
  if (ec) return absl::NotFoundError(absl::StrCat("cannot read ", path, ": ", ec.message()));
  if (size > kMaxJsonFileBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " is ", size, " bytes, more than the limit of ", kMaxJsonFileBytes));
  }
  std::ifstream in(path, std::ios::binary);
  std::string text(static_cast<size_t>(size), '\0');
  if (!in.read(text.data(), static_cast<std::streamsize>(size))) {
    return absl::InvalidArgumentError(absl::StrCat("cannot read ", path));
  }
  return text;
}

absl::StatusOr<JsonValue> ReadJsonFile(const std::string& path) {
  ASSIGN_OR_RETURN(const std::string text, ReadTextFile(path));
  absl::StatusOr<JsonValue> v = ParseJson(text);
  if (!v.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", v.status().message()));
  return v;
}

absl::StatusOr<int> ConfigInt(const JsonValue& c, const char* key, std::optional<int> fallback) {
  const JsonValue* v = c.Find(key);
  if (v == nullptr || v->is_null()) {
    if (fallback.has_value()) return *fallback;
    return absl::NotFoundError(absl::StrCat("config.json: missing '", key, "'"));
  }
  if (!v->is_int() || v->int_value() < 0 || v->int_value() > std::numeric_limits<int>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: '", key, "' is not a non-negative integer"));
  }
  return static_cast<int>(v->int_value());
}

absl::StatusOr<float> ConfigFloat(const JsonValue& c, const char* key, float fallback) {
  const JsonValue* v = c.Find(key);
  if (v == nullptr || v->is_null()) return fallback;
  if (!v->is_number()) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: '", key, "' is not a number"));
  }
  return static_cast<float>(v->number());
}

absl::StatusOr<bool> ConfigBool(const JsonValue& c, const char* key, bool fallback) {
  const JsonValue* v = c.Find(key);
  if (v == nullptr || v->is_null()) return fallback;
  if (!v->is_bool()) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: '", key, "' is not a bool"));
  }
  return v->bool_value();
}

std::string StringOr(const JsonValue* v, const std::string& fallback) {
  return v != nullptr && v->is_string() ? v->str() : fallback;
}

}  // namespace

absl::StatusOr<ModelConfig> ConfigFromHfJson(const JsonValue& j) {
  if (!j.is_object()) return absl::InvalidArgumentError("config.json is not a JSON object");
  const JsonValue* type = j.Find("model_type");
  if (type == nullptr || !type->is_string()) {
    return absl::NotFoundError("config.json: missing 'model_type'");
  }
  ModelConfig c;
  const std::string& mt = type->str();
  if (mt == "llama" || mt == "mistral") {
    c.architecture = "llama";
  } else if (mt == "qwen2") {
    c.architecture = "qwen2";
  } else {
    return absl::UnimplementedError(absl::StrCat("config.json: unsupported model_type '", mt,
                                                 "' (llama, mistral and qwen2 are read)"));
  }
  c.name = StringOr(j.Find("_name_or_path"), mt);
  ASSIGN_OR_RETURN(c.n_layers, ConfigInt(j, "num_hidden_layers", std::nullopt));
  ASSIGN_OR_RETURN(c.d_model, ConfigInt(j, "hidden_size", std::nullopt));
  ASSIGN_OR_RETURN(c.d_ff, ConfigInt(j, "intermediate_size", std::nullopt));
  ASSIGN_OR_RETURN(c.n_heads, ConfigInt(j, "num_attention_heads", std::nullopt));
  ASSIGN_OR_RETURN(c.n_kv_heads, ConfigInt(j, "num_key_value_heads", c.n_heads));
  if (c.n_heads == 0) return absl::InvalidArgumentError("config.json: num_attention_heads is 0");
  ASSIGN_OR_RETURN(c.head_dim, ConfigInt(j, "head_dim", c.d_model / c.n_heads));
  ASSIGN_OR_RETURN(c.vocab_size, ConfigInt(j, "vocab_size", std::nullopt));
  ASSIGN_OR_RETURN(c.context_length, ConfigInt(j, "max_position_embeddings", std::nullopt));
  ASSIGN_OR_RETURN(c.rope_theta, ConfigFloat(j, "rope_theta", 10000.f));
  ASSIGN_OR_RETURN(c.rms_eps, ConfigFloat(j, "rms_norm_eps", 1e-6f));
  ASSIGN_OR_RETURN(c.tied_embeddings, ConfigBool(j, "tie_word_embeddings", false));
  if (c.architecture == "qwen2") {
    c.qkv_bias = true;
    ASSIGN_OR_RETURN(const bool sliding, ConfigBool(j, "use_sliding_window", false));
    if (sliding) return absl::UnimplementedError("config.json: sliding-window attention");
  } else {
    ASSIGN_OR_RETURN(c.qkv_bias, ConfigBool(j, "attention_bias", false));
    const JsonValue* window = j.Find("sliding_window");
    if (mt == "mistral" && window != nullptr && !window->is_null()) {
      return absl::UnimplementedError("config.json: sliding-window attention");
    }
  }
  const JsonValue* scaling = j.Find("rope_scaling");
  if (scaling != nullptr && !scaling->is_null()) {
    if (!scaling->is_object()) {
      return absl::InvalidArgumentError("config.json: 'rope_scaling' is not an object");
    }
    const std::string kind =
        StringOr(scaling->Find("rope_type"), StringOr(scaling->Find("type"), ""));
    if (kind == "linear" || kind == "dynamic") {
      c.rope_scaling = kind == "linear" ? RopeScalingType::kLinear : RopeScalingType::kNtk;
      const JsonValue* factor = scaling->Find("factor");
      if (factor == nullptr || !factor->is_number()) {
        return absl::InvalidArgumentError("config.json: rope_scaling has no numeric 'factor'");
      }
      c.rope_scaling_factor = static_cast<float>(factor->number());
    } else if (kind != "default") {
      return absl::UnimplementedError(
          absl::StrCat("config.json: rope scaling type '", kind, "' is not supported"));
    }
  }
  RETURN_IF_ERROR(c.Validate());
  return c;
}

namespace {

// True when the tokenizer maps bytes to printable characters (GPT-2 style).
bool IsByteLevel(const JsonValue& tok) {
  auto is_byte_level = [](const JsonValue* v) {
    if (v == nullptr || !v->is_object()) return false;
    if (StringOr(v->Find("type"), "") == "ByteLevel") return true;
    const JsonValue* seq = v->Find("pretokenizers");
    if (seq == nullptr) seq = v->Find("decoders");
    if (seq == nullptr || !seq->is_array()) return false;
    for (const JsonValue& item : seq->items()) {
      if (item.is_object() && StringOr(item.Find("type"), "") == "ByteLevel") return true;
    }
    return false;
  };
  return is_byte_level(tok.Find("pre_tokenizer")) || is_byte_level(tok.Find("decoder"));
}

// A special token's id from config.json (an int, or a list whose first entry
// is used), else from tokenizer_config.json's token text; -1 when neither.
absl::StatusOr<int32_t> SpecialId(const JsonValue& config, const char* id_key,
                                  const JsonValue& tok_config, const char* text_key,
                                  const std::map<std::string, int32_t>& by_text, size_t n) {
  const JsonValue* v = config.is_object() ? config.Find(id_key) : nullptr;
  if (v != nullptr && v->is_array() && !v->items().empty()) v = &v->items()[0];
  int64_t id = -1;
  if (v != nullptr && v->is_int()) {
    id = v->int_value();
  } else if (tok_config.is_object()) {
    const JsonValue* t = tok_config.Find(text_key);
    if (t != nullptr && t->is_object()) t = t->Find("content");
    if (t != nullptr && t->is_string()) {
      auto it = by_text.find(t->str());
      if (it != by_text.end()) id = it->second;
    }
  }
  if (id < -1 || id >= static_cast<int64_t>(n)) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: '", id_key, "' = ", id,
                                                   " is not a token id (vocabulary of ", n, ")"));
  }
  return static_cast<int32_t>(id);
}

}  // namespace

absl::StatusOr<VocabData> VocabFromTokenizerJson(const JsonValue& tok, const JsonValue& tok_config,
                                                 const JsonValue& config) {
  if (!tok.is_object()) return absl::InvalidArgumentError("tokenizer.json is not an object");
  const JsonValue* model = tok.Find("model");
  if (model == nullptr || !model->is_object()) {
    return absl::InvalidArgumentError("tokenizer.json: missing 'model'");
  }
  const std::string type = StringOr(model->Find("type"), "BPE");
  if (type != "BPE") {
    return absl::UnimplementedError(
        absl::StrCat("tokenizer.json: model type '", type, "' (only BPE is read)"));
  }
  const JsonValue* vocab = model->Find("vocab");
  if (vocab == nullptr || !vocab->is_object()) {
    return absl::InvalidArgumentError("tokenizer.json: model.vocab is not an object");
  }
  struct Entry {
    int64_t id;
    const std::string* text;
    TokenType type;
  };
  std::vector<Entry> entries;
  entries.reserve(vocab->members().size());
  for (const auto& [text, id] : vocab->members()) {
    if (!id.is_int() || id.int_value() < 0 || id.int_value() >= kMaxVocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer.json: vocab entry \"", text, "\" has an invalid id"));
    }
    entries.push_back({id.int_value(), &text, TokenType::kNormal});
  }
  if (const JsonValue* added = tok.Find("added_tokens"); added != nullptr && !added->is_null()) {
    if (!added->is_array()) {
      return absl::InvalidArgumentError("tokenizer.json: added_tokens is not an array");
    }
    for (const JsonValue& a : added->items()) {
      const JsonValue* id = a.is_object() ? a.Find("id") : nullptr;
      const JsonValue* content = a.is_object() ? a.Find("content") : nullptr;
      if (id == nullptr || !id->is_int() || id->int_value() < 0 || id->int_value() >= kMaxVocab ||
          content == nullptr || !content->is_string()) {
        return absl::InvalidArgumentError("tokenizer.json: malformed added_tokens entry");
      }
      const JsonValue* special = a.Find("special");
      const bool is_special = special != nullptr && special->is_bool() && special->bool_value();
      entries.push_back({id->int_value(), &content->str(),
                         is_special ? TokenType::kControl : TokenType::kUserDefined});
    }
  }
  int64_t n = 0;
  for (const Entry& e : entries) n = std::max(n, e.id + 1);
  if (n == 0) return absl::InvalidArgumentError("tokenizer.json: empty vocabulary");
  VocabData v;
  v.model = "gpt2";
  v.tokens.resize(static_cast<size_t>(n));
  v.types.assign(static_cast<size_t>(n), TokenType::kUndefined);
  std::vector<bool> set(static_cast<size_t>(n), false);
  for (const Entry& e : entries) {
    const auto i = static_cast<size_t>(e.id);
    if (set[i] && v.tokens[i] != *e.text) {
      return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: token id ", e.id,
                                                     " is both \"", v.tokens[i], "\" and \"",
                                                     *e.text, "\""));
    }
    v.tokens[i] = *e.text;
    v.types[i] = e.type;  // added tokens come last and set the type
    set[i] = true;
  }
  for (int64_t i = 0; i < n; ++i) {
    if (!set[static_cast<size_t>(i)]) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer.json: token id ", i, " has no entry (ids must be contiguous)"));
    }
  }
  if (const JsonValue* merges = model->Find("merges"); merges != nullptr && !merges->is_null()) {
    if (!merges->is_array()) {
      return absl::InvalidArgumentError("tokenizer.json: model.merges is not an array");
    }
    v.merges.reserve(merges->items().size());
    for (const JsonValue& m : merges->items()) {
      if (m.is_string()) {
        v.merges.push_back(m.str());
      } else if (m.is_array() && m.items().size() == 2 && m.items()[0].is_string() &&
                 m.items()[1].is_string()) {
        v.merges.push_back(absl::StrCat(m.items()[0].str(), " ", m.items()[1].str()));
      } else {
        return absl::InvalidArgumentError("tokenizer.json: malformed merge entry");
      }
    }
  }
  const std::string model_type =
      config.is_object() ? StringOr(config.Find("model_type"), "") : std::string();
  const bool byte_level = IsByteLevel(tok);
  if (model_type == "qwen2") {
    v.pre = "qwen2";
  } else {
    v.pre = byte_level ? "llama-bpe" : "default";
  }
  std::map<std::string, int32_t> by_text;
  for (int64_t i = 0; i < n; ++i) by_text.emplace(v.tokens[static_cast<size_t>(i)], i);
  if (const JsonValue* unk = model->Find("unk_token"); unk != nullptr && unk->is_string()) {
    auto it = by_text.find(unk->str());
    if (it != by_text.end()) v.unk_id = it->second;
  }
  const size_t nt = v.tokens.size();
  ASSIGN_OR_RETURN(v.bos_id,
                   SpecialId(config, "bos_token_id", tok_config, "bos_token", by_text, nt));
  ASSIGN_OR_RETURN(v.eos_id,
                   SpecialId(config, "eos_token_id", tok_config, "eos_token", by_text, nt));
  ASSIGN_OR_RETURN(v.pad_id,
                   SpecialId(config, "pad_token_id", tok_config, "pad_token", by_text, nt));
  if (tok_config.is_object()) {
    if (const JsonValue* b = tok_config.Find("add_bos_token"); b != nullptr && b->is_bool()) {
      v.add_bos = b->bool_value();
    }
    const JsonValue* t = tok_config.Find("chat_template");
    if (t != nullptr && t->is_string()) {
      v.chat_template = t->str();
    } else if (t != nullptr && t->is_array()) {
      for (const JsonValue& named : t->items()) {
        if (named.is_object() && StringOr(named.Find("name"), "") == "default") {
          v.chat_template = StringOr(named.Find("template"), "");
        }
      }
    }
  }
  return v;
}

namespace {

bool SafeShardName(const std::string& name) {
  return !name.empty() && name.find('/') == std::string::npos &&
         name.find('\\') == std::string::npos && name != "." && name != ".." && name.size() > 12 &&
         name.compare(name.size() - 12, 12, ".safetensors") == 0;
}

struct Located {
  const SafetensorsFile* file;
  const SafetensorsTensorInfo* info;
};

absl::StatusOr<HostModel> LoadDir(const std::filesystem::path& dir) {
  HostModel m;
  ASSIGN_OR_RETURN(const JsonValue config, ReadJsonFile((dir / "config.json").string()));
  ASSIGN_OR_RETURN(m.config, ConfigFromHfJson(config));
  ASSIGN_OR_RETURN(const JsonValue tok, ReadJsonFile((dir / "tokenizer.json").string()));
  JsonValue tok_config;
  if (std::filesystem::exists(dir / "tokenizer_config.json")) {
    ASSIGN_OR_RETURN(tok_config, ReadJsonFile((dir / "tokenizer_config.json").string()));
  }
  ASSIGN_OR_RETURN(m.vocab, VocabFromTokenizerJson(tok, tok_config, config));
  if (m.vocab.tokens.size() > static_cast<size_t>(m.config.vocab_size)) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer has ", m.vocab.tokens.size(),
                                                   " tokens, the model ", m.config.vocab_size));
  }

  // Shards: those named by the index, or the single model.safetensors.
  std::vector<std::string> shard_names;
  JsonValue index;
  const std::filesystem::path index_path = dir / "model.safetensors.index.json";
  const bool sharded = std::filesystem::exists(index_path);
  if (sharded) {
    ASSIGN_OR_RETURN(index, ReadJsonFile(index_path.string()));
    const JsonValue* map = index.is_object() ? index.Find("weight_map") : nullptr;
    if (map == nullptr || !map->is_object()) {
      return absl::InvalidArgumentError("model.safetensors.index.json: no 'weight_map' object");
    }
    std::set<std::string> names;
    for (const auto& [tensor, file] : map->members()) {
      if (!file.is_string() || !SafeShardName(file.str())) {
        return absl::InvalidArgumentError(absl::StrCat("model.safetensors.index.json: tensor '",
                                                       tensor, "' names an invalid shard file"));
      }
      names.insert(file.str());
    }
    shard_names.assign(names.begin(), names.end());
  } else {
    shard_names.push_back("model.safetensors");
  }
  std::map<std::string, std::unique_ptr<SafetensorsFile>> shards;
  for (const std::string& name : shard_names) {
    ASSIGN_OR_RETURN(shards[name], SafetensorsFile::Open((dir / name).string()));
  }

  std::map<std::string, Located> located;  // canonical name -> tensor
  for (const auto& [shard, file] : shards) {
    for (const SafetensorsTensorInfo& t : file->tensors()) {
      std::optional<std::string> canon = CanonicalTensorName(t.name);
      if (!canon.has_value()) {
        // Older checkpoints store the RoPE frequencies; they are recomputed.
        if (t.name.find("rotary_emb.inv_freq") != std::string::npos) continue;
        return absl::InvalidArgumentError(
            absl::StrCat(shard, ": unrecognized tensor '", t.name, "'"));
      }
      if (!located.emplace(*canon, Located{file.get(), &t}).second) {
        return absl::InvalidArgumentError(
            absl::StrCat(shard, ": tensor '", t.name, "' appears in more than one shard"));
      }
    }
  }
  if (sharded) {
    for (const auto& [tensor, file] : index.Find("weight_map")->members()) {
      if (shards.at(file.str())->Find(tensor) == nullptr) {
        return absl::NotFoundError(absl::StrCat("model.safetensors.index.json: tensor '", tensor,
                                                "' is not in ", file.str()));
      }
    }
  }
  RETURN_IF_ERROR(CheckWeightShapes(
      m.config, [&](const std::string& name) -> std::optional<std::vector<int64_t>> {
        auto it = located.find(name);
        if (it == located.end()) return std::nullopt;
        return it->second.info->shape;
      }));
  for (const auto& [name, loc] : located) {
    if (!SafetensorsDtypeConvertible(loc.info->dtype)) {
      return absl::UnimplementedError(absl::StrCat("tensor '", loc.info->name, "' has dtype ",
                                                   loc.info->dtype,
                                                   "; F32, F16 and BF16 are supported"));
    }
  }
  // One parallel loop over tensors (as for GGUF); each task fills its own entry.
  std::vector<std::pair<const Located*, HostTensor*>> jobs;
  for (const auto& [name, loc] : located) jobs.emplace_back(&loc, &m.tensors[name]);
  std::vector<absl::Status> status(jobs.size());
  const auto n_jobs = static_cast<int64_t>(jobs.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < n_jobs; ++i) {
    const SafetensorsTensorInfo& info = *jobs[i].first->info;
    HostTensor& t = *jobs[i].second;
    t.shape = info.shape;
    t.data.resize(static_cast<size_t>(info.numel()));
    status[i] = jobs[i].first->file->ToF32(info, t.data);
  }
  for (const absl::Status& s : status) RETURN_IF_ERROR(s);
  return m;
}

}  // namespace

absl::StatusOr<HostModel> LoadSafetensorsModel(const std::string& dir) {
  absl::StatusOr<HostModel> m = LoadDir(std::filesystem::path(dir));
  if (!m.ok()) {
    return absl::Status(m.status().code(), absl::StrCat(dir, ": ", m.status().message()));
  }
  return m;
}

}  // namespace longctx
