#include "engine/tokenizer/stream_decoder.h"

#include "engine/tokenizer/unicode.h"

namespace longctx {

StreamDecoder::StreamDecoder(const Tokenizer* tokenizer, bool skip_special)
    : tokenizer_(tokenizer),
      skip_special_(skip_special),
      strip_space_(tokenizer->add_space_prefix()) {}

std::string StreamDecoder::Feed(int32_t id) {
  if (tokenizer_->SkipsInDecode(id, skip_special_)) return std::string();
  absl::string_view b = tokenizer_->TokenBytes(id);
  if (strip_space_ && !tokenizer_->IsControl(id)) {
    strip_space_ = false;
    if (!b.empty() && b[0] == ' ') b.remove_prefix(1);
  }
  pending_.append(b.data(), b.size());
  std::string out;
  size_t pos = 0;
  while (pos < pending_.size()) {
    const Utf8Prefix p = CheckUtf8Prefix(absl::string_view(pending_).substr(pos));
    if (p.kind == Utf8Prefix::kIncomplete) break;  // wait for the rest
    if (p.kind == Utf8Prefix::kValid) {
      out.append(pending_, pos, p.length);
    } else {
      AppendUtf8(0xFFFD, &out);
    }
    pos += p.length;
  }
  pending_.erase(0, pos);
  return out;
}

std::string StreamDecoder::Flush() {
  std::string out;
  AppendUtf8Lossy(pending_, &out);
  pending_.clear();
  strip_space_ = tokenizer_->add_space_prefix();
  return out;
}

}  // namespace longctx
