// A safetensors reader limited to what a gate sidecar holds: a JSON header of
// {name: {dtype, shape, data_offsets}} and a little-endian data section.
#include "engine/model/infini_gates.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "engine/model/dequant.h"
#include "engine/model/mapped_file.h"
#include "engine/util/status_macros.h"

namespace longctx {
namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; add byte swaps for this host");

// Headers of gate files are a few KB; anything beyond this is not one.
constexpr uint64_t kMaxHeaderBytes = uint64_t{1} << 24;
constexpr int kMaxDepth = 8;

// The JSON subset of safetensors headers: objects, arrays, strings, integers
// (other scalars are parsed and kept as text).
struct Json {
  enum Kind { kObject, kArray, kString, kScalar } kind = kScalar;
  std::string text;         // string contents or scalar text
  std::vector<Json> items;  // array elements
  std::map<std::string, Json> members;
};

class JsonParser {
 public:
  explicit JsonParser(std::string_view s) : s_(s) {}

  absl::StatusOr<Json> ParseDocument() {
    Json v;
    RETURN_IF_ERROR(Parse(&v, 0));
    SkipSpace();
    if (pos_ != s_.size()) return Error("trailing bytes after the header object");
    return v;
  }

 private:
  absl::Status Error(const std::string& what) const {
    return absl::InvalidArgumentError(
        absl::StrCat("safetensors header: ", what, " at byte ", pos_));
  }
  void SkipSpace() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\r' || s_[pos_] == '\t')) {
      ++pos_;
    }
  }
  bool Eat(char c) {
    SkipSpace();
    if (pos_ < s_.size() && s_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }

  absl::Status ParseString(std::string* out) {
    if (!Eat('"')) return Error("expected a string");
    while (pos_ < s_.size() && s_[pos_] != '"') {
      char c = s_[pos_++];
      if (c == '\\') {
        if (pos_ >= s_.size()) break;
        const char e = s_[pos_++];
        switch (e) {
          case '"':
          case '\\':
          case '/':
            c = e;
            break;
          case 'b':
            c = '\b';
            break;
          case 'f':
            c = '\f';
            break;
          case 'n':
            c = '\n';
            break;
          case 'r':
            c = '\r';
            break;
          case 't':
            c = '\t';
            break;
          default:
            return Error("unsupported escape in a string");
        }
      }
      out->push_back(c);
    }
    if (!Eat('"')) return Error("unterminated string");
    return absl::OkStatus();
  }

  absl::Status Parse(Json* v, int depth) {
    if (depth > kMaxDepth) return Error("nesting too deep");
    SkipSpace();
    if (pos_ >= s_.size()) return Error("unexpected end");
    const char c = s_[pos_];
    if (c == '{') {
      ++pos_;
      v->kind = Json::kObject;
      if (Eat('}')) return absl::OkStatus();
      do {
        std::string key;
        RETURN_IF_ERROR(ParseString(&key));
        if (!Eat(':')) return Error("expected ':'");
        Json member;
        RETURN_IF_ERROR(Parse(&member, depth + 1));
        if (!v->members.emplace(std::move(key), std::move(member)).second) {
          return Error("duplicate key");
        }
      } while (Eat(','));
      if (!Eat('}')) return Error("expected '}'");
      return absl::OkStatus();
    }
    if (c == '[') {
      ++pos_;
      v->kind = Json::kArray;
      if (Eat(']')) return absl::OkStatus();
      do {
        v->items.emplace_back();
        RETURN_IF_ERROR(Parse(&v->items.back(), depth + 1));
      } while (Eat(','));
      if (!Eat(']')) return Error("expected ']'");
      return absl::OkStatus();
    }
    if (c == '"') {
      v->kind = Json::kString;
      return ParseString(&v->text);
    }
    const size_t start = pos_;
    while (pos_ < s_.size() && std::strchr("+-.0123456789eEtrufalsn", s_[pos_]) != nullptr) ++pos_;
    if (pos_ == start) return Error("unexpected character");
    v->kind = Json::kScalar;
    v->text = std::string(s_.substr(start, pos_ - start));
    return absl::OkStatus();
  }

  std::string_view s_;
  size_t pos_ = 0;
};

absl::StatusOr<int64_t> Integer(const Json& v, const std::string& what) {
  int64_t x;
  if (v.kind != Json::kScalar || !absl::SimpleAtoi(v.text, &x) || x < 0) {
    return absl::InvalidArgumentError(absl::StrCat("safetensors: ", what, " is not a count"));
  }
  return x;
}

