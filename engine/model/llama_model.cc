#include "engine/model/llama_model.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/model/dca_config.h"
#include "engine/model/infini_memory.h"
#include "engine/util/status_macros.h"

namespace longctx {

struct LlamaModel::Layer {
  Tensor attn_norm, wq, wk, wv, wo, bq, bk, bv, ffn_norm, w_gate, w_up, w_down;
  bool has_bias = false;
};

// The hidden-state rows whose logits a step computes: the downloaded ones
// (kLast, kAll; only when the caller takes logits) first, in item order, then
// the greedy ones with their items.
struct LlamaModel::LogitRows {
  // new_tokens[i]: rows of item i in the step's hidden states.
  LogitRows(std::span<const StepItem> items, std::span<const int> new_tokens, bool want_logits) {
    int64_t row = 0;
    for (size_t i = 0; i < items.size(); ++i) {
      const int n = new_tokens[i];
      if (want_logits && items[i].logits == LogitsMode::kAll) {
        for (int r = 0; r < n; ++r) rows.push_back(static_cast<int32_t>(row + r));
      } else if (want_logits && items[i].logits == LogitsMode::kLast) {
        rows.push_back(static_cast<int32_t>(row + n - 1));
      }
      row += n;
    }
    n_full = static_cast<int64_t>(rows.size());
    row = 0;
    for (size_t i = 0; i < items.size(); ++i) {
      row += new_tokens[i];
      if (items[i].logits != LogitsMode::kGreedy) continue;
      rows.push_back(static_cast<int32_t>(row - 1));
      greedy_items.push_back(i);
    }
  }
  std::vector<int32_t> rows;
  int64_t n_full = 0;
  std::vector<size_t> greedy_items;
};

namespace {

// Rows of logits computed per pass, bounding scratch for long kAll requests.
constexpr int64_t kLogitRowsPerPass = 256;

}  // namespace

int64_t KvBytesForTokens(const ModelConfig& c, const Backend& backend, int64_t tokens,
                         int block_size) {
  const int64_t per_token = int64_t{2} * c.n_layers * c.n_kv_heads * c.head_dim *
                            static_cast<int64_t>(DTypeSize(backend.KvType()));
  return per_token * (tokens + 2 * block_size);
}

LlamaModel::~LlamaModel() = default;

absl::StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::Create(const HostModel& host,
                                                               Backend* backend,
                                                               const KvCacheConfig& kv_config) {
  RETURN_IF_ERROR(host.config.Validate());
  std::unique_ptr<LlamaModel> m(new LlamaModel());
  m->config_ = host.config;
  m->backend_ = backend;
  const ModelConfig& c = m->config_;

  auto upload = [&](const std::string& name, int64_t rows, int64_t cols) -> absl::StatusOr<Tensor> {
    auto it = host.tensors.find(name);
    if (it == host.tensors.end()) {
      return absl::InvalidArgumentError(absl::StrCat("model: missing tensor ", name));
    }
    if (it->second.numel() != rows * cols) {
      return absl::InvalidArgumentError(absl::StrCat("model: tensor ", name, " has ",
                                                     it->second.numel(), " elements, want ", rows,
                                                     "x", cols));
    }
    const HostTensor& h = it->second;
    const bool raw = h.dtype != DType::kF32;
    Tensor t{nullptr, raw ? h.dtype : backend->WeightType(), rows, cols};
    ASSIGN_OR_RETURN(DeviceBuffer buf, backend->Allocate(t.bytes()));
    t.data = buf.data();
    if (raw) {
      RETURN_IF_ERROR(backend->UploadRaw(t, h.raw));
    } else if (h.synthetic()) {
      RETURN_IF_ERROR(backend->FillUniform(t, h.fill_seed, h.fill_lo, h.fill_hi));
    } else {
      RETURN_IF_ERROR(backend->Upload(t, h.data.data()));
    }
    m->weight_buffers_.push_back(std::move(buf));
    return t;
  };

  const int64_t D = c.d_model, hd = c.head_dim;
  const int64_t q_width = c.n_heads * hd, kv_width = c.n_kv_heads * hd;
  ASSIGN_OR_RETURN(m->token_embd_, upload("token_embd.weight", c.vocab_size, D));
  ASSIGN_OR_RETURN(m->output_norm_, upload("output_norm.weight", 1, D));
  if (c.tied_embeddings) {
    m->output_ = m->token_embd_;
  } else {
    ASSIGN_OR_RETURN(m->output_, upload("output.weight", c.vocab_size, D));
  }
  m->layers_.resize(static_cast<size_t>(c.n_layers));
  for (int l = 0; l < c.n_layers; ++l) {
    Layer& L = m->layers_[static_cast<size_t>(l)];
    const std::string p = absl::StrCat("blk.", l, ".");
    ASSIGN_OR_RETURN(L.attn_norm, upload(p + "attn_norm.weight", 1, D));
    ASSIGN_OR_RETURN(L.wq, upload(p + "attn_q.weight", q_width, D));
    ASSIGN_OR_RETURN(L.wk, upload(p + "attn_k.weight", kv_width, D));
    ASSIGN_OR_RETURN(L.wv, upload(p + "attn_v.weight", kv_width, D));
    ASSIGN_OR_RETURN(L.wo, upload(p + "attn_output.weight", D, q_width));
    if (c.qkv_bias) {
      L.has_bias = true;
      ASSIGN_OR_RETURN(L.bq, upload(p + "attn_q.bias", 1, q_width));
      ASSIGN_OR_RETURN(L.bk, upload(p + "attn_k.bias", 1, kv_width));
      ASSIGN_OR_RETURN(L.bv, upload(p + "attn_v.bias", 1, kv_width));
    }
    ASSIGN_OR_RETURN(L.ffn_norm, upload(p + "ffn_norm.weight", 1, D));
    ASSIGN_OR_RETURN(L.w_gate, upload(p + "ffn_gate.weight", c.d_ff, D));
    ASSIGN_OR_RETURN(L.w_up, upload(p + "ffn_up.weight", c.d_ff, D));
    ASSIGN_OR_RETURN(L.w_down, upload(p + "ffn_down.weight", D, c.d_ff));
  }
  RETURN_IF_ERROR(m->LoadInfiniGates(host));
  m->inv_freq_ = RopeInverseFrequencies(c, /*with_scaling=*/true);
  KvCacheConfig kv = kv_config;
  if (kv.max_bytes == 0) kv.max_bytes = AutoKvBytes(backend->FreeDeviceBytes());
  ASSIGN_OR_RETURN(m->kv_, KvCache::Create(backend, c.n_layers, c.n_kv_heads, c.head_dim, kv));
  return m;
}

int64_t AutoKvBytes(const absl::StatusOr<int64_t>& free_device_bytes) {
  constexpr int64_t kGiB = int64_t{1} << 30;
  if (!free_device_bytes.ok()) return 2 * kGiB;
  return std::max(kGiB, *free_device_bytes / 10 * 9 - 4 * kGiB);
}

absl::Status LlamaModel::LoadInfiniGates(const HostModel& host) {
  const ModelConfig& c = config_;
  int found = 0;
  std::vector<float> beta(static_cast<size_t>(c.n_layers) * c.n_heads);
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string name = absl::StrCat("blk.", l, ".infini_beta");
    auto it = host.tensors.find(name);
    if (it == host.tensors.end()) continue;
    if (it->second.numel() != c.n_heads) {
      return absl::InvalidArgumentError(
          absl::StrCat("model: tensor ", name, " has ", it->second.numel(),
                       " elements, want one per q head: ", c.n_heads));
    }
    std::copy(it->second.data.begin(), it->second.data.end(),
              beta.begin() + int64_t{l} * c.n_heads);
    ++found;
  }
  if (found != 0 && found != c.n_layers) {
    return absl::InvalidArgumentError(absl::StrCat("model: Infini gates for ", found, " of ",
                                                   c.n_layers, " layers; all or none"));
  }
  if (found != 0) infini_beta_ = std::move(beta);
  return absl::OkStatus();
}

