// An answer as the client sees it: sampled ids turned into text token by
// token (a streaming detokenizer that never splits a UTF-8 character), with
// stop strings held back until they are clear and cut off when they complete.
//
// Not thread-safe: one per generation, fed on the engine thread.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/conversation/stop_matcher.h"
#include "engine/tokenizer/stream_decoder.h"
#include "engine/tokenizer/tokenizer.h"

namespace longctx {

class AnswerStream {
 public:
  // Text (valid UTF-8, possibly empty) and the ids sampled since the last call.
  using ChunkFn = std::function<void(std::string text, std::vector<int32_t> ids)>;

  // REQUIRES: every stop string non-empty; `tokenizer` outlives the stream.
  AnswerStream(const Tokenizer* tokenizer, std::vector<std::string> stops, ChunkFn on_chunk);

  // Takes the next sampled token; false once a stop string has completed (the
  // text before it has been sent, and generation must end).
  bool Push(int32_t token);
  // At the end of generation: sends what is held back, unless a stop string
  // ended the answer.
  void Finish();
  // The stop string that ended the answer; empty if none.
  const std::string& stop_string() const { return stop_string_; }

 private:
  StreamDecoder decoder_;
  StopMatcher matcher_;
  ChunkFn on_chunk_;
  std::vector<int32_t> ids_;  // sampled, not yet sent
  std::string stop_string_;
};

}  // namespace longctx
