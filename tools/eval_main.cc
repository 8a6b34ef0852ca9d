// Long-context evaluation: perplexity by context length and passkey retrieval,
// plain RoPE vs Dual Chunk Attention, printed as Markdown tables (or JSON lines).
//
//   longctx-eval ppl --text=book.txt --lengths=1024,2048,4096 [--modes=rope,dca] [--windows=4]
//   longctx-eval passkey --lengths=1024,4096 [--depths=0,25,50,75,100] [--keys=5] [--chat]
// Common: --model, --backend, --pretrain_len (DCA c), --chunk_size, --local_window,
//         --length_temperature, --piece (prefill piece), --json.
// Infini window (docs/design.md §4): --infini=none,slide,compress compares full DCA with
// windowed sessions of --infini_window tokens (+ --infini_sinks), the memory
// updated by --infini_update and mixed only with --infini_mix (needs gates:
// --infini_gates=auto, the default, takes a sidecar beside the model or the
// model's own; or --infini_gates=sidecar.safetensors).
// --dump_nll=FILE (ppl) writes every scored token's loss, and
//   longctx-eval tokens --text=book.txt --out=book.i32
// the text's token ids, both for tools/train/.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "engine/backend/backend.h"
#include "engine/backend/backend_factory.h"
#include "engine/backend/cpu_process.h"
#include "engine/eval/eval.h"
#include "engine/model/host_weights.h"
#include "engine/model/load_model.h"
#include "engine/util/status_macros.h"
#include "tools/tool_flags.h"

ABSL_FLAG(std::string, model, "", "model file; default $LONGCTX_MODEL");
ABSL_FLAG(std::string, backend, "auto", "auto, cpu or cuda");
ABSL_FLAG(std::string, cpu_weights, "f32",
          "CPU: f32 (dequantized at load, BLAS) or quantized (GGUF blocks, int8 activations)");
ABSL_FLAG(std::string, cpu_isa, "auto", "CPU: quantized products on auto, avx512, avx2 or scalar");
ABSL_FLAG(std::string, cpu_kv, "f32", "CPU: KV cache elements, f32 or f16");
ABSL_FLAG(std::string, text, "", "ppl: UTF-8 text file");
ABSL_FLAG(std::string, lengths, "1024,2048,4096", "context lengths in tokens");
ABSL_FLAG(std::string, modes, "rope,dca", "attention modes to compare");
ABSL_FLAG(int, windows, 4, "ppl: most windows per length");
ABSL_FLAG(int, score_last, 0,
          "ppl: 0 = score the second half of each window; N = aligned protocol: windows of "
          "every length end at the same positions and only their last N tokens are scored");
ABSL_FLAG(std::string, depths, "0,25,50,75,100", "passkey: needle depths in percent");
ABSL_FLAG(int, keys, 5, "passkey: random keys per (length, depth) cell");
ABSL_FLAG(bool, chat, true, "passkey: use the model's chat template");
ABSL_FLAG(int, pretrain_len, 0, "DCA pretraining length c (0: the model's context length)");
ABSL_FLAG(int, chunk_size, 0, "DCA chunk size C (0: 3c/4)");
ABSL_FLAG(int, local_window, 0, "DCA local window w (0: c/8)");
ABSL_FLAG(bool, length_temperature, false, "DCA length temperature (sf² on the softmax scale)");
ABSL_FLAG(int, piece, 512, "prefill piece size");
ABSL_FLAG(bool, json, false, "print JSON lines instead of a table");
ABSL_FLAG(std::string, infini, "none",
          "Infini variants to compare: none (no window), slide, compress, reject");
ABSL_FLAG(int, infini_window, 0, "Infini window W in tokens, a multiple of the DCA chunk length");
ABSL_FLAG(int, infini_sinks, 64, "Infini attention-sink tokens (whole KV blocks)");
ABSL_FLAG(std::string, infini_update, "linear", "Infini memory update rule: linear or delta");
ABSL_FLAG(bool, infini_mix, false, "mix the Infini memory into attention (needs gates)");
ABSL_FLAG(std::string, infini_gates, "auto",
          "Infini gates: auto (<model>.infini_gates.safetensors beside the model, else the "
          "model's own), none, or a safetensors sidecar with blk.N.infini_beta gates");
