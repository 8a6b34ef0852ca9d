#include "engine/eval/eval.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/model/infini_window.h"
#include "engine/tokenizer/stream_decoder.h"
#include "engine/util/status_macros.h"

namespace longctx {
namespace {

// Prefills `tokens` into the session `w` in pieces; `want_logits(first, n)` says
// whether a piece needs all its logits (kAll) or none; `on_logits(first, n,
// logits)` gets them.
absl::Status Prefill(InfiniWindow& w, std::span<const int32_t> tokens, int piece,
                     const std::function<bool(int, int)>& want_logits,
                     const std::function<void(int, int, const std::vector<float>&)>& on_logits) {
  std::vector<float> logits;
  for (int first = 0; first < static_cast<int>(tokens.size()); first += piece) {
    const int n = std::min<int>(piece, static_cast<int>(tokens.size()) - first);
    const bool all = want_logits(first, n);
    RETURN_IF_ERROR(w.Ingest(tokens.subspan(first, n), all ? LogitsMode::kAll : LogitsMode::kNone,
                             &logits));
    if (all) on_logits(first, n, logits);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<PplResult> EvalPerplexity(LlamaModel& model, std::span<const int32_t> tokens,
                                         int length, int max_windows, const DcaConfig& dca,
                                         int piece, const PplProtocol& protocol,
                                         const InfiniConfig& infini) {
  if (length < 4 || piece < 1 || max_windows < 1) {
    return absl::InvalidArgumentError("perplexity: length >= 4, piece >= 1, windows >= 1");
  }
  const bool aligned = protocol.aligned_span > 0;
  if (aligned && (protocol.aligned_span < length || protocol.score_last < 1 ||
                  protocol.score_last >= length)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "perplexity: aligned protocol needs span >= length ", length, " > score_last >= 1"));
  }
  const int stride = aligned ? protocol.aligned_span : length;
  const int windows = std::min<int>(max_windows, static_cast<int>(tokens.size()) / stride);
  if (windows < 1) {
    return absl::InvalidArgumentError(absl::StrCat("perplexity: the text has ", tokens.size(),
                                                   " tokens, fewer than one window of ", length));
  }
  const int V = model.config().vocab_size;
  const auto t0 = std::chrono::steady_clock::now();
  PplResult r;
  r.length = length;
  r.windows = windows;
  double sum = 0;
  for (int w = 0; w < windows; ++w) {
    const size_t first_token = static_cast<size_t>(w + 1) * stride - length;
    std::span<const int32_t> win = tokens.subspan(first_token, length);
    const int half = aligned ? length - protocol.score_last : length / 2;
    ASSIGN_OR_RETURN(
        std::unique_ptr<InfiniWindow> session,
        InfiniWindow::Create(&model, infini, dca.ToParams(model.config().head_dim, length)));
    // Logits at position t predict token t + 1: score t in [half - 1, length - 2].
    PplWindowNll* kept = nullptr;
    if (protocol.keep_token_nll) {
      kept = &r.token_nll.emplace_back();
      kept->first_token = static_cast<int64_t>(first_token);
      kept->first_scored = half - 1;
    }
    auto want = [&](int first, int n) { return first + n > half - 1; };
    auto take = [&](int first, int n, const std::vector<float>& logits) {
      for (int i = 0; i < n; ++i) {
        const int t = first + i;
        if (t < half - 1 || t > length - 2) continue;
        const float* row = logits.data() + static_cast<size_t>(i) * V;
        const float m = *std::max_element(row, row + V);
        double s = 0;
        for (int v = 0; v < V; ++v) s += std::exp(double{row[v] - m});
        const double nll = m + std::log(s) - row[win[t + 1]];
        sum += nll;
        if (kept != nullptr) kept->nll.push_back(nll);
        ++r.scored_tokens;
      }
    };
    RETURN_IF_ERROR(Prefill(*session, win, piece, want, take));
  }
  r.nll = sum / static_cast<double>(r.scored_tokens);
  r.ppl = std::exp(r.nll);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

absl::StatusOr<PasskeyPrompt> BuildPasskeyPrompt(const Tokenizer& tokenizer,
                                                 const ChatTemplate* chat, int length,
                                                 double depth, uint64_t seed) {
  static constexpr char kIntro[] =
      "There is an important info hidden inside a lot of irrelevant text. Find it and memorize "
      "it. I will quiz you about the important information there.\n\n";
  static constexpr char kFiller[] =
      "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back "
      "again. ";
  static constexpr char kQuestion[] = "\n\nWhat is the pass key? The pass key is";
  std::mt19937_64 rng(seed);
  const std::string key = absl::StrCat(std::uniform_int_distribution<int>(10000, 99999)(rng));
  const std::string needle =
      absl::StrCat("The pass key is ", key, ". Remember it. ", key, " is the pass key. ");

  std::vector<int32_t> head, tail;
  if (chat != nullptr) {
    // The body goes where the marker is; the answer is primed after the turn header.
    static constexpr char kMarker[] = "\x01BODY\x01";
    const ChatMessage msg{"user", kMarker};
    const std::string text = FormatChat({&msg, 1}, true, *chat);
    const std::vector<std::string> parts = absl::StrSplit(text, kMarker);
    head = tokenizer.Encode(parts[0], true);
    tail = tokenizer.Encode(absl::StrCat(parts[1], "The pass key is"), true);
  }
  auto append = [&](std::vector<int32_t>& v, const std::string& s) {
    const auto ids = tokenizer.Encode(s, false);
    v.insert(v.end(), ids.begin(), ids.end());
  };
  append(head, kIntro);
  std::vector<int32_t> question;
  append(question, chat != nullptr ? "\n\nWhat is the pass key?" : kQuestion);
  const std::vector<int32_t> filler = tokenizer.Encode(kFiller, false);
  const std::vector<int32_t> needle_ids = tokenizer.Encode(needle, false);
  const int fixed = static_cast<int>(head.size() + question.size() + tail.size() + needle_ids.size());
  const int reps = (length - fixed) / static_cast<int>(filler.size());
  if (reps < 1) {
    return absl::InvalidArgumentError(absl::StrCat("passkey: length ", length, " is too short"));
  }
  const int at = static_cast<int>(std::lround(std::clamp(depth, 0.0, 1.0) * reps));
  PasskeyPrompt p;
  p.key = key;
  p.tokens = head;
  for (int r = 0; r <= reps; ++r) {
    if (r == at) p.tokens.insert(p.tokens.end(), needle_ids.begin(), needle_ids.end());
    if (r < reps) p.tokens.insert(p.tokens.end(), filler.begin(), filler.end());
  }
  p.tokens.insert(p.tokens.end(), question.begin(), question.end());
  p.tokens.insert(p.tokens.end(), tail.begin(), tail.end());
  return p;
}

absl::StatusOr<std::string> GreedyAnswer(LlamaModel& model, const Tokenizer& tokenizer,
                                         std::span<const int32_t> prompt, const DcaConfig& dca,
                                         int piece, int max_new, const InfiniConfig& infini) {
  const int n = static_cast<int>(prompt.size());
  ASSIGN_OR_RETURN(std::unique_ptr<InfiniWindow> session,
                   InfiniWindow::Create(&model, infini,
                                        dca.ToParams(model.config().head_dim, n + max_new)));
  const int V = model.config().vocab_size;
  std::vector<float> last;
  auto want = [&](int first, int len) { return first + len == n; };
  auto take = [&](int, int len, const std::vector<float>& logits) {
    last.assign(logits.end() - V, logits.end());
    (void)len;
  };
  RETURN_IF_ERROR(Prefill(*session, prompt, piece, want, take));
  std::string text;
  StreamDecoder decoder(&tokenizer, /*skip_special=*/true);
  for (int i = 0; i < max_new; ++i) {
    int32_t next = static_cast<int32_t>(std::max_element(last.begin(), last.end()) - last.begin());
    if (tokenizer.IsEog(next)) break;
    text += decoder.Feed(next);
    RETURN_IF_ERROR(session->Ingest({&next, 1}, LogitsMode::kLast, &last));
  }
  return text + decoder.Flush();
}

}  // namespace longctx
