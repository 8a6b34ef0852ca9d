#include "engine/util/json.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "engine/util/utf8.h"

namespace longctx {

const JsonValue* JsonValue::Find(std::string_view key) const {
  for (const auto& [k, v] : members_) {
    if (k == key) return &v;
  }
  return nullptr;
}

const char* JsonValue::KindName(Kind k) {
  switch (k) {
    case Kind::kNull:
      return "null";
    case Kind::kBool:
      return "bool";
    case Kind::kNumber:
      return "number";
    case Kind::kString:
      return "string";
    case Kind::kArray:
      return "array";
    case Kind::kObject:
      return "object";
  }
  return "?";
}

class JsonParser {
 public:
  JsonParser(std::string_view text, int max_depth, int64_t max_values)
      : s_(text), max_depth_(max_depth), max_values_(max_values) {}

  absl::StatusOr<JsonValue> Document() {
    JsonValue v;
    SkipSpace();
    if (absl::Status st = Value(&v, 0); !st.ok()) return st;
    SkipSpace();
    if (pos_ != s_.size()) return Error("trailing characters after the document");
    return v;
  }

 private:
  absl::Status Error(std::string_view msg) const {
    return absl::InvalidArgumentError(
        absl::StrCat("JSON: ", absl::string_view(msg.data(), msg.size()), " at offset ", pos_));
  }