ABSL_FLAG(std::string, out, "", "tokens: where to write the text's token ids (int32 LE)");
ABSL_FLAG(std::string, dump_nll, "",
          "ppl: write every scored token's loss to FILE, one JSON line per column, length and "
          "window, with the window's token ids (tools/train/check_equivalence.py reads it)");

namespace longctx {
namespace {

absl::StatusOr<std::vector<int>> ParseInts(const std::string& s, const char* flag) {
  std::vector<int> out;
  for (absl::string_view part : absl::StrSplit(s, ',', absl::SkipEmpty())) {
    int v = 0;
    if (!absl::SimpleAtoi(part, &v) || v < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, ": bad value '", std::string(part), "'"));
    }
    out.push_back(v);
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat("--", flag, " is empty"));
  return out;
}

// One column of a comparison: a DCA mode and an Infini variant.
struct Column {
  DcaConfig dca;
  InfiniConfig infini;
  std::string name;  // "dca", "dca+slide", ...
};

struct Setup {
  LoadedModel loaded;
  std::unique_ptr<Tokenizer> tokenizer;
  std::vector<Column> columns;
};

absl::StatusOr<std::vector<std::pair<std::string, InfiniConfig>>> InfiniVariants() {
  std::vector<std::pair<std::string, InfiniConfig>> out;
  for (absl::string_view v : absl::StrSplit(absl::GetFlag(FLAGS_infini), ',', absl::SkipEmpty())) {
    InfiniConfig c;
    if (v != "none") {
      ASSIGN_OR_RETURN(c.overflow, ParseInfiniOverflow(std::string(v)));
      c.window_tokens = absl::GetFlag(FLAGS_infini_window);
      c.sink_tokens = absl::GetFlag(FLAGS_infini_sinks);
      ASSIGN_OR_RETURN(c.update, ParseInfiniUpdateRule(absl::GetFlag(FLAGS_infini_update)));
      c.mix = absl::GetFlag(FLAGS_infini_mix) && c.overflow == InfiniOverflow::kCompress;
      if (c.window_tokens <= 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("--infini=", std::string(v), " needs --infini_window"));
      }
    }
    out.emplace_back(std::string(v), c);
  }
  if (out.empty()) return absl::InvalidArgumentError("--infini is empty");
  return out;
}

std::string InfiniDescription(const InfiniConfig& c) {
  if (!c.windowed()) return "no window";
  return absl::StrCat("window ", c.window_tokens, " + ", c.sink_tokens, " sinks, ",
                      InfiniOverflowName(c.overflow), ", ", InfiniUpdateRuleName(c.update),
                      " update, mixing ", c.mix ? "on" : "off");
}

absl::StatusOr<Setup> Load(int max_len) {
  Setup s;
  std::string path = absl::GetFlag(FLAGS_model);
  if (path.empty() && std::getenv("LONGCTX_MODEL") != nullptr) path = std::getenv("LONGCTX_MODEL");
  ASSIGN_OR_RETURN(const BackendKind kind, ParseBackendKind(absl::GetFlag(FLAGS_backend)));
  ASSIGN_OR_RETURN(
      const CpuBackendOptions cpu,
      ParseCpuBackendOptions(absl::GetFlag(FLAGS_cpu_weights), absl::GetFlag(FLAGS_cpu_isa),
                             absl::GetFlag(FLAGS_cpu_kv)));
  ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend, CreateBackend(kind, cpu));
  ASSIGN_OR_RETURN(s.loaded,
                   OpenModel(path, std::move(backend), absl::GetFlag(FLAGS_infini_gates)));
  ASSIGN_OR_RETURN(Tokenizer tok, Tokenizer::Create(s.loaded.host.vocab));
  s.tokenizer = std::make_unique<Tokenizer>(std::move(tok));
  KvCacheConfig kv;
  const ModelConfig& c = s.loaded.host.config;
  kv.max_bytes = KvBytesForTokens(c, *s.loaded.backend, max_len + 64);
  RETURN_IF_ERROR(BuildModel(s.loaded, kv));
  ASSIGN_OR_RETURN(const auto variants, InfiniVariants());
  for (absl::string_view name :
       absl::StrSplit(absl::GetFlag(FLAGS_modes), ',', absl::SkipEmpty())) {
    DcaOverrides o;
    ASSIGN_OR_RETURN(o.mode, ParseDcaMode(name));
    if (absl::GetFlag(FLAGS_pretrain_len) > 0) o.pretrain_len = absl::GetFlag(FLAGS_pretrain_len);
    if (absl::GetFlag(FLAGS_chunk_size) > 0) o.chunk_size = absl::GetFlag(FLAGS_chunk_size);
    if (absl::GetFlag(FLAGS_local_window) > 0) o.local_window = absl::GetFlag(FLAGS_local_window);
    o.length_temperature = absl::GetFlag(FLAGS_length_temperature);
    ASSIGN_OR_RETURN(DcaConfig d, DcaConfig::Resolve(c, o));
    RETURN_IF_ERROR(d.Validate(kv.block_size));
    for (const auto& [name, infini] : variants) {
      RETURN_IF_ERROR(infini.Validate(d.ToParams(c.head_dim, max_len), kv.block_size));
      s.columns.push_back(
          {d, infini,
           name == "none" ? DcaModeName(d.mode) : absl::StrCat(DcaModeName(d.mode), "+", name)});
    }
  }
  return s;
}

