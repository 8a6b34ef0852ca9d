#include "engine/tokenizer/pre_tokenizer.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/tokenizer/unicode.h"

namespace longctx {
namespace {

// One decoded code point (or one ill-formed byte) of the input.
struct Unit {
  uint32_t cp;
  uint32_t offset;  // byte offset of its first byte
  CharClass cls;
};

bool IsCrLf(const Unit& u) { return u.cp == '\r' || u.cp == '\n'; }

uint32_t AsciiLower(uint32_t cp) { return (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp; }

// Length (in units) of an English contraction starting at p, or 0.
size_t MatchContraction(const Unit* u, size_t p, size_t e, bool ignore_case) {
  if (u[p].cp != '\'' || p + 1 >= e) return 0;
  const uint32_t c1 = ignore_case ? AsciiLower(u[p + 1].cp) : u[p + 1].cp;
  if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
  if (p + 2 >= e) return 0;
  const uint32_t c2 = ignore_case ? AsciiLower(u[p + 2].cp) : u[p + 2].cp;
  if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return 3;
  return 0;
}

// End of the whitespace alternatives `\s+(?!\S)|\s+` for a run starting at p.
size_t MatchTrailingWhitespace(const Unit* u, size_t p, size_t e) {
  size_t r = p;
  while (r < e && u[r].cls == CharClass::kWhitespace) ++r;
  // \s+(?!\S): the whole run when nothing follows; otherwise all but the last
  // character, which then starts the next piece. A single character before a
  // non-space falls through to \s+.
  if (r == e || r - p < 2) return r;
  return r - 1;
}

// The gpt2 pattern at p within the segment [.., e); returns the match end.
size_t MatchGpt2(const Unit* u, size_t p, size_t e) {
  if (const size_t n = MatchContraction(u, p, e, /*ignore_case=*/false)) return p + n;
  // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: one optional leading space,
  // then a run of one class.
  size_t q = p;
  if (u[p].cp == ' ' && p + 1 < e && u[p + 1].cls != CharClass::kWhitespace) q = p + 1;
  if (u[q].cls != CharClass::kWhitespace) {
    const CharClass cls = u[q].cls;
    size_t r = q + 1;
    while (r < e && u[r].cls == cls) ++r;
    return r;
  }
  return MatchTrailingWhitespace(u, p, e);
}

// The llama-bpe / qwen2 pattern at p; max_digits is 3 or 1.
size_t MatchLlama3(const Unit* u, size_t p, size_t e, size_t max_digits) {
  if (const size_t n = MatchContraction(u, p, e, /*ignore_case=*/true)) return p + n;
  // [^\r\n\p{L}\p{N}]?\p{L}+
  {
    size_t q = p;
    if (!IsCrLf(u[p]) && u[p].cls != CharClass::kLetter && u[p].cls != CharClass::kNumber &&
        p + 1 < e && u[p + 1].cls == CharClass::kLetter) {
      q = p + 1;
    }
    if (u[q].cls == CharClass::kLetter) {
      size_t r = q + 1;
      while (r < e && u[r].cls == CharClass::kLetter) ++r;
      return r;
    }
  }
  // \p{N}{1,max_digits}
  if (u[p].cls == CharClass::kNumber) {
    size_t r = p + 1;
    while (r < e && r - p < max_digits && u[r].cls == CharClass::kNumber) ++r;
    return r;
  }
  // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
  {
    size_t q = p;
    if (u[p].cp == ' ' && p + 1 < e && u[p + 1].cls == CharClass::kOther) q = p + 1;
    if (u[q].cls == CharClass::kOther) {
      size_t r = q + 1;
      while (r < e && u[r].cls == CharClass::kOther) ++r;
      while (r < e && IsCrLf(u[r])) ++r;
      return r;
    }
  }
  // Here u[p] is whitespace. `\s*[\r\n]+`: greedy \s* backs off to the last line
  // break of the run, and the match ends just after it.
  size_t r = p;
  size_t last_break = e;
  while (r < e && u[r].cls == CharClass::kWhitespace) {
    if (IsCrLf(u[r])) last_break = r;
    ++r;
  }
  if (last_break != e) return last_break + 1;
  return MatchTrailingWhitespace(u, p, e);
}

void Emit(const std::vector<Unit>& units, size_t b, size_t e, std::vector<TextSpan>* out) {
  out->push_back({units[b].offset, units[e].offset});
}

}  // namespace

absl::StatusOr<PreTokenizerKind> PreTokenizerFromName(absl::string_view name) {
  // Groups follow llama.cpp, which gives each group one pattern list.
  for (const char* n : {"gpt2", "gpt-2", "mpt", "olmo", "jais"}) {
    if (name == n) return PreTokenizerKind::kGpt2;
  }
  for (const char* n : {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone"}) {
    if (name == n) return PreTokenizerKind::kSmollm;
  }
  for (const char* n : {"llama-bpe", "llama3", "llama-v3", "dbrx", "smaug-bpe", "falcon3"}) {
    if (name == n) return PreTokenizerKind::kLlama3;
  }
  for (const char* n : {"qwen2", "stablelm2", "deepseek-r1-qwen"}) {
    if (name == n) return PreTokenizerKind::kQwen2;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unsupported byte-level BPE pre-tokenizer '", std::string(name),
                   "' (supported: smollm, gpt2, llama-bpe, qwen2 and their aliases)"));
}

void PreTokenize(PreTokenizerKind kind, absl::string_view text, std::vector<TextSpan>* out) {
  std::vector<Unit> units;
  units.reserve(text.size() + 1);
  for (size_t pos = 0; pos < text.size();) {
    uint32_t cp;
    const size_t len = DecodeUtf8(text, pos, &cp);
    const CharClass cls = cp == kInvalidCodepoint ? CharClass::kOther : ClassifyCodepoint(cp);
    units.push_back({cp, static_cast<uint32_t>(pos), cls});
    pos += len;
  }
  const size_t n = units.size();
  units.push_back({0, static_cast<uint32_t>(text.size()), CharClass::kOther});  // sentinel
  const Unit* u = units.data();

  switch (kind) {
    case PreTokenizerKind::kGpt2:
      for (size_t p = 0; p < n;) {
        const size_t r = MatchGpt2(u, p, n);
        Emit(units, p, r, out);
        p = r;
      }
      break;
    case PreTokenizerKind::kSmollm:
      for (size_t p = 0; p < n;) {
        if (u[p].cls == CharClass::kNumber) {
          Emit(units, p, p + 1, out);
          ++p;
          continue;
        }
        size_t seg_end = p;
        while (seg_end < n && u[seg_end].cls != CharClass::kNumber) ++seg_end;
        while (p < seg_end) {
          const size_t r = MatchGpt2(u, p, seg_end);
          Emit(units, p, r, out);
          p = r;
        }
      }
      break;
    case PreTokenizerKind::kLlama3:
    case PreTokenizerKind::kQwen2: {
      const size_t max_digits = kind == PreTokenizerKind::kLlama3 ? 3 : 1;
      for (size_t p = 0; p < n;) {
        const size_t r = MatchLlama3(u, p, n, max_digits);
        Emit(units, p, r, out);
        p = r;
      }
      break;
    }
  }
}

}  // namespace longctx
