// Tokenizer data as stored in a model file (GGUF tokenizer.ggml.* keys, or
// tokenizer.json for safetensors models). Plain data: no behaviour.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace longctx {

// GGUF token types (tokenizer.ggml.token_type).
enum class TokenType : int32_t {
  kUndefined = 0,
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

struct VocabData {
  std::string model;                 // "gpt2" (byte-level BPE) or "llama" (SentencePiece BPE)
  std::string pre;                   // pre-tokenizer: smollm, gpt2, llama-bpe, qwen2, default
  std::vector<std::string> tokens;   // id -> piece
  std::vector<float> scores;         // SentencePiece scores (may be empty for gpt2)
  std::vector<TokenType> types;      // id -> type (may be empty: all normal)
  std::vector<std::string> merges;   // "a b" merge rules in priority order (gpt2)
  int32_t bos_id = -1;
  int32_t eos_id = -1;
  int32_t unk_id = -1;
  int32_t pad_id = -1;
  bool add_bos = false;
  bool add_space_prefix = false;
  std::string chat_template;         // raw Jinja text, informational
};

}  // namespace longctx
