// Long-context evaluation on a loaded model: perplexity by context length and
// passkey retrieval by length × depth, each under a DCA configuration (plain RoPE
// is DcaMode::kRope). Used by tools/eval_main.cc; results are plain structs.
//
// Thread safety: runs on the caller's thread and owns the model while it runs.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/dca_config.h"
#include "engine/model/infini_config.h"
#include "engine/model/llama_model.h"
#include "engine/tokenizer/chat_template.h"
#include "engine/tokenizer/tokenizer.h"

namespace longctx {

// Perplexity protocol. Default: the text's tokens are cut into non-overlapping
// windows of `length` tokens from the start (at most `max_windows`); each window is
// one fresh sequence, prefilled in pieces of `piece` tokens; the loss is the mean
// negative log-likelihood of the tokens in the second half of each window given
// everything before them in that window; PPL = exp(mean over all scored tokens).
// Aligned (`PplProtocol::aligned_span` > 0): window w ends at (w + 1) * aligned_span
// for every length, and only its last `score_last` tokens are scored, so every
// length scores the very same tokens and differs only in how much context precedes
// them. `infini` (default: no window) runs each window as an Infini session
// (docs/design.md §4): exact KV for sinks + W tokens, older chunks folded or dropped.
struct PplProtocol {
  int aligned_span = 0;  // 0: default protocol; else ≥ every length evaluated
  int score_last = 0;    // aligned protocol: tokens scored at the end of each window
  // Keep every scored token's loss in PplResult::token_nll (for comparisons
  // with another implementation of the same forward, e.g. tools/train/).
  // Default off.
  bool keep_token_nll = false;
};
// The losses of one window, kept when PplProtocol::keep_token_nll is set.
struct PplWindowNll {
  int64_t first_token = 0;  // the window's first token, as an index into the text
  // Window-relative: nll[k] = −log p(token first_scored + k + 1 | tokens ≤
  // first_scored + k), nats, from the logits of position first_scored + k.
  int first_scored = 0;
  std::vector<double> nll;
};
struct PplResult {
  int length = 0;
  int windows = 0;
  int64_t scored_tokens = 0;
  double nll = 0;   // mean negative log-likelihood, nats
  double ppl = 0;
  double seconds = 0;
  std::vector<PplWindowNll> token_nll;  // one per window when kept, else empty
};

absl::StatusOr<PplResult> EvalPerplexity(LlamaModel& model, std::span<const int32_t> tokens,
                                         int length, int max_windows, const DcaConfig& dca,
                                         int piece, const PplProtocol& protocol = {},
                                         const InfiniConfig& infini = {});

// Passkey retrieval: filler text repeated to `length` tokens, the sentence
// "The pass key is NNNNN. Remember it. NNNNN is the pass key." inserted at `depth`
// (0 = start of the filler, 1 = end), then the question; greedy decoding of a few
// tokens must contain the key.
struct PasskeyPrompt {
  std::vector<int32_t> tokens;
  std::string key;
};

struct PasskeyOptions {
  bool chat = true;  // wrap as a user turn of the chat template, answer primed
  uint64_t seed = 0;
};

absl::StatusOr<PasskeyPrompt> BuildPasskeyPrompt(const Tokenizer& tokenizer,
                                                 const ChatTemplate* chat, int length,
                                                 double depth, uint64_t seed);

// Runs one prompt; returns the generated text (up to `max_new` tokens, greedy).
// `infini` as for EvalPerplexity.
absl::StatusOr<std::string> GreedyAnswer(LlamaModel& model, const Tokenizer& tokenizer,
                                         std::span<const int32_t> prompt, const DcaConfig& dca,
                                         int piece, int max_new, const InfiniConfig& infini = {});

}  // namespace longctx
