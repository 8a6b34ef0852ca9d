#include "engine/model/infini_window.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "engine/util/status_macros.h"

namespace longctx {
namespace {

// Host staging for one fold: layers are gathered in groups so that reading
// every block once per group stays within this many bytes of K and V.
constexpr int64_t kFoldStagingBytes = int64_t{64} << 20;

}  // namespace

InfiniWindow::InfiniWindow(LlamaModel* model, const InfiniConfig& config, const cpu::DcaParams& dca)
    : model_(model), config_(config), dca_(dca), evicted_end_(config.sink_tokens) {}

InfiniWindow::~InfiniWindow() { model_->kv_cache().Release(seq_); }

absl::StatusOr<std::unique_ptr<InfiniWindow>> InfiniWindow::Create(LlamaModel* model,
                                                                   const InfiniConfig& config,
                                                                   const cpu::DcaParams& dca) {
  RETURN_IF_ERROR(config.Validate(dca, model->kv_cache().geometry().block_size));
  if (config.mix && !model->has_infini_gates()) {
    return absl::FailedPreconditionError(
        "infini.mix: the model has no trained Infini gates (blk.N.infini_beta); mixing is off");
  }
  std::unique_ptr<InfiniWindow> w(new InfiniWindow(model, config, dca));
  if (config.windowed() && config.overflow == InfiniOverflow::kCompress) {
    const ModelConfig& c = model->config();
    w->memory_.emplace(c.n_layers, c.n_kv_heads, c.head_dim, config.update, config.eps);
  }
  return w;
}

int InfiniWindow::WindowStart(int i) const {
  if (!config_.windowed()) return 0;
  const int L = dca_.chunk_len;
  return std::max(0, (i / L - config_.window_tokens / L + 1) * L);
}

absl::StatusOr<int> InfiniWindow::StepCapacity(int wanted) {
  if (wanted <= 0) return absl::InvalidArgumentError("infini: a step needs at least one token");
  if (!config_.windowed()) return wanted;
  const int n = seq_.length();
  if (config_.overflow == InfiniOverflow::kReject && WindowStart(n) > config_.sink_tokens) {
    ++counters_.rejected_steps;
    return absl::ResourceExhaustedError(
        absl::StrCat("session window full: ", n, " tokens held, window ", config_.window_tokens,
                     " + ", config_.sink_tokens, " sink tokens, overflow policy reject"));
  }
  const int L = dca_.chunk_len;
  return std::min(wanted, L - n % L);
}

absl::Status InfiniWindow::PrepareStep(int n, StepItem* item) {
  if (item->dca.chunk_len != dca_.chunk_len || item->dca.chunk_size != dca_.chunk_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("infini: step DCA chunks (", item->dca.chunk_len, ", ", item->dca.chunk_size,
                     ") differ from the session's (", dca_.chunk_len, ", ", dca_.chunk_size, ")"));
  }
  ASSIGN_OR_RETURN(const int cap, StepCapacity(n));
  if (cap < n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "infini: a step of ", n, " tokens crosses a chunk boundary (room for ", cap, ")"));
  }
  if (config_.windowed()) {
    const int L = dca_.chunk_len;
    const int target = std::max(config_.sink_tokens, WindowStart(seq_.length()));
    // One chunk at a time, oldest first: the delta rule's segment is the chunk.
    while (evicted_end_ < target) {
      const int end = std::min(target, (evicted_end_ / L + 1) * L);
      if (config_.overflow == InfiniOverflow::kCompress) {
        RETURN_IF_ERROR(Fold(evicted_end_, end));
        counters_.folded_tokens += end - evicted_end_;
        ++counters_.chunks_folded;
      } else {
        counters_.dropped_tokens += end - evicted_end_;
        ++counters_.chunks_dropped;
      }
      RETURN_IF_ERROR(model_->kv_cache().ReleaseRange(seq_, evicted_end_, end));
      evicted_end_ = end;
    }
  }
  item->seq = &seq_;
  item->dca.sink_tokens = config_.sink_tokens;
  item->dca.window_start = config_.windowed() ? evicted_end_ : 0;
  item->infini = config_.mix ? memory() : nullptr;
  return absl::OkStatus();
}

