#include "engine/backend/cpu_options.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "engine/util/status_macros.h"

namespace longctx {

absl::Status CpuBackendOptions::Validate() const {
  if (!cpu::CpuIsaSupported(isa)) {
    return absl::InvalidArgumentError(
        absl::StrCat("cpu backend: this CPU cannot run the ", cpu::CpuIsaName(isa), " kernels"));
  }
  return absl::OkStatus();
}

absl::StatusOr<CpuBackendOptions> ParseCpuBackendOptions(std::string_view weights,
                                                         std::string_view isa) {
  CpuBackendOptions o;
  if (weights == "quantized" || weights == "f32") {
    o.quantized_weights = weights == "quantized";
  } else {
    return absl::InvalidArgumentError(absl::StrCat("cpu weights: unknown '", std::string(weights),
                                                   "' (want quantized or f32)"));
  }
  bool found = false;
  for (cpu::CpuIsa i : {cpu::CpuIsa::kAuto, cpu::CpuIsa::kAvx512, cpu::CpuIsa::kAvx2,
                        cpu::CpuIsa::kScalar}) {
    if (isa == cpu::CpuIsaName(i)) {
      o.isa = i;
      found = true;
    }
  }
  if (!found) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cpu isa: unknown '", std::string(isa), "' (want auto, avx512, avx2 or scalar)"));
  }
  RETURN_IF_ERROR(o.Validate());
  return o;
}

}  // namespace longctx
