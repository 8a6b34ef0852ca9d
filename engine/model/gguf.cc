#include "engine/model/gguf.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/model/mapped_file.h"
#include "engine/util/status_macros.h"

namespace longctx {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" little-endian
constexpr uint64_t kMaxKeyLength = 65535;
constexpr uint64_t kMaxTensorNameLength = 256;
constexpr uint32_t kMaxDims = 4;
constexpr int kMaxArrayDepth = 8;
// Smallest encodings, used to bound counts by the bytes left in the file.
constexpr uint64_t kMinKvBytes = 8 + 1 + 4 + 1;                  // key len, key, type, u8
constexpr uint64_t kMinTensorInfoBytes = 8 + 1 + 4 + 8 + 4 + 8;  // name, 1 dim, type, off

absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

uint64_t ScalarSize(GgufType t) {
  switch (t) {
    case GgufType::kUint8:
    case GgufType::kInt8:
    case GgufType::kBool:
      return 1;
    case GgufType::kUint16:
    case GgufType::kInt16:
      return 2;
    case GgufType::kUint32:
    case GgufType::kInt32:
    case GgufType::kFloat32:
      return 4;
    case GgufType::kUint64:
    case GgufType::kInt64:
    case GgufType::kFloat64:
      return 8;
    case GgufType::kString:
    case GgufType::kArray:
      return 0;
  }
  return 0;
}

bool IsInteger(GgufType t) {
  switch (t) {
    case GgufType::kUint8:
    case GgufType::kInt8:
    case GgufType::kUint16:
    case GgufType::kInt16:
    case GgufType::kUint32:
    case GgufType::kInt32:
    case GgufType::kUint64:
    case GgufType::kInt64:
      return true;
    default:
      return false;
  }
}

// Decodes one packed numeric element: integers (sign-extended) and bool into
// the returned bits; floats into *f.
uint64_t DecodeScalar(GgufType t, const uint8_t* p, double* f) {
  switch (t) {
    case GgufType::kUint8:
    case GgufType::kBool:
      return p[0];
    case GgufType::kInt8:
      return static_cast<uint64_t>(static_cast<int64_t>(static_cast<int8_t>(p[0])));
    case GgufType::kUint16: {
      uint16_t v;
      std::memcpy(&v, p, 2);
      return v;
    }
    case GgufType::kInt16: {
      int16_t v;
      std::memcpy(&v, p, 2);
      return static_cast<uint64_t>(static_cast<int64_t>(v));
    }
    case GgufType::kUint32: {
      uint32_t v;
      std::memcpy(&v, p, 4);
      return v;
    }
    case GgufType::kInt32: {
      int32_t v;
      std::memcpy(&v, p, 4);
      return static_cast<uint64_t>(static_cast<int64_t>(v));
    }
    case GgufType::kUint64:
    case GgufType::kInt64: {
      uint64_t v;
      std::memcpy(&v, p, 8);
      return v;
    }
    case GgufType::kFloat32: {
      float v;
      std::memcpy(&v, p, 4);
      *f = v;
      return 0;
    }
    case GgufType::kFloat64: {
      double v;
      std::memcpy(&v, p, 8);
      *f = v;
      return 0;
    }
    default:
      return 0;
  }
}

// Integer value of an integer-typed element, or InvalidArgument when an
// unsigned 64-bit value does not fit int64.
absl::StatusOr<int64_t> AsInt64(GgufType t, uint64_t bits, std::string_view what) {
  if (t == GgufType::kUint64 && bits > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return absl::InvalidArgumentError(
        absl::StrCat("GGUF: ", Sv(what), ": value ", bits, " out of range"));
  }
  return static_cast<int64_t>(bits);
}

// Bounds-checked little-endian reader over the file bytes. Errors name the
// current context (set by the parser) and the byte offset.
class Reader {
 public:
  explicit Reader(std::span<const uint8_t> bytes) : bytes_(bytes) {}

  void set_context(std::string ctx) { ctx_ = std::move(ctx); }
  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return bytes_.size() - pos_; }

  absl::Status Truncated(std::string_view what, uint64_t need) const {
    return absl::InvalidArgumentError(absl::StrCat("GGUF: truncated file: ", ctx_, ": ", Sv(what),
                                                   " needs ", need, " bytes at offset ", pos_,
                                                   ", only ", remaining(), " left"));
  }
  absl::Status Error(std::string_view msg) const {
    return absl::InvalidArgumentError(
        absl::StrCat("GGUF: ", ctx_, ": ", Sv(msg), " (at offset ", pos_, ")"));
  }

