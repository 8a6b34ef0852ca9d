// SentencePiece BPE (GGUF tokenizer model "llama"): vocabulary tables and encoding.
#include <algorithm>
#include <cstdio>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/unicode.h"

namespace longctx {
namespace {

constexpr absl::string_view kSpaceMark = "\xE2\x96\x81";  // U+2581, SentencePiece's space

// Pieces that normal text may merge into.
bool Mergeable(TokenType t) { return t == TokenType::kNormal || t == TokenType::kUndefined; }

// The byte of a "<0xNN>" piece, or -1.
int ParseBytePiece(absl::string_view piece) {
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return -1;
  int v = 0;
  for (const char c : piece.substr(3, 2)) {
    v <<= 4;
    if (c >= '0' && c <= '9') {
      v |= c - '0';
    } else if (c >= 'A' && c <= 'F') {
      v |= c - 'A' + 10;
    } else if (c >= 'a' && c <= 'f') {
      v |= c - 'a' + 10;
    } else {
      return -1;
    }
  }
  return v;
}

struct SpmSymbol {
  uint32_t begin;  // byte range in the normalized text
  uint32_t size;   // 0 once merged into the symbol on its left
  int32_t prev;
  int32_t next;
};

struct SpmCandidate {
  float score;
  int32_t left;
  int32_t right;
  uint32_t size;  // bytes of the merged piece; a change means the pair is stale
  int32_t id;
};

// Orders a max-heap: highest score first, then the leftmost pair (SentencePiece's
// rule).
struct SpmBefore {
  bool operator()(const SpmCandidate& a, const SpmCandidate& b) const {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  }
};

}  // namespace

absl::Status Tokenizer::BuildSentencePiece(const VocabData& vocab) {
  if (vocab.scores.empty()) {
    return absl::InvalidArgumentError("SentencePiece vocabulary has no token scores");
  }
  scores_ = vocab.scores;
  byte_ids_.fill(-1);
  bytes_.resize(pieces_.size());
  for (size_t i = 0; i < pieces_.size(); ++i) {
    const TokenType type = types_[i];
    if (type == TokenType::kByte) {
      const int b = ParseBytePiece(pieces_[i]);
      if (b < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("byte token ", i, " '", pieces_[i], "' is not of the form <0xNN>"));
      }
      if (byte_ids_[b] < 0) byte_ids_[b] = static_cast<int32_t>(i);
      bytes_[i] = std::string(1, static_cast<char>(b));
    } else if (Mergeable(type)) {
      bytes_[i] = absl::StrReplaceAll(pieces_[i], {{kSpaceMark, " "}});
    } else {
      bytes_[i] = pieces_[i];
    }
  }
  if (unk_id_ < 0 && std::count(byte_ids_.begin(), byte_ids_.end(), -1) > 0) {
    return absl::InvalidArgumentError(
        "SentencePiece vocabulary has neither all 256 <0xNN> byte tokens nor an unknown token");
  }
  return absl::OkStatus();
}

void Tokenizer::EncodeSentencePiece(absl::string_view text, std::vector<int32_t>* out) const {
  const std::string norm = absl::StrReplaceAll(text, {{" ", kSpaceMark}});
  std::vector<SpmSymbol> symbols;
  symbols.reserve(norm.size());
  for (size_t pos = 0; pos < norm.size();) {
    uint32_t cp;
    const size_t len = DecodeUtf8(norm, pos, &cp);
    const auto idx = static_cast<int32_t>(symbols.size());
    symbols.push_back({static_cast<uint32_t>(pos), static_cast<uint32_t>(len), idx - 1, idx + 1});
    pos += len;
  }
  if (symbols.empty()) return;
  symbols.back().next = -1;

  std::vector<SpmCandidate> heap;
  const auto push = [&](int32_t left) {
    if (left < 0 || symbols[left].next < 0) return;
    const int32_t right = symbols[left].next;
    const uint32_t size = symbols[left].size + symbols[right].size;
    const int32_t id = PieceToId(absl::string_view(norm).substr(symbols[left].begin, size));
    if (id < 0 || !Mergeable(types_[id])) return;
    heap.push_back({scores_[id], left, right, size, id});
    std::push_heap(heap.begin(), heap.end(), SpmBefore());
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) push(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), SpmBefore());
    const SpmCandidate c = heap.back();
    heap.pop_back();
    SpmSymbol& left = symbols[c.left];
    SpmSymbol& right = symbols[c.right];
    if (left.size == 0 || right.size == 0 || left.next != c.right ||
        left.size + right.size != c.size) {
      continue;
    }
    left.size = c.size;
    right.size = 0;
    left.next = right.next;
    if (left.next >= 0) symbols[left.next].prev = c.left;
    push(left.prev);
    push(c.left);
  }
  for (int32_t i = 0; i >= 0; i = symbols[i].next) {
    const absl::string_view piece =
        absl::string_view(norm).substr(symbols[i].begin, symbols[i].size);
    const int32_t id = PieceToId(piece);
    if (id >= 0 && Mergeable(types_[id])) {
      out->push_back(id);
      continue;
    }
    // Byte fallback; one unknown token for the character where a byte is missing.
    const bool all_bytes = std::all_of(piece.begin(), piece.end(), [&](char c) {
      return byte_ids_[static_cast<uint8_t>(c)] >= 0;
    });
    if (!all_bytes) {
      out->push_back(unk_id_);
      continue;
    }
    for (const char c : piece) out->push_back(byte_ids_[static_cast<uint8_t>(c)]);
  }
}

}  // namespace longctx
