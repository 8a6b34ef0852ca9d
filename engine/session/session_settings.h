// Per-session settings, as resolved at creation (no "use the default" values
// left): attention, window, prompt format, TTL, labels.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "absl/time/time.h"
#include "engine/model/dca_config.h"
#include "engine/model/infini_config.h"

namespace longctx {

enum class PromptFormat {
  kChat,  // the model's chat template wraps the document and the questions
  kRaw,   // tokens exactly as ingested; prompts appended verbatim
};

enum class OverflowPolicy {
  kReject,    // ingest past the window fails with RESOURCE_EXHAUSTED
  kCompress,  // fold leaving chunks into the compressive memory
  kSlide,     // drop leaving chunks, keep the sink tokens
};

struct SessionSettings {
  std::map<std::string, std::string> labels;
  absl::Duration ttl = absl::Hours(1);  // idle time to expiry
  DcaConfig attention;                  // resolved and validated
  PromptFormat prompt_format = PromptFormat::kChat;
  std::string system_prompt;  // chat sessions; empty = the template's default
  // Exact-attention window. Under kReject: the most tokens the session's
  // context may hold. Under kCompress and kSlide: W of the Infini window
  // (docs/design.md §4), exact KV for the sinks and the W most recent tokens (a
  // multiple of the DCA chunk length); older chunks are folded or dropped.
  int64_t window_tokens = 0;
  int32_t sink_tokens = 0;  // kept for the session's life (compress, slide)
  OverflowPolicy overflow = OverflowPolicy::kReject;
  // The most tokens the session's token log may hold: window_tokens under
  // kReject, the server's max_windowed_session_tokens otherwise. Derived at
  // creation, not exported.
  int64_t max_tokens = 0;

  // Compress and slide sessions run under an InfiniWindow.
  bool windowed() const { return overflow != OverflowPolicy::kReject; }
  // The InfiniWindow settings of a windowed session; `mix` when the model has
  // gates and the policy is compress.
  InfiniConfig ToInfiniConfig(bool mix) const {
    InfiniConfig c;
    c.window_tokens = static_cast<int>(window_tokens);
    c.sink_tokens = sink_tokens;
    c.overflow =
        overflow == OverflowPolicy::kCompress ? InfiniOverflow::kCompress : InfiniOverflow::kSlide;
    c.mix = mix && overflow == OverflowPolicy::kCompress;
    return c;
  }
};

}  // namespace longctx
