#include "engine/tokenizer/unicode.h"

#include <algorithm>
#include <array>

namespace longctx {
namespace {

// ASCII is looked up directly; the binary search covers the rest.
constexpr std::array<CharClass, 128> MakeAsciiClasses() {
  std::array<CharClass, 128> t{};
  for (int c = 0; c < 128; ++c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
      t[c] = CharClass::kLetter;
    } else if (c >= '0' && c <= '9') {
      t[c] = CharClass::kNumber;
    } else if (c == ' ' || (c >= 0x09 && c <= 0x0D)) {
      t[c] = CharClass::kWhitespace;
    } else {
      t[c] = CharClass::kOther;
    }
  }
  return t;
}
constexpr std::array<CharClass, 128> kAsciiClasses = MakeAsciiClasses();

}  // namespace

CharClass ClassifyCodepoint(uint32_t cp) {
  if (cp < 128) return kAsciiClasses[cp];
  using unicode_internal::kCodepointRangeCount;
  using unicode_internal::kCodepointRanges;
  const auto* end = kCodepointRanges + kCodepointRangeCount;
  // First range whose last code point is >= cp.
  const auto* it = std::lower_bound(
      kCodepointRanges, end, cp,
      [](const unicode_internal::CodepointRange& r, uint32_t v) { return r.last < v; });
  if (it != end && it->first <= cp) return it->cls;
  return CharClass::kOther;
}

}  // namespace longctx
