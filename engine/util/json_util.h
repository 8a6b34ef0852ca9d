// Reading untrusted JSON (config.json, tokenizer.json, safetensors headers)
// with nlohmann::json: a parse that bounds nesting and the number of values and
// rejects duplicate keys, errors as Status, and the few typed lookups the model
// readers share.
//
// Thread safety: pure functions.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace longctx {

struct JsonParseOptions {
  // Containers nested deeper than this are an error (the outermost is depth 1).
  int max_depth = 128;
  // A parsed value takes far more memory than its shortest text ("0,"), so the
  // number of values (scalars, arrays and objects) is capped: the default (8M)
  // holds the largest published tokenizer.json files several times over and
  // bounds memory near 1 GB.
  int64_t max_values = int64_t{1} << 23;
  // When set, receives the top-level object's keys in document order
  // (nlohmann::json keeps object members sorted by key).
  std::vector<std::string>* top_level_keys = nullptr;
};

// Parses one strict RFC 8259 document (surrounding whitespace allowed; no
// byte-order mark, comments or trailing bytes). Strings must be valid UTF-8
// and \u escapes well-formed surrogate pairs; a duplicate key in an object is
// an error, as is a number beyond the range of a double. Errors are
// INVALID_ARGUMENT "JSON: <what> [at offset N]".
absl::StatusOr<nlohmann::json> ParseJson(std::string_view text,
                                         const JsonParseOptions& options = {});

// Member `key` of an object, or nullptr (also when `v` is no object).
const nlohmann::json* JsonFind(const nlohmann::json& v, std::string_view key);

// The value of a number written without fraction or exponent that fits
// int64; nullopt for anything else.
std::optional<int64_t> JsonInt(const nlohmann::json& v);

// The string `v` points to, or `fallback` when it is null or no string.
std::string JsonStringOr(const nlohmann::json* v, std::string_view fallback);

}  // namespace longctx
