// Per-session configuration of the Infini-attention window and compressive
// memory (docs/design.md §4). Plain data, validated in one place.
//
// Window semantics. With DCA chunk length L and window W (a multiple of L),
// query i sees the keys of the attention sinks (j < sink_tokens) and of the W/L
// most recent chunks counting its own: j ≥ window_start(i) with
//   window_start(i) = max(0, (⌊i/L⌋ − W/L + 1) · L).
// Keys sink_tokens ≤ j < window_start(i) have left the window: under kCompress
// they were folded into the memory when their chunk left, under kSlide they were
// dropped; under kReject a step that would make any key leave fails with
// RESOURCE_EXHAUSTED. Chunks leave only when the first token of a later chunk
// arrives, and a step never crosses a chunk boundary (InfiniWindow splits
// steps), so all queries of a step share one window, the memory they read holds
// exactly the keys outside it, and a token is never both in the window and in
// the memory. A step's own tokens are folded only after it (read before update).
#pragma once

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/ops.h"

namespace longctx {

enum class InfiniOverflow { kReject, kCompress, kSlide };

struct InfiniConfig {
  // W, tokens of exact KV besides the sinks: a positive multiple of the DCA
  // chunk length. 0 (default) = no window: every token keeps its KV (full DCA)
  // and the memory stays empty.
  int window_tokens = 0;
  // Attention sinks: the first tokens keep their KV for the session's life.
  // A multiple of the KV block size (their blocks are never freed). Default 0.
  int sink_tokens = 0;
  // What happens to a chunk that leaves the window. Default kCompress.
  InfiniOverflow overflow = InfiniOverflow::kCompress;
  // Memory update rule. Default kLinear (M += σ(K)ᵀV).
  cpu::InfiniUpdateRule update = cpu::InfiniUpdateRule::kLinear;
  // Mix the memory into the attention output through the model's gates β.
  // Default off: without trained gates the memory is kept and exported, not
  // mixed (docs/design.md §4). Turning it on for a model without gates is an error.
  bool mix = false;
  // Floor of the retrieval and delta-rule denominators σ(·)·z. Default 1e-6.
  float eps = 1e-6f;

  bool windowed() const { return window_tokens > 0; }
  // Checks the fields against the session's DCA settings and the KV block size.
  // INVALID_ARGUMENT naming the field on failure.
  absl::Status Validate(const cpu::DcaParams& dca, int block_size) const;
};

absl::StatusOr<InfiniOverflow> ParseInfiniOverflow(std::string_view s);  // reject|compress|slide
absl::StatusOr<cpu::InfiniUpdateRule> ParseInfiniUpdateRule(std::string_view s);  // linear|delta
std::string InfiniOverflowName(InfiniOverflow o);
std::string InfiniUpdateRuleName(cpu::InfiniUpdateRule r);

}  // namespace longctx