  absl::StatusOr<std::span<const uint8_t>> Bytes(uint64_t n, std::string_view what) {
    if (n > remaining()) return Truncated(what, n);
    auto s = bytes_.subspan(pos_, n);
    pos_ += n;
    return s;
  }

  template <typename T>
  absl::StatusOr<T> Read(std::string_view what) {
    if (sizeof(T) > remaining()) return Truncated(what, sizeof(T));
    T v;
    std::memcpy(&v, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  // A GGUF string: u64 length then bytes (not NUL-terminated).
  absl::StatusOr<std::string_view> String(std::string_view what, uint64_t max_len) {
    ASSIGN_OR_RETURN(const uint64_t len, Read<uint64_t>(absl::StrCat(Sv(what), " length")));
    if (len > max_len) {
      return Error(absl::StrCat(Sv(what), " length ", len, " exceeds the limit of ", max_len));
    }
    ASSIGN_OR_RETURN(auto b, Bytes(len, what));
    return std::string_view(reinterpret_cast<const char*>(b.data()), b.size());
  }

 private:
  std::span<const uint8_t> bytes_;
  uint64_t pos_ = 0;
  std::string ctx_ = "header";
};

absl::StatusOr<GgufType> ReadValueType(Reader& r, std::string_view what) {
  ASSIGN_OR_RETURN(const uint32_t t, r.Read<uint32_t>(what));
  if (t > static_cast<uint32_t>(GgufType::kFloat64)) {
    return r.Error(absl::StrCat("unknown metadata value type ", t));
  }
  return static_cast<GgufType>(t);
}

absl::Status ReadValue(Reader& r, GgufType type, int depth, GgufValue* out);

absl::Status ReadArray(Reader& r, int depth, GgufValue* out) {
  if (depth >= kMaxArrayDepth) {
    return r.Error(absl::StrCat("arrays nested deeper than ", kMaxArrayDepth));
  }
  ASSIGN_OR_RETURN(out->elem_type, ReadValueType(r, "array element type"));
  ASSIGN_OR_RETURN(out->count, r.Read<uint64_t>("array length"));
  const GgufType et = out->elem_type;
  const uint64_t min_elem = et == GgufType::kString  ? 8
                            : et == GgufType::kArray ? 12
                                                     : ScalarSize(et);
  if (out->count > r.remaining() / min_elem) {
    return r.Error(absl::StrCat("array of ", out->count, " ", GgufTypeName(et),
                                " elements exceeds the ", r.remaining(), " bytes left"));
  }
  if (et == GgufType::kString) {
    out->strings.reserve(out->count);
    for (uint64_t i = 0; i < out->count; ++i) {
      ASSIGN_OR_RETURN(auto s, r.String("array string", std::numeric_limits<uint64_t>::max()));
      out->strings.push_back(s);
    }
  } else if (et == GgufType::kArray) {
    // Grown as elements parse (not reserved): a GgufValue is larger than the
    // 12 bytes an empty nested array takes in the file.
    for (uint64_t i = 0; i < out->count; ++i) {
      out->items.emplace_back().type = GgufType::kArray;
      RETURN_IF_ERROR(ReadArray(r, depth + 1, &out->items.back()));
    }
  } else {
    ASSIGN_OR_RETURN(out->raw, r.Bytes(out->count * min_elem, "array data"));
  }
  return absl::OkStatus();
}

absl::Status ReadValue(Reader& r, GgufType type, int depth, GgufValue* out) {
  out->type = type;
  if (type == GgufType::kString) {
    ASSIGN_OR_RETURN(out->str, r.String("string value", std::numeric_limits<uint64_t>::max()));
    return absl::OkStatus();
  }
  if (type == GgufType::kArray) return ReadArray(r, depth, out);
  ASSIGN_OR_RETURN(auto b, r.Bytes(ScalarSize(type), "value"));
  out->bits = DecodeScalar(type, b.data(), &out->f64);
  if (type == GgufType::kBool && out->bits > 1) {
    return r.Error(absl::StrCat("bool value ", out->bits, " is neither 0 nor 1"));
  }
  return absl::OkStatus();
}

// Magic, version and the two counts, each count bounded by what the bytes
// left could hold.
struct HeaderCounts {
  uint64_t n_tensors = 0;
  uint64_t n_kv = 0;
};

absl::StatusOr<HeaderCounts> ReadHeader(Reader& r, uint32_t* version) {
  ASSIGN_OR_RETURN(const uint32_t magic, r.Read<uint32_t>("magic"));
  if (magic != kMagic) {
    return absl::InvalidArgumentError(absl::StrCat(
        "GGUF: bad magic 0x", absl::Hex(magic, absl::kZeroPad8), " (not a GGUF file)"));
  }
  ASSIGN_OR_RETURN(*version, r.Read<uint32_t>("version"));
  if (*version != 2 && *version != 3) {
    return absl::InvalidArgumentError(absl::StrCat(
        "GGUF: unsupported version ", *version,
        *version == 1 ? " (v1 files are obsolete)" : " (only versions 2 and 3 are read)"));
  }
  HeaderCounts c;
  ASSIGN_OR_RETURN(c.n_tensors, r.Read<uint64_t>("tensor count"));
  ASSIGN_OR_RETURN(c.n_kv, r.Read<uint64_t>("metadata count"));
  if (c.n_kv > r.remaining() / kMinKvBytes) {
    return r.Error(absl::StrCat("metadata count ", c.n_kv, " exceeds what the ", r.remaining(),
                                " bytes left can hold"));
  }
  if (c.n_tensors > r.remaining() / kMinTensorInfoBytes) {
    return r.Error(absl::StrCat("tensor count ", c.n_tensors, " exceeds what the ", r.remaining(),
                                " bytes left can hold"));
  }
  return c;
}

// The value of general.alignment: an integer power of two <= 2^30.
absl::StatusOr<uint64_t> CheckedAlignment(Reader& r, const GgufValue& a) {
  r.set_context("general.alignment");
  if (!IsInteger(a.type)) return r.Error("general.alignment is not an integer");
  if (a.bits == 0 || (a.bits & (a.bits - 1)) != 0 || a.bits > (1u << 30)) {
    return r.Error(absl::StrCat("general.alignment ", a.bits, " is not a power of two <= 2^30"));
  }
  return a.bits;
}

// A tensor's dimensions (1 to kMaxDims, each >= 1) into t->ne, and their
// product, which must fit int64, into t->n_elements.
absl::Status ReadDims(Reader& r, GgufTensorInfo* t) {
  ASSIGN_OR_RETURN(const uint32_t n_dims, r.Read<uint32_t>("dimension count"));
  if (n_dims == 0 || n_dims > kMaxDims) {
    return r.Error(absl::StrCat("dimension count ", n_dims, " not in [1, ", kMaxDims, "]"));
  }
  t->ne.resize(n_dims);
  int64_t n = 1;
  for (uint32_t d = 0; d < n_dims; ++d) {
    ASSIGN_OR_RETURN(const uint64_t dim, r.Read<uint64_t>("dimension"));
    if (dim == 0 || dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return r.Error(
          absl::StrCat("dimension ", d, " has invalid size ", static_cast<int64_t>(dim)));
    }
    t->ne[d] = static_cast<int64_t>(dim);
    if (n > std::numeric_limits<int64_t>::max() / t->ne[d]) {
      return r.Error("element count overflows");
    }
    n *= t->ne[d];
  }
  t->n_elements = n;
  return absl::OkStatus();
}

// Tensor info `i`: name, dimensions, ggml type (whole blocks per row, a byte
// size that fits int64) and a data offset that is a multiple of `alignment`.
absl::Status ReadTensorInfo(Reader& r, uint64_t i, uint64_t alignment, GgufTensorInfo* t) {
  r.set_context(absl::StrCat("tensor info ", i));
  ASSIGN_OR_RETURN(const std::string_view name, r.String("name", kMaxTensorNameLength));
  if (name.empty()) return r.Error("empty tensor name");
  t->name = std::string(name);
  r.set_context(absl::StrCat("tensor info ", i, " '", t->name, "'"));
  RETURN_IF_ERROR(ReadDims(r, t));
  ASSIGN_OR_RETURN(t->type, r.Read<uint32_t>("type"));
  const GgmlTypeTraits* traits = GgmlTypeInfo(t->type);
  if (traits == nullptr) return r.Error(absl::StrCat("unknown ggml type ", t->type));
  if (t->ne[0] % traits->block_size != 0) {
    return r.Error(absl::StrCat("row length ", t->ne[0], " is not a multiple of the ", traits->name,
                                " block size ", traits->block_size));
  }
  const int64_t blocks_per_row = t->ne[0] / traits->block_size;
  const int64_t rows = t->n_elements / t->ne[0];
  if (blocks_per_row > std::numeric_limits<int64_t>::max() / traits->type_size ||
      rows > std::numeric_limits<int64_t>::max() / (blocks_per_row * traits->type_size)) {
    return r.Error("byte size overflows");
  }
  t->n_bytes = rows * blocks_per_row * traits->type_size;
  ASSIGN_OR_RETURN(t->offset, r.Read<uint64_t>("data offset"));
  if (t->offset % alignment != 0) {
    return r.Error(
        absl::StrCat("data offset ", t->offset, " is not a multiple of the alignment ", alignment));
  }
  return absl::OkStatus();
}

// Every tensor's bytes lie inside the data section (at `data_offset` of a
// file of `size` bytes) and no two tensors overlap: overlapping tensors would
// let a small file claim many times its size in tensor data (and so in
// dequantized buffers); ggml never writes them.
absl::Status CheckTensorData(const std::vector<GgufTensorInfo>& tensors, uint64_t data_offset,
                             uint64_t size) {
  const uint64_t data_size = data_offset <= size ? size - data_offset : 0;
  for (const GgufTensorInfo& t : tensors) {
    if (data_offset > size || t.offset > data_size ||
        static_cast<uint64_t>(t.n_bytes) > data_size - t.offset) {
      return absl::InvalidArgumentError(
          absl::StrCat("GGUF: tensor '", t.name, "' data [", t.offset, ", +", t.n_bytes,
                       ") lies past the end of the file (data section of ", data_size,
                       " bytes at offset ", data_offset, ")"));
    }
  }
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return tensors[a].offset < tensors[b].offset; });
  for (size_t i = 1; i < order.size(); ++i) {
    const GgufTensorInfo& prev = tensors[order[i - 1]];
    const GgufTensorInfo& cur = tensors[order[i]];
    if (prev.offset + static_cast<uint64_t>(prev.n_bytes) > cur.offset) {
      return absl::InvalidArgumentError(absl::StrCat(
          "GGUF: tensor '", cur.name, "' overlaps the data of tensor '", prev.name, "'"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

const char* GgufTypeName(GgufType t) {
  switch (t) {
    case GgufType::kUint8:
      return "uint8";
    case GgufType::kInt8:
      return "int8";
    case GgufType::kUint16:
      return "uint16";
    case GgufType::kInt16:
      return "int16";
    case GgufType::kUint32:
      return "uint32";
    case GgufType::kInt32:
      return "int32";
    case GgufType::kFloat32:
      return "float32";
    case GgufType::kBool:
      return "bool";
    case GgufType::kString:
      return "string";
    case GgufType::kArray:
      return "array";
    case GgufType::kUint64:
      return "uint64";
    case GgufType::kInt64:
      return "int64";
    case GgufType::kFloat64:
      return "float64";
  }
  return "?";
}

std::vector<int64_t> GgufTensorInfo::Shape() const { return {ne.rbegin(), ne.rend()}; }

GgufFile::~GgufFile() = default;

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  ASSIGN_OR_RETURN(auto mapped, MappedFile::Open(path));
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->bytes_ = mapped->bytes();
  f->file_ = std::move(mapped);
  absl::Status s = f->ParseAll();
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat(path, ": ", s.message()));
  return f;
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Parse(std::span<const uint8_t> bytes) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->bytes_ = bytes;
  RETURN_IF_ERROR(f->ParseAll());
  return f;
}

absl::Status GgufFile::ParseAll() {
  Reader r(bytes_);
  ASSIGN_OR_RETURN(const HeaderCounts counts, ReadHeader(r, &version_));
  // Entries, tensor infos and nested arrays are larger in memory than their
  // smallest encoding, so containers grow as entries parse instead of being
  // reserved from the (already bounded) counts in the header.
  for (uint64_t i = 0; i < counts.n_kv; ++i) {
    r.set_context(absl::StrCat("metadata ", i));
    ASSIGN_OR_RETURN(const std::string_view key, r.String("key", kMaxKeyLength));
    if (key.empty()) return r.Error("empty metadata key");
    r.set_context(absl::StrCat("metadata ", i, " '", Sv(key), "'"));
    ASSIGN_OR_RETURN(const GgufType type, ReadValueType(r, "value type"));
    GgufValue v;
    RETURN_IF_ERROR(ReadValue(r, type, 0, &v));
    if (!kv_index_.emplace(key, kv_.size()).second) return r.Error("duplicate metadata key");
    kv_.emplace_back(key, std::move(v));
  }
  if (const GgufValue* a = Find("general.alignment")) {
    ASSIGN_OR_RETURN(alignment_, CheckedAlignment(r, *a));
  }
  for (uint64_t i = 0; i < counts.n_tensors; ++i) {
    RETURN_IF_ERROR(ReadTensorInfo(r, i, alignment_, &tensors_.emplace_back()));
  }
  // The data section starts at the next multiple of the alignment.
  const uint64_t end_of_infos = r.pos();
  data_offset_ = end_of_infos + (alignment_ - end_of_infos % alignment_) % alignment_;
  RETURN_IF_ERROR(CheckTensorData(tensors_, data_offset_, bytes_.size()));
  tensor_index_.reserve(tensors_.size());
  for (size_t i = 0; i < tensors_.size(); ++i) {
    if (!tensor_index_.emplace(tensors_[i].name, i).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("GGUF: duplicate tensor name '", tensors_[i].name, "'"));
    }
  }
  return absl::OkStatus();
}

const GgufValue* GgufFile::Find(std::string_view key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

absl::StatusOr<const GgufValue*> GgufFile::FindTyped(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) {
    return absl::NotFoundError(absl::StrCat("GGUF: missing metadata key '", Sv(key), "'"));
  }
  return v;
}

namespace {
absl::Status WrongType(std::string_view key, const GgufValue& v, std::string_view want) {
  std::string got = GgufTypeName(v.type);
  if (v.type == GgufType::kArray) absl::StrAppend(&got, " of ", GgufTypeName(v.elem_type));
  return absl::InvalidArgumentError(
      absl::StrCat("GGUF: metadata '", Sv(key), "' is ", got, ", expected ", Sv(want)));
}
}  // namespace

absl::StatusOr<int64_t> GgufFile::GetInt(std::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue* v, FindTyped(key));
  if (!IsInteger(v->type)) return WrongType(key, *v, "an integer");
  return AsInt64(v->type, v->bits, key);
}

absl::StatusOr<double> GgufFile::GetFloat(std::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue* v, FindTyped(key));
  if (v->type != GgufType::kFloat32 && v->type != GgufType::kFloat64) {
    return WrongType(key, *v, "a float");
  }
  return v->f64;
}

