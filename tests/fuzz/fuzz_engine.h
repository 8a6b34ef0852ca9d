// What the engine-level fuzz targets share: one Engine on the CPU backend over
// the committed tiny GGUF model (tests/fuzz/corpus/tiny_llama.gguf, a real
// 1-layer llama) with a byte-level vocabulary, built once per process with small limits
// so that every request finishes quickly, and a way to wait for an engine
// callback with a bound (a callback that never comes is a hang, reported as a
// crash).
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "engine/engine.h"
#include "engine/model/load_model.h"
#include "engine/scheduler/step_model.h"
#include "engine/tokenizer/vocab.h"

namespace longctx::fuzz {

// A byte-level BPE vocabulary (every byte a token, GPT-2's byte-to-unicode
// mapping, no merges) with ChatML's special tokens: any UTF-8 text tokenizes.
inline VocabData ByteVocab() {
  VocabData v;
  v.model = "gpt2";
  v.pre = "smollm";
  auto utf8 = [](uint32_t cp) {
    std::string out;
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
    return out;
  };
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
    v.tokens.push_back(utf8(printable ? b : next++));
  }
  v.types.assign(v.tokens.size(), TokenType::kNormal);
  for (const char* special : {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}) {
    v.tokens.push_back(special);
    v.types.push_back(TokenType::kControl);
  }
  v.eos_id = 258;  // <|im_end|>
  v.chat_template = "<|im_start|>{{ role }}\n{{ content }}<|im_end|>";
  return v;
}

// The process's engine: the committed tiny GGUF model (1 layer, d_model 32)
// with its embeddings widened to ByteVocab(). Aborts when it cannot be built
// (a broken harness, not a finding).
inline Engine& TinyEngine() {
  static Engine* engine = [] {
    EngineOptions o;
    // The tiny model declares 128 positions, too few for the default DCA
    // window (w = c/8 rounded down to 64).
    o.dca_defaults.pretrain_len = 512;
    o.kv.block_size = 16;
    o.kv.max_bytes = 8 << 20;
    o.max_session_tokens = 2048;
    o.max_windowed_session_tokens = 8192;
    o.max_segment_bytes = 16384;
    o.max_segment_tokens = 4096;
    o.max_generate_tokens = 16;
    o.default_max_tokens = 8;
    o.sessions.max_sessions = 64;
    o.sessions.max_sessions_per_tenant = 32;
    o.scheduler.prefill_budget = 512;
    o.scheduler.prefill_budget_decoding = 128;
    auto fail = [](const absl::Status& s) {
      std::fprintf(stderr, "fuzz: cannot build the tiny engine: %s\n", s.ToString().c_str());
      std::abort();
    };
    auto loaded = OpenModel(
        std::string(LONGCTX_SOURCE_DIR) + "/tests/fuzz/corpus/tiny_llama.gguf", "cpu");
    if (!loaded.ok()) fail(loaded.status());
    HostModel& host = loaded->host;
    host.vocab = ByteVocab();
    const auto n_vocab = static_cast<int32_t>(host.vocab.tokens.size());
    HostTensor& embd = host.tensors.at("token_embd.weight");
    const int64_t d = embd.shape[1];
    embd.shape[0] = n_vocab;
    embd.data.resize(static_cast<size_t>(n_vocab * d));
    for (size_t i = 0; i < embd.data.size(); ++i) {
      embd.data[i] = static_cast<float>(static_cast<int64_t>((i * 2654435761u) % 2001) - 1000) *
                     1e-3f;
    }
    host.tensors.erase("output.weight");
    host.config.tied_embeddings = true;
    host.config.vocab_size = n_vocab;
    if (absl::Status s = BuildModel(*loaded, o.kv, /*keep_host=*/true); !s.ok()) fail(s);
    auto step = std::make_unique<LlamaStepModel>(std::move(loaded->model));
    auto e = Engine::CreateWithModel(loaded->host, std::move(step), "cpu", o);
    if (!e.ok()) fail(e.status());
    static Backend* backend = loaded->backend.release();  // outlives the engine
    (void)backend;
    return e->release();  // lives as long as the process
  }();
  return *engine;
}

// A callback's result, set once from any thread.
template <class T>
class Result {
 public:
  void Set(T value) {
    {
      absl::MutexLock lock(&mu_);
      value_.emplace(std::move(value));
    }
    done_.Notify();
  }
  // The result; a callback that does not come within a minute is a hang.
  T Take() {
    if (!done_.WaitForNotificationWithTimeout(absl::Minutes(1))) {
      std::fprintf(stderr, "fuzz: an engine callback never came\n");
      std::abort();
    }
    absl::MutexLock lock(&mu_);
    return *std::move(value_);
  }

 private:
  absl::Mutex mu_;
  std::optional<T> value_ ABSL_GUARDED_BY(mu_);
  absl::Notification done_;
};

// Deletes every session of `tenant`, so that no input leaves state behind.
inline void DeleteAll(Engine& engine, const std::string& tenant) {
  for (int guard = 0; guard < 16; ++guard) {
    auto page = engine.ListSessions(tenant, 0, "", {});
    if (!page.ok() || page->sessions.empty()) return;
    for (const SessionInfo& s : page->sessions) (void)engine.DeleteSession(tenant, s.id);
  }
}

}  // namespace longctx::fuzz