absl::Status InfiniWindow::Fold(int begin, int end) {
  const KvGeometry& g = model_->kv_cache().geometry();
  Backend& backend = *model_->backend();
  const int bs = g.block_size, L = dca_.chunk_len, width = g.n_kv_heads * g.head_dim;
  const int T = end - begin;
  const int64_t plane = int64_t{bs} * width;  // one of K or V of one layer in a block
  const int64_t layer_bytes = 2 * int64_t{T} * width * static_cast<int64_t>(sizeof(float));
  const int group =
      static_cast<int>(std::clamp<int64_t>(kFoldStagingBytes / layer_bytes, 1, g.n_layers));
  std::vector<float> block(static_cast<size_t>(g.ElementsPerBlock()));
  std::vector<float> staged(static_cast<size_t>(group) * 2 * T * width);
  // Cached keys sit rotated at j mod L; rotating back at −(j mod L) restores
  // the un-rotated keys the memory works on (docs/design.md §4).
  std::vector<int32_t> back(static_cast<size_t>(T));
  for (int j = begin; j < end; ++j) back[static_cast<size_t>(j - begin)] = -(j % L);
  if (backend.HasInfiniKernels()) {
    // On the device: each layer's K and V planes straight from the cache.
    std::vector<int32_t> blocks;
    for (int j = begin; j < end; j += bs) {
      const int32_t physical = seq_.block_table()[static_cast<size_t>(j / bs)];
      if (physical == kAbsentBlock) {
        return absl::InternalError(absl::StrCat("infini fold: token ", j, " has no KV"));
      }
      blocks.push_back(physical);
    }
    for (int l = 0; l < g.n_layers; ++l) {
      RETURN_IF_ERROR(memory_->FoldKv(backend, l, blocks, back, model_->inv_freq()));
    }
    memory_->CountFolded(T);
    return absl::OkStatus();
  }
  for (int l0 = 0; l0 < g.n_layers; l0 += group) {
    const int nl = std::min(group, g.n_layers - l0);
    for (int j = begin; j < end; j += bs) {
      const int32_t physical = seq_.block_table()[static_cast<size_t>(j / bs)];
      if (physical == kAbsentBlock) {
        return absl::InternalError(absl::StrCat("infini fold: token ", j, " has no KV"));
      }
      RETURN_IF_ERROR(backend.KvReadBlock(physical, block.data()));
      for (int l = 0; l < nl; ++l) {
        const float* src = block.data() + int64_t{l0 + l} * 2 * plane;
        float* k = staged.data() + int64_t{l} * 2 * T * width;
        float* v = k + int64_t{T} * width;
        std::copy(src, src + plane, k + int64_t{j - begin} * width);
        std::copy(src + plane, src + 2 * plane, v + int64_t{j - begin} * width);
      }
    }
    for (int l = 0; l < nl; ++l) {
      float* k = staged.data() + int64_t{l} * 2 * T * width;
      cpu::Rope(k, back.data(), model_->inv_freq().data(), T, g.n_kv_heads, g.head_dim);
      memory_->Fold(l0 + l, k, k + int64_t{T} * width, T);
    }
  }
  memory_->CountFolded(T);
  return absl::OkStatus();
}

