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
#include "engine/util/json_util.h"
#include "engine/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace longctx {
namespace {

using nlohmann::json;

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

absl::StatusOr<json> ReadJsonFile(const std::string& path) {
  ASSIGN_OR_RETURN(const std::string text, ReadTextFile(path));
  absl::StatusOr<json> v = ParseJson(text);
  if (!v.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", v.status().message()));
  return v;
}

absl::StatusOr<int> ConfigInt(const json& c, const char* key, std::optional<int> fallback) {
  const json* v = JsonFind(c, key);
  if (v == nullptr || v->is_null()) {
    if (fallback.has_value()) return *fallback;
    return absl::NotFoundError(absl::StrCat("config.json: missing '", key, "'"));
  }
  const std::optional<int64_t> i = JsonInt(*v);
  if (!i.has_value() || *i < 0 || *i > std::numeric_limits<int>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: '", key, "' is not a non-negative integer"));
  }
  return static_cast<int>(*i);
}

absl::StatusOr<float> ConfigFloat(const json& c, const char* key, float fallback) {
  const json* v = JsonFind(c, key);
  if (v == nullptr || v->is_null()) return fallback;
  if (!v->is_number()) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: '", key, "' is not a number"));
  }
  return static_cast<float>(v->get<double>());
}

absl::StatusOr<bool> ConfigBool(const json& c, const char* key, bool fallback) {
  const json* v = JsonFind(c, key);
  if (v == nullptr || v->is_null()) return fallback;
  if (!v->is_boolean()) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: '", key, "' is not a bool"));
  }
  return v->get<bool>();
}

}  // namespace

absl::StatusOr<ModelConfig> ConfigFromHfJson(const json& j) {
  if (!j.is_object()) return absl::InvalidArgumentError("config.json is not a JSON object");
  const json* type = JsonFind(j, "model_type");
  if (type == nullptr || !type->is_string()) {
    return absl::NotFoundError("config.json: missing 'model_type'");
  }
  ModelConfig c;
  const std::string& mt = type->get_ref<const std::string&>();
  if (mt == "llama" || mt == "mistral") {
    c.architecture = "llama";
  } else if (mt == "qwen2") {
    c.architecture = "qwen2";
  } else {
    return absl::UnimplementedError(absl::StrCat("config.json: unsupported model_type '", mt,
                                                 "' (llama, mistral and qwen2 are read)"));
  }
  c.name = JsonStringOr(JsonFind(j, "_name_or_path"), mt);
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
    const json* window = JsonFind(j, "sliding_window");
    if (mt == "mistral" && window != nullptr && !window->is_null()) {
      return absl::UnimplementedError("config.json: sliding-window attention");
    }
  }
  const json* scaling = JsonFind(j, "rope_scaling");
  if (scaling != nullptr && !scaling->is_null()) {
    if (!scaling->is_object()) {
      return absl::InvalidArgumentError("config.json: 'rope_scaling' is not an object");
    }
    const std::string kind =
        JsonStringOr(JsonFind(*scaling, "rope_type"), JsonStringOr(JsonFind(*scaling, "type"), ""));
    if (kind == "linear" || kind == "dynamic") {
      c.rope_scaling = kind == "linear" ? RopeScalingType::kLinear : RopeScalingType::kNtk;
      const json* factor = JsonFind(*scaling, "factor");
      if (factor == nullptr || !factor->is_number()) {
        return absl::InvalidArgumentError("config.json: rope_scaling has no numeric 'factor'");
      }
      c.rope_scaling_factor = static_cast<float>(factor->get<double>());
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
bool IsByteLevel(const json& tok) {
  auto is_byte_level = [](const json* v) {
    if (v == nullptr || !v->is_object()) return false;
    if (JsonStringOr(JsonFind(*v, "type"), "") == "ByteLevel") return true;
    const json* seq = JsonFind(*v, "pretokenizers");
    if (seq == nullptr) seq = JsonFind(*v, "decoders");
    if (seq == nullptr || !seq->is_array()) return false;
    for (const json& item : *seq) {
      if (JsonStringOr(JsonFind(item, "type"), "") == "ByteLevel") return true;
    }
    return false;
  };
  return is_byte_level(JsonFind(tok, "pre_tokenizer")) || is_byte_level(JsonFind(tok, "decoder"));
}

// A special token's id from config.json (an int, or a list whose first entry
// is used), else from tokenizer_config.json's token text; -1 when neither.
absl::StatusOr<int32_t> SpecialId(const json& config, const char* id_key, const json& tok_config,
                                  const char* text_key,
                                  const std::map<std::string, int32_t>& by_text, size_t n) {
  const json* v = JsonFind(config, id_key);
  if (v != nullptr && v->is_array() && !v->empty()) v = &(*v)[0];
  int64_t id = -1;
  if (const std::optional<int64_t> i = v != nullptr ? JsonInt(*v) : std::nullopt) {
    id = *i;
  } else {
    const json* t = JsonFind(tok_config, text_key);
    if (t != nullptr && t->is_object()) t = JsonFind(*t, "content");
    if (t != nullptr && t->is_string()) {
      auto it = by_text.find(t->get_ref<const std::string&>());
      if (it != by_text.end()) id = it->second;
    }
  }
  if (id < -1 || id >= static_cast<int64_t>(n)) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: '", id_key, "' = ", id,
                                                   " is not a token id (vocabulary of ", n, ")"));
  }
  return static_cast<int32_t>(id);
}