std::span<const float> LlamaModel::infini_beta(int layer) const {
  if (infini_beta_.empty()) return {};
  return std::span<const float>(infini_beta_)
      .subspan(static_cast<size_t>(layer) * config_.n_heads, static_cast<size_t>(config_.n_heads));
}

absl::Status LlamaModel::EnsureScratch(int64_t tokens) {
  if (tokens <= scratch_tokens_) return absl::OkStatus();
  const ModelConfig& c = config_;
  const DType t = backend_->ActivationType();
  const int64_t D = c.d_model, qw = int64_t{c.n_heads} * c.head_dim,
                kvw = int64_t{c.n_kv_heads} * c.head_dim, F = c.d_ff;
  const int64_t R = std::min(tokens, kLogitRowsPerPass);
  const int64_t per_token = 2 * D + 2 * qw + 2 * kvw + 2 * F;
  const int64_t elements = tokens * per_token + R * (D + c.vocab_size);
  ASSIGN_OR_RETURN(scratch_, backend_->Allocate(static_cast<size_t>(elements) * DTypeSize(t)));
  char* p = static_cast<char*>(scratch_.data());
  auto take = [&](int64_t rows, int64_t cols) {
    Tensor x{p, t, rows, cols};
    p += x.bytes();
    return x;
  };
  x_ = take(tokens, D);
  xn_ = take(tokens, D);
  q_ = take(tokens, qw);
  attn_ = take(tokens, qw);
  k_ = take(tokens, kvw);
  v_ = take(tokens, kvw);
  gate_ = take(tokens, F);
  up_ = take(tokens, F);
  logits_rows_ = take(R, D);
  logits_ = take(R, c.vocab_size);
  scratch_tokens_ = tokens;
  return absl::OkStatus();
}

