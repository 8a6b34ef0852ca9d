#include "engine/util/json_util.h"

#include <limits>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"

namespace longctx {
namespace {

using Event = nlohmann::json::parse_event_t;

// nlohmann's parser is iterative, but the limits still bound the memory a
// hostile document can claim. Duplicate keys are found here because the
// parsed object keeps only the last of them. After the first violation every
// event returns false, so the parser keeps nothing more and the parse ends at
// the end of the text (or at an earlier syntax error).
class LimitCheck {
 public:
  explicit LimitCheck(const JsonParseOptions& options) : options_(options) {}

  bool operator()(int depth, Event event, nlohmann::json& parsed) {
    if (!status_.ok()) return false;
    switch (event) {
      case Event::object_start:
      case Event::array_start:
        if (depth >= options_.max_depth) {
          return Fail(absl::StrCat("nesting deeper than ", options_.max_depth));
        }
        if (event == Event::object_start) open_objects_.emplace_back();
        return CountValue();
      case Event::value:
        return CountValue();
      case Event::key: {
        const std::string& key = parsed.get_ref<const std::string&>();
        if (!open_objects_.back().insert(key).second) {
          return Fail(absl::StrCat("duplicate key \"", key, "\""));
        }
        // Keys of the outermost object are reported at depth 1.
        if (options_.top_level_keys != nullptr && depth == 1) {
          options_.top_level_keys->push_back(key);
        }
        return true;
      }
      case Event::object_end:
        open_objects_.pop_back();
        return true;
      case Event::array_end:
        return true;
    }
    return true;
  }

  const absl::Status& status() const { return status_; }

 private:
  bool CountValue() {
    if (++values_ > options_.max_values) {
      return Fail(absl::StrCat("more than ", options_.max_values, " values"));
    }
    return true;
  }
  bool Fail(std::string what) {
    status_ = absl::InvalidArgumentError(absl::StrCat("JSON: ", what));
    return false;
  }

  const JsonParseOptions& options_;
  absl::Status status_;
  int64_t values_ = 0;
  std::vector<absl::flat_hash_set<std::string>> open_objects_;  // keys seen so far
};

// "JSON: <what> at offset N" from one of nlohmann's exceptions. Its text
// starts "[json.exception.<kind>.<id>] parse error at line L, column C: " and
// may end with the token read so far ("; last read: '...'"), which can be the
// whole of a long string: both are cut, and what is left is bounded.
absl::Status FromJsonException(const nlohmann::json::exception& e) {
  std::string_view what = e.what();
  if (const size_t bracket = what.find("] "); bracket != std::string_view::npos) {
    what.remove_prefix(bracket + 2);
  }
  if (what.rfind("parse error", 0) == 0) {
    if (const size_t colon = what.find(": "); colon != std::string_view::npos) {
      what.remove_prefix(colon + 2);
    }
  }
  what = what.substr(0, what.find("; last read:"));
  constexpr size_t kMaxMessage = 200;
  if (what.size() > kMaxMessage) what = what.substr(0, kMaxMessage);
  std::string message = absl::StrCat("JSON: ", absl::string_view(what.data(), what.size()));
  if (const auto* p = dynamic_cast<const nlohmann::json::parse_error*>(&e)) {
    // `byte` counts the bytes read up to and including the offending one.
    absl::StrAppend(&message, " at offset ", p->byte > 0 ? p->byte - 1 : 0);
  }
  return absl::InvalidArgumentError(message);
}

}  // namespace

absl::StatusOr<nlohmann::json> ParseJson(std::string_view text, const JsonParseOptions& options) {
  // nlohmann skips a UTF-8 byte-order mark; RFC 8259 text has none.
  if (text.size() >= 1 && static_cast<unsigned char>(text[0]) == 0xEF) {
    return absl::InvalidArgumentError("JSON: unexpected character 0xef at offset 0");
  }
  LimitCheck check(options);
  nlohmann::json value;
  try {
    value = nlohmann::json::parse(
        text.begin(), text.end(),
        [&check](int depth, Event event, nlohmann::json& parsed) {
          return check(depth, event, parsed);
        },
        /*allow_exceptions=*/true, /*ignore_comments=*/false);
  } catch (const nlohmann::json::exception& e) {
    if (!check.status().ok()) return check.status();  // the earlier error
    return FromJsonException(e);
  }
  if (!check.status().ok()) return check.status();
  return value;
}

const nlohmann::json* JsonFind(const nlohmann::json& v, std::string_view key) {
  if (!v.is_object()) return nullptr;
  const auto it = v.find(key);
  return it == v.end() ? nullptr : &*it;
}

std::optional<int64_t> JsonInt(const nlohmann::json& v) {
  if (v.is_number_unsigned()) {
    const auto u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return static_cast<int64_t>(u);
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  return std::nullopt;
}

std::string JsonStringOr(const nlohmann::json* v, std::string_view fallback) {
  return v != nullptr && v->is_string() ? v->get<std::string>() : std::string(fallback);
}

}  // namespace longctx
