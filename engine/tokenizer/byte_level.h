// The GPT-2 bytes-to-unicode alphabet of byte-level BPE vocabularies: each of
// the 256 byte values is written as one printable code point (printable
// Latin-1 bytes as themselves, the rest as U+0100 + n in byte order), so every
// vocabulary piece is a string of such characters.
#pragma once

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"

namespace longctx {

// The code point that stands for `byte`.
uint32_t ByteToCodepoint(uint8_t byte);
// The byte a code point stands for, or -1 if it is not in the alphabet.
int ByteFromCodepoint(uint32_t cp);

// UTF-8 text of the piece that spells `bytes` in the alphabet.
std::string BytesToPiece(absl::string_view bytes);
// Bytes spelled by a piece. Characters outside the alphabet are kept as their
// UTF-8 (vocabularies are not required to be pure byte-level).
std::string PieceToBytes(absl::string_view piece);

}  // namespace longctx