// One token of tokenizer.json: model.vocab or added_tokens (texts point into
// the parsed document).
struct VocabEntry {
  int64_t id;
  const std::string* text;
  TokenType type;
};

// The entries of model.vocab, then those of added_tokens.
absl::StatusOr<std::vector<VocabEntry>> VocabEntries(const json& vocab, const json& tok) {
  std::vector<VocabEntry> entries;
  entries.reserve(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const std::optional<int64_t> id = JsonInt(it.value());
    if (!id.has_value() || *id < 0 || *id >= kMaxVocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer.json: vocab entry \"", it.key(), "\" has an invalid id"));
    }
    entries.push_back({*id, &it.key(), TokenType::kNormal});
  }
  const json* added = JsonFind(tok, "added_tokens");
  if (added == nullptr || added->is_null()) return entries;
  if (!added->is_array()) {
    return absl::InvalidArgumentError("tokenizer.json: added_tokens is not an array");
  }
  for (const json& a : *added) {
    const json* id = JsonFind(a, "id");
    const json* content = JsonFind(a, "content");
    const std::optional<int64_t> i = id != nullptr ? JsonInt(*id) : std::nullopt;
    if (!i.has_value() || *i < 0 || *i >= kMaxVocab || content == nullptr ||
        !content->is_string()) {
      return absl::InvalidArgumentError("tokenizer.json: malformed added_tokens entry");
    }
    const json* special = JsonFind(a, "special");
    const bool is_special = special != nullptr && special->is_boolean() && special->get<bool>();
    entries.push_back({*i, &content->get_ref<const std::string&>(),
                       is_special ? TokenType::kControl : TokenType::kUserDefined});
  }
  return entries;
}

// Fills v->tokens and v->types; ids must be contiguous from 0.
absl::Status AssignTokens(const std::vector<VocabEntry>& entries, VocabData* v) {
  int64_t n = 0;
  for (const VocabEntry& e : entries) n = std::max(n, e.id + 1);
  if (n == 0) return absl::InvalidArgumentError("tokenizer.json: empty vocabulary");
  v->tokens.resize(static_cast<size_t>(n));
  v->types.assign(static_cast<size_t>(n), TokenType::kUndefined);
  std::vector<bool> set(static_cast<size_t>(n), false);
  for (const VocabEntry& e : entries) {
    const auto i = static_cast<size_t>(e.id);
    if (set[i] && v->tokens[i] != *e.text) {
      return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: token id ", e.id,
                                                     " is both \"", v->tokens[i], "\" and \"",
                                                     *e.text, "\""));
    }
    v->tokens[i] = *e.text;
    v->types[i] = e.type;  // added tokens come last and set the type
    set[i] = true;
  }
  for (int64_t i = 0; i < n; ++i) {
    if (!set[static_cast<size_t>(i)]) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer.json: token id ", i, " has no entry (ids must be contiguous)"));
    }
  }
  return absl::OkStatus();
}