absl::Status LlamaModel::Forward(std::span<const StepItem> items, std::vector<float>* logits) {
  int64_t total = 0;
  const int block_size = kv_->geometry().block_size;
  for (const StepItem& it : items) {
    if ((it.seq == nullptr) == (it.external == nullptr) || it.tokens.empty()) {
      return absl::InvalidArgumentError(
          "forward: every item needs tokens and either a sequence or external attention");
    }
    if (it.logits == LogitsMode::kGreedy && it.greedy_token == nullptr) {
      return absl::InvalidArgumentError("forward: a greedy item needs somewhere to put its token");
    }
    if (it.external != nullptr && items.size() != 1) {
      return absl::InvalidArgumentError("forward: an item with external attention runs alone");
    }
    const cpu::DcaParams& d = it.dca;
    const bool rope = d.chunk_len == cpu::kDcaUnbounded && d.chunk_size == cpu::kDcaUnbounded;
    if (!rope &&
        (d.chunk_len <= 0 || d.chunk_size < d.chunk_len || d.chunk_len % block_size != 0)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "forward: DCA chunk length ", d.chunk_len, " must be positive, at most chunk_size ",
          d.chunk_size, " and a multiple of the KV block size ", block_size));
    }
    // Infini window: attention skips keys [sink_tokens, window_start); every
    // other key must be resident (released blocks are reused by others), and
    // the new queries lie after the window start.
    if (it.external != nullptr && it.infini != nullptr) {
      return absl::InvalidArgumentError("forward: external attention cannot mix Infini memory");
    }
    const int len = it.seq != nullptr ? it.seq->length() : 0;
    if (d.sink_tokens < 0 || (d.window_start > d.sink_tokens && d.window_start > len)) {
      return absl::InvalidArgumentError(
          absl::StrCat("forward: window [", d.sink_tokens, ", ", d.window_start,
                       ") must lie inside the sequence of ", len, " tokens"));
    }
    static const std::vector<int32_t> kNoBlocks;
    const auto& table = it.seq != nullptr ? it.seq->block_table() : kNoBlocks;
    for (int b = 0; b * block_size < len; ++b) {
      const bool skipped =
          b * block_size >= d.sink_tokens && (b + 1) * block_size <= d.window_start;
      if (!skipped && table[static_cast<size_t>(b)] == kAbsentBlock) {
        return absl::InvalidArgumentError(absl::StrCat(
            "forward: KV block ", b, " was released but lies inside the attention window"));
      }
    }
    if (it.infini != nullptr && !has_infini_gates()) {
      return absl::FailedPreconditionError("forward: Infini mixing needs the model's gates");
    }
    total += static_cast<int64_t>(it.tokens.size());
  }
  if (total == 0) return absl::OkStatus();
  RETURN_IF_ERROR(EnsureScratch(total));

  // Reserve KV slots for every item first; on any failure every sequence goes back.
  std::vector<int> old_length;
  old_length.reserve(items.size());
  for (const StepItem& it : items) old_length.push_back(it.seq ? it.seq->length() : 0);
  auto rollback = [&] {
    for (size_t i = 0; i < items.size(); ++i) {
      if (items[i].seq != nullptr) kv_->Truncate(*items[i].seq, old_length[i]);
    }
  };
  if (IsDecodeStep(items)) {
    absl::Status status = RunBracketedStep(items, total, logits);
    if (status.ok()) return status;
    rollback();
    // ABORTED: the backend could not run the recorded step; nothing ran, so the
    // step is redone op by op below.
    if (!absl::IsAborted(status)) return status;
  }
  absl::Status status = RunLayers(items, total);
  if (status.ok()) status = ComputeLogits(items, old_length, logits);
  if (!status.ok()) rollback();
  return status;
}

