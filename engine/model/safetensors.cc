#include "engine/model/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <map>
#include <numeric>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "engine/model/dequant.h"
#include "engine/model/mapped_file.h"
#include "engine/model/weight_layout.h"
#include "engine/util/json_util.h"
#include "engine/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace longctx {
namespace {

using nlohmann::json;

// The Hugging Face reference reader refuses headers over 100 MB too.
constexpr uint64_t kMaxHeaderBytes = 100u << 20;
constexpr size_t kMaxDims = 8;

// Bytes per element of a safetensors dtype, 0 when unknown.
int DtypeSize(const std::string& d) {
  static const std::map<std::string, int> kSizes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E4M3", 1}, {"F8_E5M2", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
      {"U32", 4},  {"F32", 4}, {"I64", 8}, {"U64", 8},     {"F64", 8}};
  auto it = kSizes.find(d);
  return it == kSizes.end() ? 0 : it->second;
}

absl::StatusOr<uint64_t> NonNegativeInt(const json& v, const std::string& what) {
  const std::optional<int64_t> i = JsonInt(v);
  if (!i.has_value() || *i < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("safetensors: ", what, " is not a non-negative integer"));
  }
  return static_cast<uint64_t>(*i);
}

// The JSON header after the u64 length, checked against the file and the cap.
absl::StatusOr<std::string_view> HeaderText(std::span<const uint8_t> bytes) {
  if (bytes.size() < 8) {
    return absl::InvalidArgumentError("safetensors: truncated file: no header length");
  }
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  if (n > bytes.size() - 8) {
    return absl::InvalidArgumentError(absl::StrCat(
        "safetensors: header length ", n, " exceeds the ", bytes.size() - 8, " bytes after it"));
  }
  if (n > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("safetensors: header length ", n, " exceeds the limit of ", kMaxHeaderBytes));
  }
  return std::string_view(reinterpret_cast<const char*>(bytes.data() + 8), n);
}

// The dims of a tensor's "shape" (at most kMaxDims non-negative integers);
// *numel gets their product, which must fit int64.
absl::StatusOr<std::vector<int64_t>> ReadShape(const json* shape, const std::string& what,
                                               uint64_t* numel) {
  if (shape == nullptr || !shape->is_array() || shape->size() > kMaxDims) {
    return absl::InvalidArgumentError(
        absl::StrCat("safetensors: ", what, " has no shape of at most ", kMaxDims, " dims"));
  }
  std::vector<int64_t> dims;
  *numel = 1;
  for (const json& d : *shape) {
    ASSIGN_OR_RETURN(const uint64_t dim, NonNegativeInt(d, what + " shape"));
    if (dim != 0 && *numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / dim) {
      return absl::InvalidArgumentError(
          absl::StrCat("safetensors: ", what, " element count overflows"));
    }
    *numel *= dim;
    dims.push_back(static_cast<int64_t>(dim));
  }
  return dims;
}

// One tensor entry of the header, its byte range checked against the data
// section of `data_size` bytes and against its dtype and shape.
absl::StatusOr<SafetensorsTensorInfo> ReadTensorEntry(const std::string& name, const json& entry,
                                                      uint64_t data_size) {
  const std::string what = absl::StrCat("tensor '", name, "'");
  if (!entry.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat("safetensors: ", what, " is not an object"));
  }
  SafetensorsTensorInfo t;
  t.name = name;
  const json* dtype = JsonFind(entry, "dtype");
  if (dtype == nullptr || !dtype->is_string()) {
    return absl::InvalidArgumentError(absl::StrCat("safetensors: ", what, " has no dtype"));
  }
  t.dtype = dtype->get<std::string>();
  const int esize = DtypeSize(t.dtype);
  if (esize == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("safetensors: ", what, " has unknown dtype '", t.dtype, "'"));
  }
  uint64_t numel = 1;
  ASSIGN_OR_RETURN(t.shape, ReadShape(JsonFind(entry, "shape"), what, &numel));
  const json* offsets = JsonFind(entry, "data_offsets");
  if (offsets == nullptr || !offsets->is_array() || offsets->size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("safetensors: ", what, " has no data_offsets [begin, end]"));
  }
  ASSIGN_OR_RETURN(t.begin, NonNegativeInt((*offsets)[0], what + " data_offsets"));
  ASSIGN_OR_RETURN(t.end, NonNegativeInt((*offsets)[1], what + " data_offsets"));
  if (t.end < t.begin || t.end > data_size) {
    return absl::InvalidArgumentError(absl::StrCat("safetensors: ", what, " data [", t.begin, ", ",
                                                   t.end, ") lies outside the data section of ",
                                                   data_size, " bytes (past the end of the file)"));
  }
  if (numel > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(esize) ||
      numel * static_cast<uint64_t>(esize) != t.end - t.begin) {
    return absl::InvalidArgumentError(absl::StrCat(
        "safetensors: ", what, " of shape ", ShapeString(t.shape), " and dtype ", t.dtype,
        " needs ", numel, " x ", esize, " bytes, its data_offsets give ", t.end - t.begin));
  }
  return t;
}