// One JSON line per window of `r`: the column, the settings, the window's
// token ids and the loss of every scored token (PplWindowNll).
void DumpTokenNll(std::FILE* f, const Column& col, const PplResult& r,
                  std::span<const int32_t> tokens) {
  for (size_t w = 0; w < r.token_nll.size(); ++w) {
    const PplWindowNll& win = r.token_nll[w];
    std::fprintf(f,
                 "{\"mode\":\"%s\",\"dca\":\"%s\",\"infini\":\"%s\",\"length\":%d,"
                 "\"window\":%zu,\"first_token\":%lld,\"first_scored\":%d,\"tokens\":[",
                 col.name.c_str(), col.dca.DebugString().c_str(),
                 InfiniDescription(col.infini).c_str(), r.length, w,
                 static_cast<long long>(win.first_token), win.first_scored);
    for (int i = 0; i < r.length; ++i) {
      std::fprintf(f, "%s%d", i ? "," : "", tokens[static_cast<size_t>(win.first_token) + i]);
    }
    std::fprintf(f, "],\"nll\":[");
    for (size_t k = 0; k < win.nll.size(); ++k) std::fprintf(f, "%s%.9g", k ? "," : "", win.nll[k]);
    std::fprintf(f, "]}\n");
  }
}

absl::Status RunPpl() {
  ASSIGN_OR_RETURN(std::vector<int> lengths, ParseInts(absl::GetFlag(FLAGS_lengths), "lengths"));
  std::ifstream in(absl::GetFlag(FLAGS_text), std::ios::binary);
  if (!in)
    return absl::NotFoundError(absl::StrCat("cannot read --text=", absl::GetFlag(FLAGS_text)));
  std::stringstream buf;
  buf << in.rdbuf();
  ASSIGN_OR_RETURN(Setup s, Load(*std::max_element(lengths.begin(), lengths.end())));
  const std::vector<int32_t> tokens = s.tokenizer->Encode(buf.str(), false);
  const bool json = absl::GetFlag(FLAGS_json);
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> dump(nullptr, &std::fclose);
  if (!absl::GetFlag(FLAGS_dump_nll).empty()) {
    dump.reset(std::fopen(absl::GetFlag(FLAGS_dump_nll).c_str(), "w"));
    if (dump == nullptr) {
      return absl::PermissionDeniedError(
          absl::StrCat("cannot write --dump_nll=", absl::GetFlag(FLAGS_dump_nll)));
    }
  }
  if (!json) {
    if (absl::GetFlag(FLAGS_score_last) > 0) {
      std::printf(
          "text: %s (%zu tokens); backend %s; protocol: aligned windows ending every %d "
          "tokens, loss over the same last %d tokens of each window at every length\n",
          absl::GetFlag(FLAGS_text).c_str(), tokens.size(), s.loaded.backend->Name().c_str(),
          *std::max_element(lengths.begin(), lengths.end()), absl::GetFlag(FLAGS_score_last));
    } else {
      std::printf(
          "text: %s (%zu tokens); backend %s; protocol: non-overlapping windows from the "
          "start, loss over the second half of each window\n",
          absl::GetFlag(FLAGS_text).c_str(), tokens.size(), s.loaded.backend->Name().c_str());
    }
    for (const Column& col : s.columns) {
      std::printf("%s: %s; %s\n", col.name.c_str(), col.dca.DebugString().c_str(),
                  InfiniDescription(col.infini).c_str());
    }
    std::printf("| tokens | windows |");
    for (const Column& col : s.columns) std::printf(" %s PPL |", col.name.c_str());
    std::printf(" seconds |\n|---:|---:|");
    for (size_t i = 0; i < s.columns.size(); ++i) std::printf("---:|");
    std::printf("---:|\n");
  }
  for (int len : lengths) {
    std::vector<PplResult> row;
    for (const Column& col : s.columns) {
      const DcaConfig& d = col.dca;
      PplProtocol protocol;
      if (absl::GetFlag(FLAGS_score_last) > 0) {
        protocol.aligned_span = *std::max_element(lengths.begin(), lengths.end());
        protocol.score_last = absl::GetFlag(FLAGS_score_last);
      }
      protocol.keep_token_nll = dump != nullptr;
      ASSIGN_OR_RETURN(PplResult r,
                       EvalPerplexity(*s.loaded.model, tokens, len, absl::GetFlag(FLAGS_windows), d,
                                      absl::GetFlag(FLAGS_piece), protocol, col.infini));
      if (dump != nullptr) {
        DumpTokenNll(dump.get(), col, r, tokens);
        if (std::fflush(dump.get()) != 0) {
          return absl::DataLossError(
              absl::StrCat("writing --dump_nll=", absl::GetFlag(FLAGS_dump_nll), " failed"));
        }
      }
      if (json) {
        std::printf(
            "{\"eval\":\"ppl\",\"mode\":\"%s\",\"length\":%d,\"windows\":%d,"
            "\"scored_tokens\":%lld,\"nll\":%.6f,\"ppl\":%.4f,\"seconds\":%.2f}\n",
            col.name.c_str(), len, r.windows, static_cast<long long>(r.scored_tokens), r.nll, r.ppl,
            r.seconds);
        std::fflush(stdout);
      }
      row.push_back(r);
    }
    if (!json) {
      double secs = 0;
      std::printf("| %d | %d |", len, row[0].windows);
      for (const PplResult& r : row) {
        std::printf(" %.3f |", r.ppl);
        secs += r.seconds;
      }
      std::printf(" %.0f |\n", secs);
      std::fflush(stdout);
    }
  }
  return absl::OkStatus();
}

