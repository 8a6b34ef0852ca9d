// Helpers shared by the tokenizer and chat template tests: a small JSON reader
// for the fixtures under tests/fixtures/tokenizer/ (written by
// tools/gen_tokenizer_golden.py) and the default model's vocabulary.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "engine/model/host_weights.h"
#include "engine/tokenizer/unicode.h"
#include "engine/tokenizer/vocab.h"
#include "gtest/gtest.h"

namespace longctx::testing {

// A parsed JSON value (objects keep keys sorted; numbers are doubles).
struct Json {
  enum Kind { kNull, kBool, kNumber, kString, kArray, kObject };
  Kind kind = kNull;
  bool boolean = false;
  double number = 0;
  std::string str;
  std::vector<Json> items;
  std::map<std::string, Json> fields;

  const Json& operator[](const std::string& key) const {
    static const Json kNullValue;
    const auto it = fields.find(key);
    return it == fields.end() ? kNullValue : it->second;
  }
  bool Has(const std::string& key) const { return fields.count(key) > 0; }
  std::vector<int32_t> Ints() const {
    std::vector<int32_t> out;
    for (const Json& j : items) out.push_back(static_cast<int32_t>(j.number));
    return out;
  }
  std::vector<std::string> Strings() const {
    std::vector<std::string> out;
    for (const Json& j : items) out.push_back(j.str);
    return out;
  }
};

class JsonReader {
 public:
  static absl::StatusOr<Json> Parse(const std::string& text) {
    JsonReader r(text);
    Json v;
    if (!r.Value(&v)) return absl::InvalidArgumentError(absl::StrCat("bad JSON at ", r.pos_));
    r.Space();
    if (r.pos_ != text.size()) return absl::InvalidArgumentError("trailing bytes after JSON");
    return v;
  }

 private:
  explicit JsonReader(const std::string& s) : s_(s) {}

  void Space() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\t' || s_[pos_] == '\r')) {
      ++pos_;
    }
  }
  bool Literal(const char* word) {
    const std::string w(word);
    if (s_.compare(pos_, w.size(), w) != 0) return false;
    pos_ += w.size();
    return true;
  }
  bool Hex4(uint32_t* v) {
    if (pos_ + 4 > s_.size()) return false;
    *v = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = s_[pos_++];
      *v <<= 4;
      if (c >= '0' && c <= '9') {
        *v |= c - '0';
      } else if (c >= 'a' && c <= 'f') {
        *v |= c - 'a' + 10;
      } else if (c >= 'A' && c <= 'F') {
        *v |= c - 'A' + 10;
      } else {
        return false;
      }
    }
    return true;
  }
  bool String(std::string* out) {
    if (s_[pos_] != '"') return false;
    ++pos_;
    while (pos_ < s_.size() && s_[pos_] != '"') {
      char c = s_[pos_++];
      if (c != '\\') {
        out->push_back(c);
        continue;
      }
      if (pos_ >= s_.size()) return false;
      c = s_[pos_++];
      switch (c) {
        case 'n':
          out->push_back('\n');
          break;
        case 't':
          out->push_back('\t');
          break;
        case 'r':
          out->push_back('\r');
          break;
        case 'b':
          out->push_back('\b');
          break;
        case 'f':
          out->push_back('\f');
          break;
        case 'u': {
          uint32_t cp;
          if (!Hex4(&cp)) return false;
          if (cp >= 0xD800 && cp < 0xDC00) {  // surrogate pair
            uint32_t lo;
            if (!Literal("\\u") || !Hex4(&lo)) return false;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          AppendUtf8(cp, out);
          break;
        }
        default:
          out->push_back(c);
      }
    }
    if (pos_ >= s_.size()) return false;
    ++pos_;
    return true;
  }
  bool Value(Json* v) {
    Space();
    if (pos_ >= s_.size()) return false;
    const char c = s_[pos_];
    if (c == '{') {
      v->kind = Json::kObject;
      ++pos_;
      Space();
      if (pos_ < s_.size() && s_[pos_] == '}') return ++pos_, true;
      while (true) {
        Space();
        std::string key;
        if (!String(&key)) return false;
        Space();
        if (pos_ >= s_.size() || s_[pos_++] != ':') return false;
        if (!Value(&v->fields[key])) return false;
        Space();
        if (pos_ >= s_.size()) return false;
        if (s_[pos_] == ',') {
          ++pos_;
          continue;
        }
        if (s_[pos_] == '}') return ++pos_, true;
        return false;
      }
    }
    if (c == '[') {
      v->kind = Json::kArray;
      ++pos_;
      Space();
      if (pos_ < s_.size() && s_[pos_] == ']') return ++pos_, true;
      while (true) {
        v->items.emplace_back();
        if (!Value(&v->items.back())) return false;
        Space();
        if (pos_ >= s_.size()) return false;
        if (s_[pos_] == ',') {
          ++pos_;
          continue;
        }
        if (s_[pos_] == ']') return ++pos_, true;
        return false;
      }
    }
    if (c == '"') {
      v->kind = Json::kString;
      return String(&v->str);
    }
    if (Literal("true")) {
      v->kind = Json::kBool;
      v->boolean = true;
      return true;
    }
    if (Literal("false")) {
      v->kind = Json::kBool;
      return true;
    }
    if (Literal("null")) return true;
    const size_t start = pos_;
    while (pos_ < s_.size() && std::string("+-.0123456789eE").find(s_[pos_]) != std::string::npos) {
      ++pos_;
    }
    v->kind = Json::kNumber;
    return pos_ > start && absl::SimpleAtod(s_.substr(start, pos_ - start), &v->number);
  }

  const std::string& s_;
  size_t pos_ = 0;
};

inline absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline absl::StatusOr<Json> ReadFixture(const std::string& name) {
  auto text = ReadFile(absl::StrCat(LONGCTX_SOURCE_DIR, "/tests/fixtures/tokenizer/", name));
  if (!text.ok()) return text.status();
  return JsonReader::Parse(*text);
}

// The default model's vocabulary (LoadHostModel on $LONGCTX_MODEL), read once
// per process. Null when LONGCTX_MODEL is unset: callers skip.
inline const VocabData* ModelVocab() {
  static const VocabData* const vocab = []() -> const VocabData* {
    const char* path = std::getenv("LONGCTX_MODEL");
    if (path == nullptr) return nullptr;
    absl::StatusOr<HostModel> model = LoadHostModel(path);
    if (!model.ok()) {
      ADD_FAILURE() << "LoadHostModel(" << path << "): " << model.status();
      return nullptr;
    }
    return new VocabData(std::move(model->vocab));
  }();
  return vocab;
}

}  // namespace longctx::testing
