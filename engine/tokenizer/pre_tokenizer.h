// Pre-tokenizers of byte-level BPE vocabularies: split text into the pieces
// that BPE merges never cross. Each is a hand-written matcher equivalent to the
// regular expression the model's Hugging Face tokenizer.json uses (llama.cpp
// carries the same patterns):
//
//   gpt2      's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//   smollm    every \p{N} code point isolated first (Digits(individual_digits)),
//             then the gpt2 pattern on each stretch between digits
//   llama-bpe (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
//             ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//   qwen2     as llama-bpe with \p{N} instead of \p{N}{1,3}
//
// Bytes that are not well-formed UTF-8 are single code points of class "other".
// Pure functions, thread-safe.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace longctx {

enum class PreTokenizerKind { kGpt2, kSmollm, kLlama3, kQwen2 };

// Maps a GGUF tokenizer.ggml.pre name (and the aliases llama.cpp treats the same
// way) to a splitter; InvalidArgument for names this project does not support.
absl::StatusOr<PreTokenizerKind> PreTokenizerFromName(absl::string_view name);

struct TextSpan {
  uint32_t begin;  // byte offsets into the text, [begin, end)
  uint32_t end;
};

// Appends the pre-tokens of `text` to *out, in order, covering every byte.
// REQUIRES: text.size() < 2^32.
void PreTokenize(PreTokenizerKind kind, absl::string_view text, std::vector<TextSpan>* out);

}  // namespace longctx