// The text's token ids as ppl sees them, int32 little-endian, for tools/train/
// (which has no tokenizer of its own).
absl::Status RunTokens() {
  std::ifstream in(absl::GetFlag(FLAGS_text), std::ios::binary);
  if (!in)
    return absl::NotFoundError(absl::StrCat("cannot read --text=", absl::GetFlag(FLAGS_text)));
  std::stringstream buf;
  buf << in.rdbuf();
  std::string path = absl::GetFlag(FLAGS_model);
  if (path.empty() && std::getenv("LONGCTX_MODEL") != nullptr) path = std::getenv("LONGCTX_MODEL");
  ASSIGN_OR_RETURN(HostModel host, LoadHostModel(path));
  ASSIGN_OR_RETURN(Tokenizer tok, Tokenizer::Create(host.vocab));
  const std::vector<int32_t> tokens = tok.Encode(buf.str(), false);
  std::ofstream out(absl::GetFlag(FLAGS_out), std::ios::binary);
  for (int32_t t : tokens) {
    const uint32_t u = static_cast<uint32_t>(t);
    const char le[4] = {static_cast<char>(u), static_cast<char>(u >> 8), static_cast<char>(u >> 16),
                        static_cast<char>(u >> 24)};
    out.write(le, 4);
  }
  if (!out.flush()) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot write --out=", absl::GetFlag(FLAGS_out)));
  }
  std::printf("%s: %zu tokens -> %s\n", absl::GetFlag(FLAGS_text).c_str(), tokens.size(),
              absl::GetFlag(FLAGS_out).c_str());
  return absl::OkStatus();
}

