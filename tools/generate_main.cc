// Generates text from a prompt with a model on the chosen backend, streaming the
// text as it is produced, then prints prompt and generation throughput.
//
//   longctx-generate --model=M.gguf --prompt="Why is the sky blue?" [--chat] [--max_tokens=128]
//                    [--temperature=0] [--top_k=0] [--top_p=1] [--seed=0] [--backend=auto]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "engine/backend/cpu_process.h"
#include "engine/util/status_macros.h"
#include "engine/backend/backend.h"
#include "engine/backend/backend_factory.h"
#include "engine/model/host_weights.h"
#include "engine/model/llama_model.h"
#include "engine/sampling/sampler.h"
#include "engine/tokenizer/chat_template.h"
#include "engine/tokenizer/stream_decoder.h"
#include "engine/tokenizer/tokenizer.h"
#include "tools/tool_flags.h"

ABSL_FLAG(std::string, model, "", "model file (GGUF) or Hugging Face directory; default $LONGCTX_MODEL");
ABSL_FLAG(std::string, backend, "auto", "auto, cpu or cuda");
ABSL_FLAG(std::string, prompt, "", "prompt text");
ABSL_FLAG(bool, chat, true, "wrap the prompt as a user turn of the model's chat template");
ABSL_FLAG(int, max_tokens, 128, "most tokens to generate");
ABSL_FLAG(float, temperature, 0.f, "0 = greedy");
ABSL_FLAG(int, top_k, 0, "0 = off");
ABSL_FLAG(float, top_p, 1.f, "1 = off");
ABSL_FLAG(uint64_t, seed, 0, "sampling seed");

namespace longctx {
namespace {

double Since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

absl::Status Run() {
  std::string path = absl::GetFlag(FLAGS_model);
  if (path.empty() && std::getenv("LONGCTX_MODEL") != nullptr) path = std::getenv("LONGCTX_MODEL");
  if (path.empty()) return absl::InvalidArgumentError("--model (or LONGCTX_MODEL) is required");
  SamplingParams sp;
  sp.temperature = absl::GetFlag(FLAGS_temperature);
  sp.top_k = absl::GetFlag(FLAGS_top_k);
  sp.top_p = absl::GetFlag(FLAGS_top_p);
  sp.seed = absl::GetFlag(FLAGS_seed);
  RETURN_IF_ERROR(sp.Validate());
  const int max_tokens = absl::GetFlag(FLAGS_max_tokens);
  if (max_tokens < 0) return absl::InvalidArgumentError("--max_tokens must be >= 0");

  ASSIGN_OR_RETURN(BackendKind kind, ParseBackendKind(absl::GetFlag(FLAGS_backend)));
  ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend, CreateBackend(kind));
  ASSIGN_OR_RETURN(HostModel host, LoadHostModel(path));
  ASSIGN_OR_RETURN(Tokenizer tokenizer, Tokenizer::Create(host.vocab));
  std::vector<int32_t> prompt;
  if (absl::GetFlag(FLAGS_chat)) {
    ASSIGN_OR_RETURN(ChatTemplate tmpl, ChatTemplateFromJinja(host.vocab.chat_template));
    const ChatMessage msg{"user", absl::GetFlag(FLAGS_prompt)};
    ASSIGN_OR_RETURN(prompt, EncodeChat(tokenizer, {&msg, 1}, true, tmpl));
  } else {
    if (tokenizer.add_bos() && tokenizer.bos_id() >= 0) prompt.push_back(tokenizer.bos_id());
    const auto ids = tokenizer.Encode(absl::GetFlag(FLAGS_prompt), /*parse_special=*/true);
    prompt.insert(prompt.end(), ids.begin(), ids.end());
  }
  if (prompt.empty()) return absl::InvalidArgumentError("the prompt encodes to no tokens");

  KvCacheConfig kv;
  kv.max_bytes = KvBytesForTokens(host.config, *backend, static_cast<int64_t>(prompt.size()) + max_tokens);
  ASSIGN_OR_RETURN(std::unique_ptr<LlamaModel> model, LlamaModel::Create(host, backend.get(), kv));
  host.tensors.clear();

  KvSequence seq;
  std::vector<float> logits;
  auto t0 = std::chrono::steady_clock::now();
  StepItem item{&seq, prompt, LogitsMode::kLast, {}};
  RETURN_IF_ERROR(model->Forward({&item, 1}, &logits));
  const double prefill_s = Since(t0);

  Sampler sampler(sp);
  StreamDecoder decoder(&tokenizer, /*skip_special=*/true);
  int generated = 0;
  t0 = std::chrono::steady_clock::now();
  while (generated < max_tokens) {
    int32_t next = sampler.Sample(logits);
    ++generated;
    if (tokenizer.IsEog(next)) break;
    std::fputs(decoder.Feed(next).c_str(), stdout);
    std::fflush(stdout);
    if (generated == max_tokens) break;
    StepItem step{&seq, {&next, 1}, LogitsMode::kLast, {}};
    RETURN_IF_ERROR(model->Forward({&step, 1}, &logits));
  }
  std::fputs(decoder.Flush().c_str(), stdout);
  const double decode_s = Since(t0);
  std::fprintf(stderr, "\n[%s] prompt %zu tokens, %.1f tok/s | generated %d tokens, %.1f tok/s\n",
               backend->Name().c_str(), prompt.size(), prompt.size() / prefill_s, generated,
               generated / decode_s);
  return absl::OkStatus();
}

}  // namespace
}  // namespace longctx

int main(int argc, char** argv) {
  longctx::PrepareCpuProcess(argv);
  longctx::ParseToolFlags(argc, argv,
      "Generates text from a prompt, streaming it.\n  longctx-generate --model=FILE --prompt=TEXT [flags]");
  const absl::Status s = longctx::Run();
  if (!s.ok()) {
    std::fprintf(stderr, "longctx-generate: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
