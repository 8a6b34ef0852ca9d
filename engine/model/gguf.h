// GGUF v2/v3 reader: header, metadata (every value type, arrays nested or not),
// tensor infos and the aligned data section.
//
// The file is memory-mapped read-only; metadata strings and numeric arrays are
// views into the mapping, and tensors are dequantized straight from it. Every
// count, length, shape and offset is checked against the bytes actually present
// before anything is reserved, so a hostile file yields a Status naming the
// problem, never a crash or an allocation the file size cannot justify.
//
// Thread safety: immutable after parsing; const methods may run concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/model/dequant.h"

namespace longctx {

class MappedFile;

enum class GgufType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

const char* GgufTypeName(GgufType t);

// One metadata value. Views point into the file bytes owned by the GgufFile.
struct GgufValue {
  GgufType type = GgufType::kUint8;
  // Scalars: integers and bool in `bits` (sign-extended for signed types),
  // floats in `f64`, strings in `str`.
  uint64_t bits = 0;
  double f64 = 0;
  std::string_view str;
  // Arrays: element type and count; numeric elements packed little-endian in
  // `raw`, string elements in `strings`, nested arrays in `items`.
  GgufType elem_type = GgufType::kUint8;
  uint64_t count = 0;
  std::span<const uint8_t> raw;
  std::vector<std::string_view> strings;
  std::vector<GgufValue> items;
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> ne;  // GGUF order: ne[0] is the contiguous dimension
  uint32_t type = 0;        // ggml type id (GgmlType)
  uint64_t offset = 0;      // from the start of the data section
  int64_t n_elements = 0;
  int64_t n_bytes = 0;

  // Outermost dimension first: [ne[1], ne[0]] for a matrix (rows, cols).
  std::vector<int64_t> Shape() const;
  int64_t cols() const { return ne[0]; }
  int64_t rows() const { return n_elements / ne[0]; }
};

class GgufFile {
 public:
  // Maps `path` read-only and parses it.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);
  // Parses bytes held in memory. REQUIRES: `bytes` outlives the result.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Parse(std::span<const uint8_t> bytes);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }

  // Metadata in file order.
  const std::vector<std::pair<std::string_view, GgufValue>>& metadata() const { return kv_; }
  const GgufValue* Find(std::string_view key) const;

  // Typed getters: NotFound when the key is absent, InvalidArgument when the
  // value has another type (or an integer out of range).
  absl::StatusOr<int64_t> GetInt(std::string_view key) const;   // any integer type
  absl::StatusOr<double> GetFloat(std::string_view key) const;  // f32 or f64
  absl::StatusOr<bool> GetBool(std::string_view key) const;
  absl::StatusOr<std::string> GetString(std::string_view key) const;
  absl::StatusOr<std::vector<std::string>> GetStringArray(std::string_view key) const;
  absl::StatusOr<std::vector<float>> GetFloatArray(std::string_view key) const;
  absl::StatusOr<std::vector<int64_t>> GetIntArray(std::string_view key) const;

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* FindTensor(std::string_view name) const;
  // The tensor's bytes (bounds were checked while parsing).
  std::span<const uint8_t> TensorData(const GgufTensorInfo& t) const;
  // Dequantizes to f32 [rows, cols]; `row_map` as in DequantizeRows.
  absl::Status Dequantize(const GgufTensorInfo& t, std::span<float> dst,
                          std::span<const int64_t> row_map = {}) const;

 private:
  GgufFile() = default;
  absl::Status ParseAll();
  absl::StatusOr<const GgufValue*> FindTyped(std::string_view key) const;

  std::unique_ptr<MappedFile> file_;  // null for Parse()
  std::span<const uint8_t> bytes_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string_view, GgufValue>> kv_;
  absl::flat_hash_map<std::string_view, size_t> kv_index_;
  std::vector<GgufTensorInfo> tensors_;
  absl::flat_hash_map<std::string_view, size_t> tensor_index_;
};

}  // namespace longctx
