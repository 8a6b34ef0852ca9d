#include "engine/conversation/stop_matcher.h"

#include <algorithm>
#include <utility>

namespace longctx {

StopMatcher::StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {}

StopMatcher::Result StopMatcher::Push(absl::string_view text) {
  Result r;
  held_.append(text.data(), text.size());
  if (stops_.empty()) {
    r.emit.swap(held_);
    return r;
  }
  size_t best = std::string::npos;
  for (const std::string& s : stops_) {
    const size_t at = held_.find(s);
    if (at < best) {
      best = at;
      r.matched = s;
    }
  }
  if (best != std::string::npos) {
    r.emit = held_.substr(0, best);
    held_.clear();
    return r;
  }
  // Keep the longest tail that is a proper prefix of some stop string.
  size_t keep = 0;
  for (const std::string& s : stops_) {
    for (size_t n = std::min(s.size() - 1, held_.size()); n > keep; --n) {
      if (held_.compare(held_.size() - n, n, s, 0, n) == 0) {
        keep = n;
        break;
      }
    }
  }
  r.emit = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return r;
}

std::string StopMatcher::Flush() { return std::exchange(held_, std::string()); }

}  // namespace longctx
