// UTF-8 decoding, encoding and validation, by the rules of the Unicode standard.
// Pure functions, thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"

namespace longctx {

// Returned by DecodeUtf8 for a byte that does not start a well-formed sequence.
inline constexpr uint32_t kInvalidCodepoint = 0xFFFFFFFFu;

// Decodes the sequence starting at text[pos] (REQUIRES: pos < text.size()).
// Sets *cp and returns the sequence length; for an ill-formed or truncated
// sequence sets *cp = kInvalidCodepoint and returns 1, so that every byte of the
// input belongs to exactly one decoded unit.
size_t DecodeUtf8(absl::string_view text, size_t pos, uint32_t* cp);

// Appends the UTF-8 encoding of cp (REQUIRES: cp <= 0x10FFFF, not a surrogate).
void AppendUtf8(uint32_t cp, std::string* out);

// Result of checking the start of a byte string for one UTF-8 sequence, with the
// "maximal subpart" rule of Unicode (the rule of WHATWG decoders and of Rust's
// String::from_utf8_lossy, which Hugging Face decoders use).
struct Utf8Prefix {
  enum Kind { kValid, kInvalid, kIncomplete };
  Kind kind;
  size_t length;  // kValid: sequence length; kInvalid: bytes to replace by one
                  // U+FFFD; kIncomplete: bytes present (a well-formed prefix)
};
// REQUIRES: !bytes.empty().
Utf8Prefix CheckUtf8Prefix(absl::string_view bytes);

// Appends `bytes` to *out with every ill-formed subsequence replaced by U+FFFD.
// A well-formed but truncated sequence at the end is replaced as well.
void AppendUtf8Lossy(absl::string_view bytes, std::string* out);

}  // namespace longctx
