#include "engine/util/utf8.h"

namespace longctx {
namespace {

// Valid range of the second byte of a sequence, by lead byte (Unicode Table 3-7).
bool SecondByteOk(unsigned char lead, unsigned char b) {
  switch (lead) {
    case 0xE0:
      return b >= 0xA0 && b <= 0xBF;
    case 0xED:
      return b >= 0x80 && b <= 0x9F;
    case 0xF0:
      return b >= 0x90 && b <= 0xBF;
    case 0xF4:
      return b >= 0x80 && b <= 0x8F;
    default:
      return b >= 0x80 && b <= 0xBF;
  }
}

// Sequence length announced by a lead byte; 0 for bytes that cannot lead.
size_t SequenceLength(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

}  // namespace

Utf8Prefix CheckUtf8Prefix(absl::string_view bytes) {
  const auto lead = static_cast<unsigned char>(bytes[0]);
  const size_t need = SequenceLength(lead);
  if (need == 0) return {Utf8Prefix::kInvalid, 1};
  for (size_t i = 1; i < need; ++i) {
    if (i >= bytes.size()) return {Utf8Prefix::kIncomplete, i};
    const auto b = static_cast<unsigned char>(bytes[i]);
    const bool ok = i == 1 ? SecondByteOk(lead, b) : (b >= 0x80 && b <= 0xBF);
    if (!ok) return {Utf8Prefix::kInvalid, i};
  }
  return {Utf8Prefix::kValid, need};
}

size_t DecodeUtf8(absl::string_view text, size_t pos, uint32_t* cp) {
  const auto lead = static_cast<unsigned char>(text[pos]);
  if (lead < 0x80) {
    *cp = lead;
    return 1;
  }
  const Utf8Prefix p = CheckUtf8Prefix(text.substr(pos));
  if (p.kind != Utf8Prefix::kValid) {
    *cp = kInvalidCodepoint;
    return 1;
  }
  uint32_t v = lead & (0x7F >> p.length);
  for (size_t i = 1; i < p.length; ++i) {
    v = (v << 6) | (static_cast<unsigned char>(text[pos + i]) & 0x3F);
  }
  *cp = v;
  return p.length;
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

void AppendUtf8Lossy(absl::string_view bytes, std::string* out) {
  size_t pos = 0;
  while (pos < bytes.size()) {
    // Copy ASCII runs without per-byte checks.
    size_t run = pos;
    while (run < bytes.size() && static_cast<unsigned char>(bytes[run]) < 0x80) ++run;
    out->append(bytes.data() + pos, run - pos);
    pos = run;
    if (pos == bytes.size()) break;
    const Utf8Prefix p = CheckUtf8Prefix(bytes.substr(pos));
    if (p.kind == Utf8Prefix::kValid) {
      out->append(bytes.data() + pos, p.length);
    } else {
      AppendUtf8(0xFFFD, out);
    }
    pos += p.length;
  }
}

}  // namespace longctx