// Layer index of a gate name `blk.N.infini_beta`, or -1.
int GateLayer(const std::string& name) {
  constexpr std::string_view kPrefix = "blk.", kSuffix = ".infini_beta";
  if (name.size() <= kPrefix.size() + kSuffix.size() || name.rfind(kPrefix, 0) != 0 ||
      name.compare(name.size() - kSuffix.size(), kSuffix.size(), kSuffix) != 0) {
    return -1;
  }
  int layer;
  const std::string digits =
      name.substr(kPrefix.size(), name.size() - kPrefix.size() - kSuffix.size());
  if (digits.empty() || digits.size() > 6 ||
      digits.find_first_not_of("0123456789") != std::string::npos ||
      !absl::SimpleAtoi(digits, &layer)) {
    return -1;
  }
  return layer;
}

}  // namespace

absl::Status LoadInfiniGateSidecar(const std::string& path, HostModel* host) {
  ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Open(path));
  const std::span<const uint8_t> bytes = file->bytes();
  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
  };
  uint64_t header_len;
  if (bytes.size() < sizeof(header_len)) return bad("too short for a safetensors file");
  std::memcpy(&header_len, bytes.data(), sizeof(header_len));
  if (header_len > kMaxHeaderBytes || header_len > bytes.size() - sizeof(header_len)) {
    return bad(absl::StrCat("header length ", header_len, " does not fit the file"));
  }
  const std::string_view header(reinterpret_cast<const char*>(bytes.data()) + sizeof(header_len),
                                static_cast<size_t>(header_len));
  const std::span<const uint8_t> data = bytes.subspan(sizeof(header_len) + header_len);
  absl::StatusOr<Json> doc = JsonParser(header).ParseDocument();
  if (!doc.ok()) return bad(std::string(doc.status().message()));
  if (doc->kind != Json::kObject) return bad("header is not an object");

  const ModelConfig& c = host->config;
  std::map<std::string, HostTensor> gates;
  for (const auto& [name, t] : doc->members) {
    if (name == "__metadata__") continue;
    const int layer = GateLayer(name);
    if (layer < 0 || layer >= c.n_layers) {
      return bad(absl::StrCat("tensor '", name, "' is not an Infini gate of this ", c.n_layers,
                              "-layer model (want blk.N.infini_beta)"));
    }
    auto dtype = t.members.find("dtype");
    auto shape = t.members.find("shape");
    auto offsets = t.members.find("data_offsets");
    if (t.kind != Json::kObject || dtype == t.members.end() || shape == t.members.end() ||
        offsets == t.members.end() || dtype->second.kind != Json::kString ||
        shape->second.kind != Json::kArray || offsets->second.kind != Json::kArray ||
        offsets->second.items.size() != 2) {
      return bad(absl::StrCat("tensor '", name, "' lacks dtype, shape or data_offsets"));
    }
    int64_t numel = 1;
    std::vector<int64_t> dims;
    for (const Json& d : shape->second.items) {
      ASSIGN_OR_RETURN(const int64_t n, Integer(d, name + " shape"));
      if (n > (int64_t{1} << 20)) return bad(absl::StrCat("tensor '", name, "' is too large"));
      dims.push_back(n);
      numel *= n;
    }
    if (numel != c.n_heads) {
      return bad(absl::StrCat("tensor '", name, "' has ", numel, " elements, want one per q head (",
                              c.n_heads, ")"));
    }
    const std::string& type = dtype->second.text;
    const int64_t width = type == "F32" ? 4 : (type == "F16" || type == "BF16") ? 2 : 0;
    if (width == 0) return bad(absl::StrCat("tensor '", name, "' has unsupported dtype ", type));
    ASSIGN_OR_RETURN(const int64_t begin, Integer(offsets->second.items[0], name + " offset"));
    ASSIGN_OR_RETURN(const int64_t end, Integer(offsets->second.items[1], name + " offset"));
    if (end < begin || static_cast<uint64_t>(end) > data.size() || end - begin != numel * width) {
      return bad(absl::StrCat("tensor '", name, "' data [", begin, ", ", end,
                              ") does not match its shape or the file"));
    }
    HostTensor out;
    out.shape = dims;
    out.data.resize(static_cast<size_t>(numel));
    const uint8_t* src = data.data() + begin;
    for (int64_t i = 0; i < numel; ++i) {
      if (width == 4) {
        std::memcpy(&out.data[static_cast<size_t>(i)], src + 4 * i, 4);
      } else {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        out.data[static_cast<size_t>(i)] = type == "F16" ? HalfToFloat(h) : Bf16ToFloat(h);
      }
    }
    for (float b : out.data) {
      if (std::isnan(b)) return bad(absl::StrCat("tensor '", name, "' holds NaN"));
    }
    gates[name] = std::move(out);
  }
  if (gates.empty()) return bad("holds no Infini gates");
  for (auto& [name, t] : gates) host->tensors[name] = std::move(t);
  return absl::OkStatus();
}

}  // namespace longctx