// model.merges: "a b" strings or ["a", "b"] pairs.
absl::Status ReadMerges(const json& model, std::vector<std::string>* merges) {
  const json* list = JsonFind(model, "merges");
  if (list == nullptr || list->is_null()) return absl::OkStatus();
  if (!list->is_array()) {
    return absl::InvalidArgumentError("tokenizer.json: model.merges is not an array");
  }
  merges->reserve(list->size());
  for (const json& m : *list) {
    if (m.is_string()) {
      merges->push_back(m.get<std::string>());
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      merges->push_back(absl::StrCat(m[0].get_ref<const std::string&>(), " ",
                                     m[1].get_ref<const std::string&>()));
    } else {
      return absl::InvalidArgumentError("tokenizer.json: malformed merge entry");
    }
  }
  return absl::OkStatus();
}

// The unknown, bos, eos and pad ids (after the tokens are set).
absl::Status ReadSpecialIds(const json& model, const json& config, const json& tok_config,
                            VocabData* v) {
  std::map<std::string, int32_t> by_text;
  for (size_t i = 0; i < v->tokens.size(); ++i) {
    by_text.emplace(v->tokens[i], static_cast<int32_t>(i));
  }
  if (const json* unk = JsonFind(model, "unk_token"); unk != nullptr && unk->is_string()) {
    auto it = by_text.find(unk->get_ref<const std::string&>());
    if (it != by_text.end()) v->unk_id = it->second;
  }
  const size_t n = v->tokens.size();
  ASSIGN_OR_RETURN(v->bos_id,
                   SpecialId(config, "bos_token_id", tok_config, "bos_token", by_text, n));
  ASSIGN_OR_RETURN(v->eos_id,
                   SpecialId(config, "eos_token_id", tok_config, "eos_token", by_text, n));
  ASSIGN_OR_RETURN(v->pad_id,
                   SpecialId(config, "pad_token_id", tok_config, "pad_token", by_text, n));
  return absl::OkStatus();
}

// add_bos_token and the chat template (a string, or named templates of which
// "default" is used) from tokenizer_config.json.
void ReadTokenizerConfig(const json& tok_config, VocabData* v) {
  if (const json* b = JsonFind(tok_config, "add_bos_token"); b != nullptr && b->is_boolean()) {
    v->add_bos = b->get<bool>();
  }
  const json* t = JsonFind(tok_config, "chat_template");
  if (t != nullptr && t->is_string()) {
    v->chat_template = t->get<std::string>();
  } else if (t != nullptr && t->is_array()) {
    for (const json& named : *t) {
      if (JsonStringOr(JsonFind(named, "name"), "") == "default") {
        v->chat_template = JsonStringOr(JsonFind(named, "template"), "");
      }
    }
  }
}

}  // namespace

