#include "engine/store/store_records.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "engine/util/checksum.h"

namespace longctx::store {
namespace {

constexpr uint8_t kMetaVersion = 1;
constexpr uint8_t kRecordVersion = 1;
// Records never hold more than a segment or a turn; a larger count is damage.
constexpr uint32_t kMaxRecordTokens = 1u << 26;

void PutU64(std::string* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>(v >> (8 * i)));
}

void PutU32(std::string* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>(v >> (8 * i)));
}

// Reads fixed-size fields from a bounded buffer; a read past its end fails.
class Reader {
 public:
  explicit Reader(absl::string_view data) : data_(data) {}
  bool U64(uint64_t* v) {
    if (data_.size() < 8) return false;
    *v = 0;
    for (int i = 0; i < 8; ++i) *v |= uint64_t{static_cast<uint8_t>(data_[i])} << (8 * i);
    data_.remove_prefix(8);
    return true;
  }
  bool U32(uint32_t* v) {
    uint64_t wide = 0;
    if (data_.size() < 4) return false;
    for (int i = 0; i < 4; ++i) wide |= uint64_t{static_cast<uint8_t>(data_[i])} << (8 * i);
    *v = static_cast<uint32_t>(wide);
    data_.remove_prefix(4);
    return true;
  }
  bool U8(uint8_t* v) {
    if (data_.empty()) return false;
    *v = static_cast<uint8_t>(data_[0]);
    data_.remove_prefix(1);
    return true;
  }
  bool Bytes(size_t n, absl::string_view* v) {
    if (data_.size() < n) return false;
    *v = data_.substr(0, n);
    data_.remove_prefix(n);
    return true;
  }
  size_t left() const { return data_.size(); }

 private:
  absl::string_view data_;
};

uint64_t KeyedChecksum(absl::string_view key, absl::string_view body) {
  return Checksum64(absl::StrCat(key, "\0", body));
}

void Seal(absl::string_view key, std::string* value) { PutU64(value, KeyedChecksum(key, *value)); }

// The body of a sealed value, or DATA_LOSS naming `what`.
absl::StatusOr<absl::string_view> Unseal(absl::string_view key, absl::string_view value,
                                         const char* what) {
  if (value.size() < 9) return absl::DataLossError(absl::StrCat(what, " is truncated"));
  absl::string_view body = value.substr(0, value.size() - 8);
  uint64_t sum = 0;
  Reader tail(value.substr(value.size() - 8));
  tail.U64(&sum);
  if (sum != KeyedChecksum(key, body)) {
    return absl::DataLossError(absl::StrCat(what, " fails its checksum"));
  }
  return body;
}

}  // namespace

std::string MetaKey(absl::string_view id) { return absl::StrCat(kMetaPrefix, id); }
std::string UsedKey(absl::string_view id) { return absl::StrCat(kUsedPrefix, id); }

std::string EncodeTime(absl::Time t) {
  std::string out;
  PutU64(&out, static_cast<uint64_t>(absl::ToUnixMicros(t)));
  return out;
}

absl::Time DecodeTime(absl::string_view value) {
  uint64_t micros = 0;
  Reader r(value);
  if (value.size() != 8 || !r.U64(&micros)) return absl::InfinitePast();
  return absl::FromUnixMicros(static_cast<int64_t>(micros));
}
std::string LogBegin(absl::string_view id) { return absl::StrCat(kLogPrefix, id, "/"); }
// '0' follows '/', and session ids hold no '/'.
std::string LogEnd(absl::string_view id) { return absl::StrCat(kLogPrefix, id, "0"); }

std::string LogKey(absl::string_view id, int64_t rec) {
  std::string key = LogBegin(id);
  // Big-endian, so keys sort by record number.
  for (int i = 7; i >= 0; --i)
    key.push_back(static_cast<char>(static_cast<uint64_t>(rec) >> (8 * i)));
  return key;
}

std::string LogKeyId(absl::string_view key) {
  if (key.substr(0, kLogPrefix.size()) != kLogPrefix || key.size() < kLogPrefix.size() + 9) {
    return "";
  }
  key.remove_prefix(kLogPrefix.size());
  key.remove_suffix(9);
  return std::string(key);
}

std::string EncodeMeta(absl::string_view key, const std::string& tenant, absl::Time create_time,
                       const std::string& base) {
  std::string out;
  out.push_back(static_cast<char>(kMetaVersion));
  PutU64(&out, static_cast<uint64_t>(absl::ToUnixMicros(create_time)));
  PutU32(&out, static_cast<uint32_t>(tenant.size()));
  out += tenant;
  PutU64(&out, base.size());
  out += base;
  Seal(key, &out);
  return out;
}

absl::Status DecodeMeta(absl::string_view key, absl::string_view value, StoredSession* out) {
  auto body = Unseal(key, value, "session base");
  if (!body.ok()) return body.status();
  Reader r(*body);
  uint8_t version = 0;
  uint64_t micros = 0, base_size = 0;
  uint32_t tenant_size = 0;
  absl::string_view tenant, base;
  if (!r.U8(&version) || version != kMetaVersion || !r.U64(&micros) || !r.U32(&tenant_size) ||
      !r.Bytes(tenant_size, &tenant) || !r.U64(&base_size) || base_size != r.left() ||
      !r.Bytes(base_size, &base)) {
    return absl::DataLossError("session base is malformed");
  }
  out->tenant = std::string(tenant);
  out->create_time = absl::FromUnixMicros(static_cast<int64_t>(micros));
  out->base = std::string(base);
  return absl::OkStatus();
}

std::string EncodeRecord(absl::string_view key, const StoredRecord& record) {
  std::string out;
  out.push_back(static_cast<char>(kRecordVersion));
  out.push_back(static_cast<char>(record.kind));
  PutU64(&out, static_cast<uint64_t>(record.seq));
  PutU32(&out, static_cast<uint32_t>(record.tokens.size()));
  for (int32_t t : record.tokens) PutU32(&out, static_cast<uint32_t>(t));
  Seal(key, &out);
  return out;
}

absl::StatusOr<StoredRecord> DecodeRecord(absl::string_view key, absl::string_view value) {
  auto body = Unseal(key, value, "log record");
  if (!body.ok()) return body.status();
  Reader r(*body);
  uint8_t version = 0, kind = 0;
  uint64_t seq = 0;
  uint32_t n = 0;
  if (!r.U8(&version) || version != kRecordVersion || !r.U8(&kind) || (kind != 1 && kind != 2) ||
      !r.U64(&seq) || !r.U32(&n) || n > kMaxRecordTokens || r.left() != size_t{n} * 4) {
    return absl::DataLossError("log record is malformed");
  }
  StoredRecord rec;
  rec.kind = static_cast<StoredRecord::Kind>(kind);
  rec.seq = static_cast<int64_t>(seq);
  rec.tokens.resize(n);
  for (uint32_t i = 0; i < n; ++i) {
    uint32_t t = 0;
    r.U32(&t);
    rec.tokens[i] = static_cast<int32_t>(t);
  }
  absl::string_view rec_bytes = key.substr(key.size() - 8);
  uint64_t number = 0;
  for (char c : rec_bytes) number = (number << 8) | static_cast<uint8_t>(c);
  rec.rec = static_cast<int64_t>(number);
  return rec;
}

}  // namespace longctx::store