// No two tensors share bytes of the data section.
absl::Status CheckNoOverlap(const std::vector<SafetensorsTensorInfo>& tensors) {
  std::vector<size_t> order(tensors.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return tensors[a].begin < tensors[b].begin; });
  for (size_t i = 1; i < order.size(); ++i) {
    if (tensors[order[i - 1]].end > tensors[order[i]].begin) {
      return absl::InvalidArgumentError(
          absl::StrCat("safetensors: tensor '", tensors[order[i]].name,
                       "' overlaps the data of tensor '", tensors[order[i - 1]].name, "'"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

bool SafetensorsDtypeConvertible(const std::string& dtype) {
  return dtype == "F32" || dtype == "F16" || dtype == "BF16";
}

int64_t SafetensorsTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

SafetensorsFile::~SafetensorsFile() = default;

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  ASSIGN_OR_RETURN(auto mapped, MappedFile::Open(path));
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->bytes_ = mapped->bytes();
  f->file_ = std::move(mapped);
  absl::Status s = f->ParseAll();
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat(path, ": ", s.message()));
  return f;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Parse(
    std::span<const uint8_t> bytes) {
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->bytes_ = bytes;
  RETURN_IF_ERROR(f->ParseAll());
  return f;
}

absl::Status SafetensorsFile::ParseAll() {
  ASSIGN_OR_RETURN(const std::string_view text, HeaderText(bytes_));
  // Tensors are listed in the header's order (the parsed object is sorted).
  std::vector<std::string> names;
  // About 8 values per tensor entry; 2^21 values allow 250k tensors.
  absl::StatusOr<json> header =
      ParseJson(text, {.max_depth = 16, .max_values = int64_t{1} << 21, .top_level_keys = &names});
  if (!header.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("safetensors: header: ", header.status().message()));
  }
  if (!header->is_object()) {
    return absl::InvalidArgumentError("safetensors: header is not a JSON object");
  }
  data_ = bytes_.subspan(8 + text.size());
  tensors_.reserve(names.size());
  for (const std::string& name : names) {
    if (name == "__metadata__") continue;
    ASSIGN_OR_RETURN(SafetensorsTensorInfo t,
                     ReadTensorEntry(name, *JsonFind(*header, name), data_.size()));
    tensors_.push_back(std::move(t));
  }
  RETURN_IF_ERROR(CheckNoOverlap(tensors_));
  for (size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
  return absl::OkStatus();
}

const SafetensorsTensorInfo* SafetensorsFile::Find(std::string_view name) const {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

absl::Status SafetensorsFile::ToF32(const SafetensorsTensorInfo& t, std::span<float> dst) const {
  const std::span<const uint8_t> src = data_.subspan(t.begin, t.end - t.begin);
  GgmlType type;
  if (t.dtype == "F32") {
    type = GgmlType::kF32;
  } else if (t.dtype == "F16") {
    type = GgmlType::kF16;
  } else if (t.dtype == "BF16") {
    type = GgmlType::kBF16;
  } else {
    return absl::UnimplementedError(absl::StrCat("safetensors: tensor '", t.name, "' has dtype ",
                                                 t.dtype, "; F32, F16 and BF16 are supported"));
  }
  // Rows of the last dimension (the types are element-wise, any split works).
  const int64_t n = t.numel();
  const int64_t cols = t.shape.empty() ? 1 : t.shape.back();
  const int64_t rows = cols == 0 ? 0 : n / cols;
  return DequantizeRows(static_cast<uint32_t>(type), src, rows, cols, dst);
}

std::optional<std::string> CanonicalTensorName(const std::string& hf) {
  static const std::map<std::string, std::string> kGlobal = {
      {"model.embed_tokens.weight", "token_embd.weight"},
      {"model.norm.weight", "output_norm.weight"},
      {"lm_head.weight", "output.weight"},
  };
  static const std::map<std::string, std::string> kLayer = {
      {"input_layernorm.weight", "attn_norm.weight"},
      {"self_attn.q_proj.weight", "attn_q.weight"},
      {"self_attn.k_proj.weight", "attn_k.weight"},
      {"self_attn.v_proj.weight", "attn_v.weight"},
      {"self_attn.q_proj.bias", "attn_q.bias"},
      {"self_attn.k_proj.bias", "attn_k.bias"},
      {"self_attn.v_proj.bias", "attn_v.bias"},
      {"self_attn.o_proj.weight", "attn_output.weight"},
      {"post_attention_layernorm.weight", "ffn_norm.weight"},
      {"mlp.gate_proj.weight", "ffn_gate.weight"},
      {"mlp.up_proj.weight", "ffn_up.weight"},
      {"mlp.down_proj.weight", "ffn_down.weight"},
  };
  if (auto it = kGlobal.find(hf); it != kGlobal.end()) return it->second;
  const std::string prefix = "model.layers.";
  if (hf.rfind(prefix, 0) != 0) return std::nullopt;
  const size_t dot = hf.find('.', prefix.size());
  if (dot == std::string::npos) return std::nullopt;
  const std::string num = hf.substr(prefix.size(), dot - prefix.size());
  int layer;
  if (num.empty() || num.size() > 6 || !std::all_of(num.begin(), num.end(), ::isdigit) ||
      (num.size() > 1 && num[0] == '0') || !absl::SimpleAtoi(num, &layer)) {
    return std::nullopt;
  }
  auto it = kLayer.find(hf.substr(dot + 1));
  if (it == kLayer.end()) return std::nullopt;
  return absl::StrCat("blk.", layer, ".", it->second);
}

}  // namespace longctx