absl::StatusOr<VocabData> VocabFromTokenizerJson(const json& tok, const json& tok_config,
                                                 const json& config) {
  if (!tok.is_object()) return absl::InvalidArgumentError("tokenizer.json is not an object");
  const json* model = JsonFind(tok, "model");
  if (model == nullptr || !model->is_object()) {
    return absl::InvalidArgumentError("tokenizer.json: missing 'model'");
  }
  const std::string type = JsonStringOr(JsonFind(*model, "type"), "BPE");
  if (type != "BPE") {
    return absl::UnimplementedError(
        absl::StrCat("tokenizer.json: model type '", type, "' (only BPE is read)"));
  }
  const json* vocab = JsonFind(*model, "vocab");
  if (vocab == nullptr || !vocab->is_object()) {
    return absl::InvalidArgumentError("tokenizer.json: model.vocab is not an object");
  }
  ASSIGN_OR_RETURN(const std::vector<VocabEntry> entries, VocabEntries(*vocab, tok));
  VocabData v;
  v.model = "gpt2";
  RETURN_IF_ERROR(AssignTokens(entries, &v));
  RETURN_IF_ERROR(ReadMerges(*model, &v.merges));
  if (JsonStringOr(JsonFind(config, "model_type"), "") == "qwen2") {
    v.pre = "qwen2";
  } else {
    v.pre = IsByteLevel(tok) ? "llama-bpe" : "default";
  }
  RETURN_IF_ERROR(ReadSpecialIds(*model, config, tok_config, &v));
  ReadTokenizerConfig(tok_config, &v);
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

using Shards = std::map<std::string, std::unique_ptr<SafetensorsFile>>;

// The shard files: those model.safetensors.index.json names (the parsed index
// goes to *index), else the single model.safetensors (*index stays null).
absl::StatusOr<std::vector<std::string>> ShardNames(const std::filesystem::path& dir, json* index) {
  const std::filesystem::path index_path = dir / "model.safetensors.index.json";
  if (!std::filesystem::exists(index_path)) return std::vector<std::string>{"model.safetensors"};
  ASSIGN_OR_RETURN(*index, ReadJsonFile(index_path.string()));
  const json* map = JsonFind(*index, "weight_map");
  if (map == nullptr || !map->is_object()) {
    return absl::InvalidArgumentError("model.safetensors.index.json: no 'weight_map' object");
  }
  std::set<std::string> names;
  for (auto it = map->begin(); it != map->end(); ++it) {
    if (!it.value().is_string() || !SafeShardName(it.value().get_ref<const std::string&>())) {
      return absl::InvalidArgumentError(absl::StrCat("model.safetensors.index.json: tensor '",
                                                     it.key(), "' names an invalid shard file"));
    }
    names.insert(it.value().get<std::string>());
  }
  return std::vector<std::string>(names.begin(), names.end());
}

// Every tensor of the shards under its canonical name.
absl::StatusOr<std::map<std::string, Located>> LocateTensors(const Shards& shards) {
  std::map<std::string, Located> located;
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
  return located;
}

// Every tensor the index names is in the shard it names. REQUIRES: the index
// passed ShardNames.
absl::Status CheckIndexedTensors(const json& index, const Shards& shards) {
  const json& map = *JsonFind(index, "weight_map");
  for (auto it = map.begin(); it != map.end(); ++it) {
    const std::string& file = it.value().get_ref<const std::string&>();
    if (shards.at(file)->Find(it.key()) == nullptr) {
      return absl::NotFoundError(
          absl::StrCat("model.safetensors.index.json: tensor '", it.key(), "' is not in ", file));
    }
  }
  return absl::OkStatus();
}

// Converts the located tensors to f32 in one parallel loop (as for GGUF); each
// task fills its own entry.
absl::Status ConvertTensors(const std::map<std::string, Located>& located,
                            std::map<std::string, HostTensor>* tensors) {
  for (const auto& [name, loc] : located) {
    if (!SafetensorsDtypeConvertible(loc.info->dtype)) {
      return absl::UnimplementedError(absl::StrCat("tensor '", loc.info->name, "' has dtype ",
                                                   loc.info->dtype,
                                                   "; F32, F16 and BF16 are supported"));
    }
  }
  std::vector<std::pair<const Located*, HostTensor*>> jobs;
  for (const auto& [name, loc] : located) jobs.emplace_back(&loc, &(*tensors)[name]);
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
  return absl::OkStatus();
}

absl::StatusOr<HostModel> LoadDir(const std::filesystem::path& dir) {
  HostModel m;
  ASSIGN_OR_RETURN(const json config, ReadJsonFile((dir / "config.json").string()));
  ASSIGN_OR_RETURN(m.config, ConfigFromHfJson(config));
  ASSIGN_OR_RETURN(const json tok, ReadJsonFile((dir / "tokenizer.json").string()));
  json tok_config;
  if (std::filesystem::exists(dir / "tokenizer_config.json")) {
    ASSIGN_OR_RETURN(tok_config, ReadJsonFile((dir / "tokenizer_config.json").string()));
  }
  ASSIGN_OR_RETURN(m.vocab, VocabFromTokenizerJson(tok, tok_config, config));
  if (m.vocab.tokens.size() > static_cast<size_t>(m.config.vocab_size)) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer has ", m.vocab.tokens.size(),
                                                   " tokens, the model ", m.config.vocab_size));
  }
  json index;
  ASSIGN_OR_RETURN(const std::vector<std::string> shard_names, ShardNames(dir, &index));
  Shards shards;
  for (const std::string& name : shard_names) {
    ASSIGN_OR_RETURN(shards[name], SafetensorsFile::Open((dir / name).string()));
  }
  ASSIGN_OR_RETURN(const auto located, LocateTensors(shards));
  if (!index.is_null()) RETURN_IF_ERROR(CheckIndexedTensors(index, shards));
  RETURN_IF_ERROR(CheckWeightShapes(
      m.config, [&](const std::string& name) -> std::optional<std::vector<int64_t>> {
        auto it = located.find(name);
        if (it == located.end()) return std::nullopt;
        return it->second.info->shape;
      }));
  RETURN_IF_ERROR(ConvertTensors(located, &m.tensors));
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
