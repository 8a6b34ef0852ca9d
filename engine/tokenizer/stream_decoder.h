// Incremental detokenization for streaming generation: token ids go in one at
// a time, text comes out as soon as it is complete. A UTF-8 character split
// across tokens is held back until its last byte arrives, so every delta is
// valid UTF-8; bytes that can never form a character come out as U+FFFD.
// The concatenation of all deltas and Flush() equals Tokenizer::Decode of the
// same ids.
//
// Not thread-safe: one decoder per stream. The Tokenizer must outlive it.
#pragma once

#include <cstdint>
#include <string>

#include "engine/tokenizer/tokenizer.h"

namespace longctx {

class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer* tokenizer, bool skip_special = false);

  // Text completed by `id` (possibly empty). Ids out of range are ignored.
  std::string Feed(int32_t id);
  // Text still held back (an unfinished character, as U+FFFD); the decoder is
  // then ready for a new text.
  std::string Flush();
  // Bytes currently held back (0..3).
  size_t pending_bytes() const { return pending_.size(); }

 private:
  const Tokenizer* tokenizer_;
  bool skip_special_;
  bool strip_space_;  // the next text token may carry the encoder's space prefix
  std::string pending_;
};

}  // namespace longctx