absl::Status RunPasskey() {
  ASSIGN_OR_RETURN(std::vector<int> lengths, ParseInts(absl::GetFlag(FLAGS_lengths), "lengths"));
  ASSIGN_OR_RETURN(std::vector<int> depths, ParseInts(absl::GetFlag(FLAGS_depths), "depths"));
  ASSIGN_OR_RETURN(Setup s, Load(*std::max_element(lengths.begin(), lengths.end()) + 16));
  std::unique_ptr<ChatTemplate> chat;
  if (absl::GetFlag(FLAGS_chat)) {
    ASSIGN_OR_RETURN(ChatTemplate t, ChatTemplateFromJinja(s.loaded.host.vocab.chat_template));
    chat = std::make_unique<ChatTemplate>(t);
  }
  const bool json = absl::GetFlag(FLAGS_json);
  const int keys = absl::GetFlag(FLAGS_keys);
  for (const Column& col : s.columns) {
    const DcaConfig& d = col.dca;
    if (!json) {
      std::printf("\n%s: %s; %s; %d keys per cell; %s prompt\n| tokens |", col.name.c_str(),
                  d.DebugString().c_str(), InfiniDescription(col.infini).c_str(), keys,
                  chat ? "chat" : "raw");
      for (int depth : depths) std::printf(" %d%% |", depth);
      std::printf(" mean |\n|---:|");
      for (size_t i = 0; i <= depths.size(); ++i) std::printf("---:|");
      std::printf("\n");
    }
    for (int len : lengths) {
      int total_hits = 0;
      std::string cells;
      for (int depth : depths) {
        int hits = 0;
        for (int k = 0; k < keys; ++k) {
          const uint64_t seed = static_cast<uint64_t>(len) * 1000003u + depth * 101u + k;
          ASSIGN_OR_RETURN(PasskeyPrompt p,
                           BuildPasskeyPrompt(*s.tokenizer, chat.get(), len, depth / 100.0, seed));
          ASSIGN_OR_RETURN(std::string answer,
                           GreedyAnswer(*s.loaded.model, *s.tokenizer, p.tokens, d,
                                        absl::GetFlag(FLAGS_piece), 8, col.infini));
          const bool hit = answer.find(p.key) != std::string::npos;
          hits += hit;
          if (json) {
            std::printf(
                "{\"eval\":\"passkey\",\"mode\":\"%s\",\"length\":%d,\"prompt_tokens\":%zu,"
                "\"depth\":%d,\"key\":\"%s\",\"hit\":%s}\n",
                col.name.c_str(), len, p.tokens.size(), depth, p.key.c_str(),
                hit ? "true" : "false");
            std::fflush(stdout);
          }
        }
        total_hits += hits;
        cells += absl::StrFormat(" %d/%d |", hits, keys);
      }
      if (!json) {
        std::printf("| %d |%s %.0f%% |\n", len, cells.c_str(),
                    100.0 * total_hits / (keys * static_cast<double>(depths.size())));
        std::fflush(stdout);
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace longctx

int main(int argc, char** argv) {
  longctx::PrepareCpuProcess(argv);
  std::vector<char*> rest = longctx::ParseToolFlags(
      argc, argv,
      "Long-context evaluation, RoPE vs DCA.\n  longctx-eval ppl --text=FILE --lengths=N,... "
      "[flags]\n  longctx-eval passkey --lengths=N,... [flags]\n  longctx-eval tokens --text=FILE "
      "--out=FILE.i32");
  const std::string cmd = rest.size() > 1 ? rest[1] : "";
  absl::Status s;
  if (cmd == "ppl") {
    s = longctx::RunPpl();
  } else if (cmd == "passkey") {
    s = longctx::RunPasskey();
  } else if (cmd == "tokens") {
    s = longctx::RunTokens();
  } else {
    std::fprintf(stderr,
                 "usage: longctx-eval ppl|passkey|tokens [flags]  (--helpfull for flags)\n");
    return 2;
  }
  if (!s.ok()) {
    std::fprintf(stderr, "longctx-eval: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
