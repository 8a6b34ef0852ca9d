// Stop strings over streamed text: text that might be the start of a stop
// string is held back until it is clear, so a client never sees any part of a
// stop string.
//
// Not thread-safe: one per generation.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace longctx {

class StopMatcher {
 public:
  // REQUIRES: every stop string non-empty.
  explicit StopMatcher(std::vector<std::string> stops);

  struct Result {
    std::string emit;                    // text safe to pass on now
    std::optional<std::string> matched;  // the stop string that ended the text
  };
  // Appends `text`. When a stop string completes, `emit` holds the text before
  // its earliest occurrence and nothing more may be pushed.
  Result Push(absl::string_view text);
  // The text held back, at the end of generation.
  std::string Flush();

 private:
  std::vector<std::string> stops_;
  std::string held_;
};

}  // namespace longctx