absl::Status InfiniWindow::Ingest(std::span<const int32_t> tokens, LogitsMode mode,
                                  std::vector<float>* logits) {
  if (tokens.empty()) return absl::InvalidArgumentError("infini: nothing to ingest");
  const int last = seq_.length() + static_cast<int>(tokens.size()) - 1;
  if (config_.windowed() && config_.overflow == InfiniOverflow::kReject &&
      WindowStart(last) > config_.sink_tokens) {
    ++counters_.rejected_steps;
    return absl::ResourceExhaustedError(
        absl::StrCat("session window full: ", tokens.size(), " more tokens do not fit a window of ",
                     config_.window_tokens, " + ", config_.sink_tokens,
                     " sink tokens (overflow policy reject)"));
  }
  std::vector<float> step_logits;
  if (logits != nullptr) logits->clear();
  size_t done = 0;
  while (done < tokens.size()) {
    ASSIGN_OR_RETURN(const int n, StepCapacity(static_cast<int>(tokens.size() - done)));
    StepItem item;
    item.dca = dca_;
    RETURN_IF_ERROR(PrepareStep(n, &item));
    item.tokens = tokens.subspan(done, static_cast<size_t>(n));
    const bool last_step = done + static_cast<size_t>(n) == tokens.size();
    item.logits = mode == LogitsMode::kAll                   ? LogitsMode::kAll
                  : (mode == LogitsMode::kLast && last_step) ? LogitsMode::kLast
                                                             : LogitsMode::kNone;
    RETURN_IF_ERROR(model_->Forward(std::span<const StepItem>(&item, 1),
                                    logits != nullptr ? &step_logits : nullptr));
    if (logits != nullptr && item.logits != LogitsMode::kNone) {
      logits->insert(logits->end(), step_logits.begin(), step_logits.end());
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status InfiniWindow::Truncate(int length) {
  if (length < 0 || length > seq_.length()) {
    return absl::InvalidArgumentError(absl::StrCat("infini: cannot truncate a sequence of ",
                                                   seq_.length(), " tokens to ", length));
  }
  if (config_.windowed() && evicted_end_ > std::max(config_.sink_tokens, WindowStart(length))) {
    return absl::FailedPreconditionError(absl::StrCat(
        "infini: rolling back to ", length, " tokens needs KV of tokens from ", WindowStart(length),
        " that already left the window (evicted up to ", evicted_end_, ")"));
  }
  model_->kv_cache().Truncate(seq_, length);
  return absl::OkStatus();
}

absl::Status InfiniWindow::Rollback(int length) {
  if (length < 0 || length > seq_.length()) {
    return absl::InvalidArgumentError(absl::StrCat("infini: cannot roll a sequence of ",
                                                   seq_.length(), " tokens back to ", length));
  }
  if (config_.windowed() && evicted_end_ > config_.sink_tokens && length < evicted_end_) {
    return absl::FailedPreconditionError(
        absl::StrCat("infini: rolling back to ", length, " tokens would drop tokens up to ",
                     evicted_end_, " that already left the window"));
  }
  model_->kv_cache().Truncate(seq_, length);
  return absl::OkStatus();
}

absl::Status InfiniWindow::RestoreMemory(InfiniMemory memory) {
  if (!memory_.has_value()) {
    return absl::InvalidArgumentError(
        "infini: this session keeps no memory (overflow is not compress)");
  }
  if (memory.n_layers() != memory_->n_layers() || memory.n_kv_heads() != memory_->n_kv_heads() ||
      memory.head_dim() != memory_->head_dim() || memory.rule() != memory_->rule()) {
    return absl::InvalidArgumentError("infini: imported memory does not match the model or rule");
  }
  memory_ = std::move(memory);
  return absl::OkStatus();
}

absl::Status InfiniWindow::Resume(int evicted_end, std::optional<InfiniMemory> memory) {
  const int sink = config_.sink_tokens;
  if (!config_.windowed() || seq_.length() != sink || evicted_end_ != sink) {
    return absl::FailedPreconditionError(
        "infini: resume needs a windowed session holding exactly its sink tokens");
  }
  if (evicted_end < sink || (evicted_end != sink && evicted_end % dca_.chunk_len != 0)) {
    return absl::InvalidArgumentError(absl::StrCat("infini: resume point ", evicted_end,
                                                   " is not a chunk boundary after the sinks"));
  }
  if (memory_.has_value()) {
    if (!memory.has_value()) {
      return absl::InvalidArgumentError("infini: resuming a compress session needs its memory");
    }
    RETURN_IF_ERROR(RestoreMemory(*std::move(memory)));
  }
  RETURN_IF_ERROR(model_->kv_cache().AppendAbsent(seq_, evicted_end - sink));
  evicted_end_ = evicted_end;
  return absl::OkStatus();
}

}  // namespace longctx
