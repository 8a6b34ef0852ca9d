#include "engine/model/infini_gates.h"

#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <string_view>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "engine/model/safetensors.h"
#include "engine/util/status_macros.h"

namespace longctx {
namespace {

// Layer index of a gate name `blk.N.infini_beta`, or -1.
int GateLayer(const std::string& name) {
  constexpr std::string_view kPrefix = "blk.", kSuffix = ".infini_beta";
  if (name.size() <= kPrefix.size() + kSuffix.size() || name.rfind(kPrefix, 0) != 0 ||
      name.compare(name.size() - kSuffix.size(), kSuffix.size(), kSuffix) != 0) {
    return -1;
  }
  const std::string digits =
      name.substr(kPrefix.size(), name.size() - kPrefix.size() - kSuffix.size());
  int layer;
  if (digits.empty() || digits.size() > 6 ||
      digits.find_first_not_of("0123456789") != std::string::npos ||
      !absl::SimpleAtoi(digits, &layer)) {
    return -1;
  }
  return layer;
}

bool HasGates(const HostModel& host) {
  for (const auto& [name, t] : host.tensors) {
    if (GateLayer(name) >= 0) return true;
  }
  return false;
}

}  // namespace

absl::Status LoadInfiniGateSidecar(const std::string& path, HostModel* host) {
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(path));
  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
  };
  const ModelConfig& c = host->config;
  std::map<std::string, HostTensor> gates;
  for (const SafetensorsTensorInfo& t : file->tensors()) {
    const int layer = GateLayer(t.name);
    if (layer < 0 || layer >= c.n_layers) {
      return bad(absl::StrCat("tensor '", t.name, "' is not an Infini gate of this ", c.n_layers,
                              "-layer model (want blk.N.infini_beta)"));
    }
    if (t.numel() != c.n_heads) {
      return bad(absl::StrCat("tensor '", t.name, "' has ", t.numel(),
                              " elements, want one per q head: ", c.n_heads));
    }
    if (t.dtype != "F32" && t.dtype != "F16" && t.dtype != "BF16") {
      return bad(absl::StrCat("tensor '", t.name, "' has unsupported dtype ", t.dtype));
    }
    HostTensor out;
    out.shape = t.shape;
    out.data.resize(static_cast<size_t>(t.numel()));
    RETURN_IF_ERROR(file->ToF32(t, out.data));
    for (float b : out.data) {
      if (std::isnan(b)) return bad(absl::StrCat("tensor '", t.name, "' holds NaN"));
    }
    gates[t.name] = std::move(out);
  }
  if (gates.empty()) return bad("holds no Infini gates");
  for (auto& [name, t] : gates) host->tensors[name] = std::move(t);
  return absl::OkStatus();
}

std::string DefaultInfiniGatesPath(const std::string& model_path) {
  std::error_code ec;
  if (std::filesystem::is_directory(model_path, ec)) {
    return (std::filesystem::path(model_path) / "infini_gates.safetensors").string();
  }
  std::string stem = model_path;
  if (stem.ends_with(".gguf")) stem.resize(stem.size() - 5);
  return stem + ".infini_gates.safetensors";
}

absl::StatusOr<std::string> ApplyInfiniGates(const std::string& setting,
                                             const std::string& model_path, HostModel* host) {
  if (setting == "none") {
    std::erase_if(host->tensors, [](const auto& kv) { return GateLayer(kv.first) >= 0; });
    return std::string();
  }
  std::string path = setting;
  if (setting == "auto") {
    path = DefaultInfiniGatesPath(model_path);
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec)) {
      return HasGates(*host) ? std::string("model") : std::string();
    }
  }
  RETURN_IF_ERROR(LoadInfiniGateSidecar(path, host));
  return path;
}

}  // namespace longctx