absl::StatusOr<bool> GgufFile::GetBool(std::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue* v, FindTyped(key));
  if (v->type != GgufType::kBool) return WrongType(key, *v, "a bool");
  return v->bits != 0;
}

absl::StatusOr<std::string> GgufFile::GetString(std::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue* v, FindTyped(key));
  if (v->type != GgufType::kString) return WrongType(key, *v, "a string");
  return std::string(v->str);
}

absl::StatusOr<std::vector<std::string>> GgufFile::GetStringArray(std::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue* v, FindTyped(key));
  if (v->type != GgufType::kArray || v->elem_type != GgufType::kString) {
    return WrongType(key, *v, "an array of string");
  }
  return std::vector<std::string>(v->strings.begin(), v->strings.end());
}

absl::StatusOr<std::vector<float>> GgufFile::GetFloatArray(std::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue* v, FindTyped(key));
  if (v->type != GgufType::kArray ||
      (v->elem_type != GgufType::kFloat32 && v->elem_type != GgufType::kFloat64)) {
    return WrongType(key, *v, "an array of float");
  }
  const uint64_t es = ScalarSize(v->elem_type);
  std::vector<float> out(v->count);
  for (uint64_t i = 0; i < v->count; ++i) {
    double f = 0;
    DecodeScalar(v->elem_type, v->raw.data() + i * es, &f);
    out[i] = static_cast<float>(f);
  }
  return out;
}

