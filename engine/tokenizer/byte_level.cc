#include "engine/tokenizer/byte_level.h"

#include <array>

#include "engine/tokenizer/unicode.h"

namespace longctx {
namespace {

bool PrintableLatin1(int b) {
  return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
}

struct Alphabet {
  std::array<uint32_t, 256> to_cp{};
  std::array<int16_t, 0x144> from_cp{};  // every code point of the alphabet is < 0x144
};

const Alphabet& GetAlphabet() {
  static const Alphabet* const alphabet = [] {
    auto* a = new Alphabet;
    a->from_cp.fill(-1);
    uint32_t next = 0x100;
    for (int b = 0; b < 256; ++b) {
      a->to_cp[b] = PrintableLatin1(b) ? static_cast<uint32_t>(b) : next++;
      a->from_cp[a->to_cp[b]] = static_cast<int16_t>(b);
    }
    return a;
  }();
  return *alphabet;
}

}  // namespace

uint32_t ByteToCodepoint(uint8_t byte) { return GetAlphabet().to_cp[byte]; }

int ByteFromCodepoint(uint32_t cp) {
  const Alphabet& a = GetAlphabet();
  return cp < a.from_cp.size() ? a.from_cp[cp] : -1;
}

std::string BytesToPiece(absl::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (const char c : bytes) AppendUtf8(ByteToCodepoint(static_cast<uint8_t>(c)), &out);
  return out;
}

std::string PieceToBytes(absl::string_view piece) {
  std::string out;
  out.reserve(piece.size());
  for (size_t pos = 0; pos < piece.size();) {
    uint32_t cp;
    const size_t len = DecodeUtf8(piece, pos, &cp);
    const int b = cp == kInvalidCodepoint ? -1 : ByteFromCodepoint(cp);
    if (b >= 0) {
      out.push_back(static_cast<char>(b));
    } else {
      out.append(piece.data() + pos, len);
    }
    pos += len;
  }
  return out;
}

}  // namespace longctx