bool LlamaModel::IsDecodeStep(std::span<const StepItem> items) {
  if (items.size() > static_cast<size_t>(kLogitRowsPerPass)) return false;
  for (const StepItem& it : items) {
    if (it.seq == nullptr || it.tokens.size() != 1 || it.infini != nullptr) return false;
  }
  return true;
}

absl::Status LlamaModel::RunBracketedStep(std::span<const StepItem> items, int64_t total,
                                          std::vector<float>* logits) {
  // One token per item: item i's hidden state is row i.
  const std::vector<int> one(items.size(), 1);
  const LogitRows plan(items, one, logits != nullptr);
  const int64_t n = static_cast<int64_t>(plan.rows.size());
  RETURN_IF_ERROR(backend_->BeginStep());
  absl::Status status = RunLayers(items, total);
  Tensor h = logits_rows_.Rows(0, n), out = logits_.Rows(0, n);
  if (status.ok() && n > 0) {
    status = backend_->GatherRows(h, x_, plan.rows);
    if (status.ok()) status = backend_->RmsNorm(h, h, output_norm_, config_.rms_eps);
    if (status.ok()) status = backend_->Linear(out, h, output_, nullptr);
  }
  const absl::Status ended = backend_->EndStep(status.ok());
  // ABORTED even after a failed op: the backend asks for the step op by op,
  // where a real error shows again.
  if (absl::IsAborted(ended)) return ended;
  RETURN_IF_ERROR(status);
  RETURN_IF_ERROR(ended);
  if (logits != nullptr) logits->resize(static_cast<size_t>(plan.n_full * config_.vocab_size));
  RETURN_IF_ERROR(EmitLogitRows(plan, 0, out, items, logits));
  return backend_->Synchronize();
}

absl::Status LlamaModel::EmitLogitRows(const LogitRows& plan, int64_t first, Tensor out,
                                       std::span<const StepItem> items,
                                       std::vector<float>* logits) {
  const int64_t end = first + out.rows;
  const int64_t full_end = std::min(end, plan.n_full);
  if (first < full_end) {
    RETURN_IF_ERROR(backend_->Download(logits->data() + first * config_.vocab_size,
                                       out.Rows(0, full_end - first)));
  }
  const int64_t greedy_first = std::max(first, plan.n_full);
  if (greedy_first >= end) return absl::OkStatus();
  std::vector<int32_t> tokens(static_cast<size_t>(end - greedy_first));
  RETURN_IF_ERROR(backend_->ArgMaxRows(out.Rows(greedy_first - first, end - greedy_first), tokens));
  for (size_t t = 0; t < tokens.size(); ++t) {
    const size_t item = plan.greedy_items[static_cast<size_t>(greedy_first - plan.n_full) + t];
    *items[item].greedy_token = tokens[t];
  }
  return absl::OkStatus();
}

