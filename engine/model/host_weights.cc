#include "engine/model/host_weights.h"

#include <filesystem>
#include <string_view>

#include "engine/model/gguf_model.h"
#include "engine/model/hf_model.h"
#include "engine/model/synthetic_model.h"

namespace longctx {

int64_t HostTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<HostModel> LoadHostModel(const std::string& path, const HostLoadOptions& options) {
  const std::string_view prefix = kSyntheticModelPrefix;
  if (path.starts_with(prefix)) return SyntheticHostModel(path.substr(prefix.size()));
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) return LoadSafetensorsModel(path);
  return LoadGgufModel(path, options);
}

}  // namespace longctx
