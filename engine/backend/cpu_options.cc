#include "engine/backend/cpu_options.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "engine/util/status_macros.h"

namespace longctx {

absl::Status CpuBackendOptions::Validate() const {
  if (kv_type != DType::kF16 && kv_type != DType::kF32) {
    return absl::InvalidArgumentError("cpu backend: the KV cache is f16 or f32");
  }
  if (!cpu::CpuIsaSupported(isa)) {
    return absl::InvalidArgumentError(
        absl::StrCat("cpu backend: this CPU cannot run the ", cpu::CpuIsaName(isa), " kernels"));
  }
  return absl::OkStatus();
}

absl::StatusOr<CpuBackendOptions> ParseCpuBackendOptions(std::string_view weights,
                                                         std::string_view isa,
                                                         std::string_view kv) {
  CpuBackendOptions o;
  if (kv == "f16" || kv == "f32") {
    o.kv_type = kv == "f16" ? DType::kF16 : DType::kF32;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("cpu kv: unknown '", std::string(kv), "' (want f16 or f32)"));
  }
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