  void SkipSpace() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) {
      ++pos_;
    }
  }

  bool Consume(std::string_view lit) {
    if (s_.substr(pos_, lit.size()) != lit) return false;
    pos_ += lit.size();
    return true;
  }

  absl::Status Value(JsonValue* v, int depth) {
    if (pos_ >= s_.size()) return Error("unexpected end of input");
    if (++values_ > max_values_) return Error(absl::StrCat("more than ", max_values_, " values"));
    const char c = s_[pos_];
    if (c == '{' || c == '[') {
      if (depth >= max_depth_) return Error(absl::StrCat("nesting deeper than ", max_depth_));
      return c == '{' ? Object(v, depth + 1) : Array(v, depth + 1);
    }
    if (c == '"') {
      v->kind_ = JsonValue::Kind::kString;
      return String(&v->str_);
    }
    if (c == '-' || (c >= '0' && c <= '9')) return Number(v);
    if (Consume("true")) {
      v->kind_ = JsonValue::Kind::kBool;
      v->bool_ = true;
      return absl::OkStatus();
    }
    if (Consume("false")) {
      v->kind_ = JsonValue::Kind::kBool;
      return absl::OkStatus();
    }
    if (Consume("null")) return absl::OkStatus();
    return Error(absl::StrCat("unexpected character 0x",
                              absl::Hex(static_cast<unsigned char>(c), absl::kZeroPad2)));
  }

  absl::Status Object(JsonValue* v, int depth) {
    v->kind_ = JsonValue::Kind::kObject;
    ++pos_;  // '{'
    SkipSpace();
    if (pos_ < s_.size() && s_[pos_] == '}') {
      ++pos_;
      return absl::OkStatus();
    }
    while (true) {
      SkipSpace();
      if (pos_ >= s_.size() || s_[pos_] != '"') return Error("expected an object key");
      std::string key;
      if (absl::Status st = String(&key); !st.ok()) return st;
      SkipSpace();
      if (pos_ >= s_.size() || s_[pos_] != ':') return Error("expected ':'");
      ++pos_;
      SkipSpace();
      v->members_.emplace_back(std::move(key), JsonValue());
      if (absl::Status st = Value(&v->members_.back().second, depth); !st.ok()) return st;
      SkipSpace();
      if (pos_ < s_.size() && s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (pos_ < s_.size() && s_[pos_] == '}') {
        ++pos_;
        break;
      }
      return Error("expected ',' or '}'");
    }
    // Duplicate keys would make lookups ambiguous.
    std::vector<size_t> order(v->members_.size());
    std::iota(order.begin(), order.end(), size_t{0});
    std::sort(order.begin(), order.end(),
              [&](size_t a, size_t b) { return v->members_[a].first < v->members_[b].first; });
    for (size_t i = 1; i < order.size(); ++i) {
      if (v->members_[order[i]].first == v->members_[order[i - 1]].first) {
        return Error(absl::StrCat("duplicate key \"", v->members_[order[i]].first, "\""));
      }
    }
    return absl::OkStatus();
  }

  absl::Status Array(JsonValue* v, int depth) {
    v->kind_ = JsonValue::Kind::kArray;
    ++pos_;  // '['
    SkipSpace();
    if (pos_ < s_.size() && s_[pos_] == ']') {
      ++pos_;
      return absl::OkStatus();
    }
    while (true) {
      SkipSpace();
      v->items_.emplace_back();
      if (absl::Status st = Value(&v->items_.back(), depth); !st.ok()) return st;
      SkipSpace();
      if (pos_ < s_.size() && s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (pos_ < s_.size() && s_[pos_] == ']') {
        ++pos_;
        return absl::OkStatus();
      }
      return Error("expected ',' or ']'");
    }
  }

  absl::Status Number(JsonValue* v) {
    const size_t start = pos_;
    bool integral = true;
    if (s_[pos_] == '-') ++pos_;
    if (pos_ >= s_.size()) return Error("truncated number");
    if (s_[pos_] == '0') {
      ++pos_;
    } else if (s_[pos_] >= '1' && s_[pos_] <= '9') {
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
    } else {
      return Error("invalid number");
    }
    if (pos_ < s_.size() && s_[pos_] == '.') {
      integral = false;
      ++pos_;
      const size_t digits = pos_;
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
      if (pos_ == digits) return Error("invalid number fraction");
    }
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      integral = false;
      ++pos_;
      if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
      const size_t digits = pos_;
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
      if (pos_ == digits) return Error("invalid number exponent");
    }
    const char* b = s_.data() + start;
    const char* e = s_.data() + pos_;
    v->kind_ = JsonValue::Kind::kNumber;
    double d = 0;
    auto [p, ec] = std::from_chars(b, e, d);
    if (ec == std::errc::result_out_of_range) {
      // strtod saturates: +-HUGE_VAL on overflow, 0 on underflow.
      d = std::strtod(std::string(b, e).c_str(), nullptr);
    } else if (ec != std::errc() || p != e) {
      return Error("invalid number");
    }
    v->number_ = d;
    if (integral) {
      int64_t i = 0;
      auto [pi, eci] = std::from_chars(b, e, i);
      if (eci == std::errc() && pi == e) {
        v->is_int_ = true;
        v->int_ = i;
      }
    }
    return absl::OkStatus();
  }

  absl::StatusOr<uint32_t> Hex4() {
    if (s_.size() - pos_ < 4) return Error("truncated \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = s_[pos_++];
      v <<= 4;
      if (c >= '0' && c <= '9') {
        v |= static_cast<uint32_t>(c - '0');
      } else if (c >= 'a' && c <= 'f') {
        v |= static_cast<uint32_t>(c - 'a' + 10);
      } else if (c >= 'A' && c <= 'F') {
        v |= static_cast<uint32_t>(c - 'A' + 10);
      } else {
        return Error("invalid \\u escape");
      }
    }
    return v;
  }

  absl::Status String(std::string* out) {
    ++pos_;  // '"'
    while (true) {
      if (pos_ >= s_.size()) return Error("unterminated string");
      const auto c = static_cast<unsigned char>(s_[pos_]);
      if (c == '"') {
        ++pos_;
        return absl::OkStatus();
      }
      if (c < 0x20) return Error("control character in string");
      if (c != '\\') {
        const Utf8Prefix p = CheckUtf8Prefix(absl::string_view(s_.data() + pos_, s_.size() - pos_));
        if (p.kind != Utf8Prefix::kValid) return Error("invalid UTF-8 in string");
        const size_t n = p.length;
        out->append(s_.data() + pos_, n);
        pos_ += n;
        continue;
      }
      ++pos_;
      if (pos_ >= s_.size()) return Error("unterminated escape");
      const char e = s_[pos_++];
      switch (e) {
        case '"':
          out->push_back('"');
          break;
        case '\\':
          out->push_back('\\');
          break;
        case '/':
          out->push_back('/');
          break;
        case 'b':
          out->push_back('\b');
          break;
        case 'f':
          out->push_back('\f');
          break;
        case 'n':
          out->push_back('\n');
          break;
        case 'r':
          out->push_back('\r');
          break;
        case 't':
          out->push_back('\t');
          break;
        case 'u': {
          absl::StatusOr<uint32_t> cp = Hex4();
          if (!cp.ok()) return cp.status();
          if (*cp >= 0xDC00 && *cp <= 0xDFFF) return Error("lone low surrogate");
          if (*cp >= 0xD800 && *cp <= 0xDBFF) {
            if (!Consume("\\u")) return Error("lone high surrogate");
            absl::StatusOr<uint32_t> lo = Hex4();
            if (!lo.ok()) return lo.status();
            if (*lo < 0xDC00 || *lo > 0xDFFF) return Error("invalid surrogate pair");
            *cp = 0x10000 + ((*cp - 0xD800) << 10) + (*lo - 0xDC00);
          }
          AppendUtf8(*cp, out);
          break;
        }
        default:
          return Error("invalid escape");
      }
    }
  }

  std::string_view s_;
  size_t pos_ = 0;
  int max_depth_;
  int64_t max_values_;
  int64_t values_ = 0;
};

absl::StatusOr<JsonValue> ParseJson(std::string_view text, int max_depth, int64_t max_values) {
  return JsonParser(text, max_depth, max_values).Document();
}

}  // namespace longctx
