// Per-session settings, as resolved at creation (no "use the default" values
// left): attention, window, prompt format, TTL, labels.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "absl/time/time.h"
#include "engine/model/dca_config.h"

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
  // Exact-attention window: the most tokens the session's context may hold.
  int64_t window_tokens = 0;
  int32_t sink_tokens = 0;
  OverflowPolicy overflow = OverflowPolicy::kReject;
};

}  // namespace longctx