absl::StatusOr<std::vector<int64_t>> GgufFile::GetIntArray(std::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue* v, FindTyped(key));
  if (v->type != GgufType::kArray || !IsInteger(v->elem_type)) {
    return WrongType(key, *v, "an array of integer");
  }
  const uint64_t es = ScalarSize(v->elem_type);
  std::vector<int64_t> out(v->count);
  for (uint64_t i = 0; i < v->count; ++i) {
    double unused = 0;
    ASSIGN_OR_RETURN(
        out[i],
        AsInt64(v->elem_type, DecodeScalar(v->elem_type, v->raw.data() + i * es, &unused), key));
  }
  return out;
}

const GgufTensorInfo* GgufFile::FindTensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

std::span<const uint8_t> GgufFile::TensorData(const GgufTensorInfo& t) const {
  return bytes_.subspan(data_offset_ + t.offset, static_cast<size_t>(t.n_bytes));
}

absl::Status GgufFile::Dequantize(const GgufTensorInfo& t, std::span<float> dst,
                                  std::span<const int64_t> row_map) const {
  absl::Status s = DequantizeRows(t.type, TensorData(t), t.rows(), t.cols(), dst, row_map);
  if (!s.ok()) {
    return absl::Status(s.code(), absl::StrCat("GGUF: tensor '", t.name, "': ", s.message()));
  }
  return s;
}

}  // namespace longctx
