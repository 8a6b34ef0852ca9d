#include "engine/conversation/answer_stream.h"

#include <utility>

namespace longctx {

AnswerStream::AnswerStream(const Tokenizer* tokenizer, std::vector<std::string> stops,
                           ChunkFn on_chunk)
    : decoder_(tokenizer, /*skip_special=*/true),
      matcher_(std::move(stops)),
      on_chunk_(std::move(on_chunk)) {}

bool AnswerStream::Push(int32_t token) {
  ids_.push_back(token);
  StopMatcher::Result r = matcher_.Push(decoder_.Feed(token));
  if (r.matched) stop_string_ = *r.matched;
  if (r.matched || !r.emit.empty()) {
    on_chunk_(std::move(r.emit), std::move(ids_));
    ids_.clear();
  }
  return !r.matched;
}

void AnswerStream::Finish() {
  if (!stop_string_.empty()) return;
  std::string tail = matcher_.Push(decoder_.Flush()).emit;
  tail += matcher_.Flush();
  if (!tail.empty() || !ids_.empty()) on_chunk_(std::move(tail), std::move(ids_));
  ids_.clear();
}

}  // namespace longctx