absl::Status LlamaModel::RunLayers(std::span<const StepItem> items, int64_t total) {
  const ModelConfig& c = config_;
  Backend& b = *backend_;
  std::vector<int32_t> ids, slots, key_pos, item_slots;
  ids.reserve(static_cast<size_t>(total));
  slots.reserve(static_cast<size_t>(total));
  key_pos.reserve(static_cast<size_t>(total));
  std::vector<AttentionSeq> seqs;
  seqs.reserve(items.size());
  const float default_scale = 1.f / std::sqrt(static_cast<float>(c.head_dim));
  int q_row = 0;
  for (const StepItem& it : items) {
    const int start = it.external ? it.external->length() : it.seq->length();
    const int n = static_cast<int>(it.tokens.size());
    ids.insert(ids.end(), it.tokens.begin(), it.tokens.end());
    // Keys are rotated once, at j mod L (docs/design.md §3), and cached that way.
    for (int j = start; j < start + n; ++j) key_pos.push_back(j % it.dca.chunk_len);
    if (it.external != nullptr) continue;
    RETURN_IF_ERROR(kv_->Append(*it.seq, n, &item_slots));
    slots.insert(slots.end(), item_slots.begin(), item_slots.end());
    AttentionSeq s;
    s.q_row = q_row;
    s.n_q = n;
    s.q_start = start;
    s.block_table = it.seq->block_table();
    s.dca = it.dca;
    if (s.dca.softmax_scale == 0.f) s.dca.softmax_scale = default_scale;
    seqs.push_back(s);
    q_row += n;
  }

  Tensor x = x_.Rows(0, total), xn = xn_.Rows(0, total), q = q_.Rows(0, total),
         k = k_.Rows(0, total), v = v_.Rows(0, total), attn = attn_.Rows(0, total),
         gate = gate_.Rows(0, total), up = up_.Rows(0, total);
  ExternalAttention* external = items.front().external;  // then the only item
  RETURN_IF_ERROR(b.Embedding(x, token_embd_, ids));
  for (int l = 0; l < c.n_layers; ++l) {
    const Layer& L = layers_[static_cast<size_t>(l)];
    const LinearJob qkv[] = {{q, L.wq, L.has_bias ? &L.bq : nullptr},
                             {k, L.wk, L.has_bias ? &L.bk : nullptr},
                             {v, L.wv, L.has_bias ? &L.bv : nullptr}};
    RETURN_IF_ERROR(b.RmsNormLinearMany(qkv, x, RowNorm{L.attn_norm, c.rms_eps, xn}));
    if (external != nullptr) {
      RETURN_IF_ERROR(b.Rope(k, c.n_kv_heads, key_pos, inv_freq_));
      RETURN_IF_ERROR(external->Attend(l, attn, q, k, v));
    } else {
      RETURN_IF_ERROR(b.RopeKvWrite(l, k, v, slots, key_pos, inv_freq_));
      RETURN_IF_ERROR(b.Attention(attn, q, l, c.n_heads, seqs, inv_freq_));
    }
    for (size_t i = 0; i < items.size(); ++i) {
      if (items[i].infini == nullptr) continue;
      const AttentionSeq& s = seqs[i];
      RETURN_IF_ERROR(items[i].infini->MixInto(b, l, attn.Rows(s.q_row, s.n_q),
                                               q.Rows(s.q_row, s.n_q), c.n_heads, infini_beta(l)));
    }
    // Residual updates and the gated FFN as fused products (xn and up are
    // their scratch where a backend composes them from separate ops).
    RETURN_IF_ERROR(b.LinearAddInPlace(x, attn, L.wo, xn));
    RETURN_IF_ERROR(b.RmsNormFeedForward(x, RowNorm{L.ffn_norm, c.rms_eps, xn}, L.w_gate, L.w_up,
                                         L.w_down, gate, up));
  }
  return absl::OkStatus();
}

absl::Status LlamaModel::ComputeLogits(std::span<const StepItem> items,
                                       std::span<const int> old_length,
                                       std::vector<float>* logits) {
  std::vector<int> new_tokens;
  new_tokens.reserve(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    new_tokens.push_back(items[i].seq != nullptr ? items[i].seq->length() - old_length[i]
                                                 : static_cast<int>(items[i].tokens.size()));
  }
  const LogitRows plan(items, new_tokens, logits != nullptr);
  if (logits != nullptr) logits->resize(static_cast<size_t>(plan.n_full * config_.vocab_size));
  const int64_t n_rows = static_cast<int64_t>(plan.rows.size());
  for (int64_t first = 0; first < n_rows; first += kLogitRowsPerPass) {
    const int64_t n = std::min(kLogitRowsPerPass, n_rows - first);
    Tensor h = logits_rows_.Rows(0, n), out = logits_.Rows(0, n);
    RETURN_IF_ERROR(backend_->GatherRows(h, x_,
                                         std::span<const int32_t>(plan.rows).subspan(
                                             static_cast<size_t>(first), static_cast<size_t>(n))));
    RETURN_IF_ERROR(backend_->RmsNorm(h, h, output_norm_, config_.rms_eps));
    RETURN_IF_ERROR(backend_->Linear(out, h, output_, nullptr));
    RETURN_IF_ERROR(EmitLogitRows(plan, first, out, items, logits));
  }
  return backend_->Synchronize();
}

}  // namespace longctx
