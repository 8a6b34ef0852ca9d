// A small strict JSON (RFC 8259) reader for model files: config.json,
// tokenizer.json and safetensors headers. Errors name the byte offset; nesting
// is bounded so hostile input cannot exhaust the stack.
//
// Thread safety: values are plain data.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace longctx {

class JsonValue {
 public:
  enum class Kind { kNull, kBool, kNumber, kString, kArray, kObject };

  Kind kind() const { return kind_; }
  bool is_null() const { return kind_ == Kind::kNull; }
  bool is_bool() const { return kind_ == Kind::kBool; }
  bool is_number() const { return kind_ == Kind::kNumber; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_array() const { return kind_ == Kind::kArray; }
  bool is_object() const { return kind_ == Kind::kObject; }
  // True for a number written without fraction or exponent that fits int64.
  bool is_int() const { return kind_ == Kind::kNumber && is_int_; }

  bool bool_value() const { return bool_; }
  double number() const { return number_; }
  int64_t int_value() const { return int_; }  // REQUIRES: is_int()
  const std::string& str() const { return str_; }
  const std::vector<JsonValue>& items() const { return items_; }
  // Object members in document order (duplicate keys are rejected).
  const std::vector<std::pair<std::string, JsonValue>>& members() const { return members_; }
  // Member `key` of an object, or nullptr (also for non-objects).
  const JsonValue* Find(std::string_view key) const;

  // "null", "bool", ... for error messages.
  static const char* KindName(Kind k);

 private:
  friend class JsonParser;
  Kind kind_ = Kind::kNull;
  bool bool_ = false;
  bool is_int_ = false;
  double number_ = 0;
  int64_t int_ = 0;
  std::string str_;
  std::vector<JsonValue> items_;
  std::vector<std::pair<std::string, JsonValue>> members_;
};

// Parses one JSON document (surrounding whitespace allowed). Strings are
// returned as UTF-8 (\u escapes and surrogate pairs decoded); invalid UTF-8,
// lone surrogates, control characters and trailing bytes are errors.
// A parsed value takes far more memory than its shortest text ("0,"), so the
// number of values is capped: the default (8M) holds the largest published
// tokenizer.json files several times over and bounds memory near 1 GB.
absl::StatusOr<JsonValue> ParseJson(std::string_view text, int max_depth = 128,
                                    int64_t max_values = int64_t{1} << 23);

}  // namespace longctx
