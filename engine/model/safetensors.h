// The safetensors weight format of Hugging Face models, and the mapping of
// Hugging Face tensor names to canonical GGUF names.
//
// Layout: u64 little-endian header length N, an N-byte JSON header
// {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": ...},
// then the data; offsets are relative to byte 8 + N. Files are memory-mapped
// read-only and converted to f32 straight from the mapping. Every offset,
// shape and size is checked against the file before use.
//
// Thread safety: SafetensorsFile is immutable after parsing.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"

namespace longctx {

class MappedFile;

struct SafetensorsTensorInfo {
  std::string name;
  std::string dtype;           // "F32", "F16", "BF16", ... as written
  std::vector<int64_t> shape;  // outermost first
  uint64_t begin = 0;          // byte range within the data section
  uint64_t end = 0;
  int64_t numel() const;
};

class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  // REQUIRES: `bytes` outlives the result.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Parse(std::span<const uint8_t> bytes);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::vector<SafetensorsTensorInfo>& tensors() const { return tensors_; }
  const SafetensorsTensorInfo* Find(std::string_view name) const;
  // Converts an F32, F16 or BF16 tensor to f32; Unimplemented for other dtypes.
  // REQUIRES: dst.size() == t.numel().
  absl::Status ToF32(const SafetensorsTensorInfo& t, std::span<float> dst) const;

 private:
  SafetensorsFile() = default;
  absl::Status ParseAll();

  std::unique_ptr<MappedFile> file_;
  std::span<const uint8_t> bytes_;
  std::span<const uint8_t> data_;
  std::vector<SafetensorsTensorInfo> tensors_;
  absl::flat_hash_map<std::string, size_t> index_;
};

// The canonical GGUF name of a Hugging Face Llama/Qwen2 tensor name
// ("model.layers.3.self_attn.q_proj.weight" -> "blk.3.attn_q.weight"), or
// nullopt when the name is not one of the model's weights.
std::optional<std::string> CanonicalTensorName(const std::string& hf_name);

// True for the dtypes ToF32 converts (F32, F16, BF16).
bool SafetensorsDtypeConvertible(const std::string& dtype);

}  // namespace longctx
