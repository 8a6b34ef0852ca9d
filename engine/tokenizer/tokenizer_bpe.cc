// Byte-level BPE: vocabulary tables and encoding.
#include <algorithm>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/tokenizer/byte_level.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/util/status_macros.h"

namespace longctx {
namespace {

uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

// A merge that may apply between the symbol at `left` and its right neighbour.
struct MergeCandidate {
  int32_t rank;
  int32_t left;     // symbol index, in word order
  int32_t left_id;  // ids at push time; a changed id means the pair is stale
  int32_t right_id;
  int32_t merged;
};

// Orders a max-heap so that the lowest rank, then the leftmost pair, is on top.
struct MergeAfter {
  bool operator()(const MergeCandidate& a, const MergeCandidate& b) const {
    return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
  }
};

struct Symbol {
  int32_t id;    // -1 once merged into the symbol on its left
  int32_t prev;  // index of the previous live symbol, -1 at the start
  int32_t next;  // index of the next live symbol, -1 at the end
};

}  // namespace

absl::Status Tokenizer::BuildByteLevel(const VocabData& vocab) {
  ASSIGN_OR_RETURN(pre_, PreTokenizerFromName(vocab.pre));
  // Llama 3 tokenizers take a pre-token found whole in the vocabulary as is
  // (tokenizer.json "ignore_merges"), as llama.cpp does for this pre-tokenizer.
  ignore_merges_ = pre_ == PreTokenizerKind::kLlama3;

  bytes_.resize(pieces_.size());
  for (size_t i = 0; i < pieces_.size(); ++i) {
    const TokenType type = types_[i];
    // Control and user-defined tokens are stored as plain text, not in the
    // byte alphabet.
    if (type == TokenType::kControl || type == TokenType::kUserDefined ||
        type == TokenType::kUnknown) {
      bytes_[i] = pieces_[i];
    } else {
      bytes_[i] = PieceToBytes(pieces_[i]);
    }
  }
  // Vocabularies may lack bytes that their training text never held (SmolLM2
  // has no token for 0x04 or 0xFF, for instance); such bytes are dropped when
  // encoding, as Hugging Face's BPE without an unknown token does.
  for (int b = 0; b < 256; ++b) {
    byte_ids_[b] = PieceToId(BytesToPiece(std::string(1, static_cast<char>(b))));
  }

  merges_.reserve(vocab.merges.size());
  for (size_t rank = 0; rank < vocab.merges.size(); ++rank) {
    const std::string& m = vocab.merges[rank];
    const size_t space = m.size() > 1 ? m.find(' ', 1) : std::string::npos;
    if (space == std::string::npos || space + 1 >= m.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("merge ", rank, " '", m, "' is not two pieces separated by a space"));
    }
    const absl::string_view left(m.data(), space);
    const absl::string_view right(m.data() + space + 1, m.size() - space - 1);
    const int32_t left_id = PieceToId(left);
    const int32_t right_id = PieceToId(right);
    const int32_t merged_id = PieceToId(absl::StrCat(left, right));
    if (left_id < 0 || right_id < 0 || merged_id < 0) {
      const absl::string_view missing = left_id < 0 ? left : right_id < 0 ? right : "";
      return absl::InvalidArgumentError(
          absl::StrCat("merge ", rank, " '", m, "' names a piece not in the vocabulary: '",
                       missing.empty() ? absl::StrCat(left, right) : std::string(missing), "'"));
    }
    // A repeated pair keeps its first (highest priority) rank.
    merges_.emplace(PairKey(left_id, right_id), MergeRule{static_cast<int32_t>(rank), merged_id});
  }
  return absl::OkStatus();
}

void Tokenizer::EncodeByteLevel(absl::string_view text, std::vector<int32_t>* out) const {
  std::vector<TextSpan> spans;
  spans.reserve(text.size() / 4 + 1);
  PreTokenize(pre_, text, &spans);
  // Text repeats its words: each distinct pre-token is merged once per call.
  absl::flat_hash_map<absl::string_view, std::pair<uint32_t, uint32_t>> cache;
  std::vector<int32_t> pool;
  std::vector<int32_t> word_ids;
  for (const TextSpan& s : spans) {
    const absl::string_view word = text.substr(s.begin, s.end - s.begin);
    if (word.size() == 1) {
      const int32_t id = byte_ids_[static_cast<uint8_t>(word[0])];
      if (id >= 0) out->push_back(id);
      continue;
    }
    const auto it = cache.find(word);
    if (it != cache.end()) {
      out->insert(out->end(), pool.begin() + it->second.first,
                  pool.begin() + it->second.first + it->second.second);
      continue;
    }
    word_ids.clear();
    MergeWord(word, &word_ids);
    cache.emplace(word, std::make_pair(static_cast<uint32_t>(pool.size()),
                                       static_cast<uint32_t>(word_ids.size())));
    pool.insert(pool.end(), word_ids.begin(), word_ids.end());
    out->insert(out->end(), word_ids.begin(), word_ids.end());
  }
}

void Tokenizer::MergeWord(absl::string_view word, std::vector<int32_t>* out) const {
  if (ignore_merges_) {
    const int32_t whole = PieceToId(BytesToPiece(word));
    if (whole >= 0 && types_[whole] != TokenType::kControl) {
      out->push_back(whole);
      return;
    }
  }
  // Bytes without a token are left out before merging, so their neighbours may
  // merge with each other.
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  for (const char c : word) {
    const int32_t id = byte_ids_[static_cast<uint8_t>(c)];
    if (id < 0) continue;
    const auto i = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, i - 1, i + 1});
  }
  if (symbols.empty()) return;
  symbols.back().next = -1;
  const auto n = static_cast<int32_t>(symbols.size());
  std::vector<MergeCandidate> heap;
  const auto push = [&](int32_t left) {
    if (left < 0) return;
    const int32_t right = symbols[left].next;
    if (right < 0) return;
    const auto it = merges_.find(PairKey(symbols[left].id, symbols[right].id));
    if (it == merges_.end()) return;
    heap.push_back({it->second.rank, left, symbols[left].id, symbols[right].id, it->second.merged});
    std::push_heap(heap.begin(), heap.end(), MergeAfter());
  };
  for (int32_t i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), MergeAfter());
    const MergeCandidate c = heap.back();
    heap.pop_back();
    Symbol& left = symbols[c.left];
    if (left.id != c.left_id || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    if (right.id != c.right_id) continue;
    left.id = c.merged;
    right.id = -1;
    left.next = right.next;
    if (left.next >= 0) symbols[left.next].prev = c.left;
    push(left.prev);
    push(c.left);
  }
  for (int32_t i = 0; i >= 0; i = symbols[i].next) out->push_back(symbols[i].id);
}

}  // namespace longctx
