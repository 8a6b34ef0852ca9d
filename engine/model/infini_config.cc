#include "engine/model/infini_config.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace longctx {

absl::Status InfiniConfig::Validate(const cpu::DcaParams& dca, int block_size) const {
  if (window_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("infini.window_tokens must be ≥ 0, got ", window_tokens));
  }
  if (sink_tokens < 0 || block_size <= 0 || sink_tokens % block_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat("infini.sink_tokens ", sink_tokens,
                                                   " must be a non-negative multiple of the KV "
                                                   "block size ",
                                                   block_size));
  }
  if (!(eps > 0.f) || !std::isfinite(eps)) {
    return absl::InvalidArgumentError(absl::StrCat("infini.eps must be positive, got ", eps));
  }
  if (!windowed()) {
    if (mix) {
      return absl::InvalidArgumentError("infini.mix needs a window (infini.window_tokens > 0)");
    }
    return absl::OkStatus();
  }
  const int L = dca.chunk_len;
  if (L <= 0 || L >= cpu::kDcaUnbounded) {
    return absl::InvalidArgumentError(
        "infini.window_tokens needs DCA: the window is counted in chunks of chunk_len");
  }
  if (window_tokens % L != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "infini.window_tokens ", window_tokens, " must be a multiple of the DCA chunk length ", L));
  }
  if (mix && overflow != InfiniOverflow::kCompress) {
    return absl::InvalidArgumentError("infini.mix needs infini.overflow = compress");
  }
  return absl::OkStatus();
}

absl::StatusOr<InfiniOverflow> ParseInfiniOverflow(std::string_view s) {
  if (s == "reject") return InfiniOverflow::kReject;
  if (s == "compress") return InfiniOverflow::kCompress;
  if (s == "slide") return InfiniOverflow::kSlide;
  return absl::InvalidArgumentError(absl::StrCat(
      "infini.overflow: unknown policy '", std::string(s), "' (want reject, compress or slide)"));
}

absl::StatusOr<cpu::InfiniUpdateRule> ParseInfiniUpdateRule(std::string_view s) {
  if (s == "linear") return cpu::InfiniUpdateRule::kLinear;
  if (s == "delta") return cpu::InfiniUpdateRule::kDelta;
  return absl::InvalidArgumentError(
      absl::StrCat("infini.update: unknown rule '", std::string(s), "' (want linear or delta)"));
}

std::string InfiniOverflowName(InfiniOverflow o) {
  switch (o) {
    case InfiniOverflow::kReject:
      return "reject";
    case InfiniOverflow::kCompress:
      return "compress";
    case InfiniOverflow::kSlide:
      return "slide";
  }
  return "unknown";
}

std::string InfiniUpdateRuleName(cpu::InfiniUpdateRule r) {
  return r == cpu::InfiniUpdateRule::kDelta ? "delta" : "linear";
}

}  // namespace longctx
