#include "engine/model/weight_layout.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace longctx {
namespace {

absl::Status Expect(const TensorShapeLookup& shape_of, const std::string& name,
                    const std::vector<int64_t>& want, bool required = true) {
  const std::optional<std::vector<int64_t>> got = shape_of(name);
  if (!got.has_value()) {
    if (!required) return absl::OkStatus();
    return absl::NotFoundError(absl::StrCat("missing tensor '", name, "'"));
  }
  if (*got != want) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", name, "' has shape ", ShapeString(*got), ", expected ", ShapeString(want)));
  }
  return absl::OkStatus();
}

}  // namespace

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

std::string LayerTensorName(int layer, const char* suffix) {
  return absl::StrCat("blk.", layer, ".", suffix);
}

absl::Status CheckWeightShapes(const ModelConfig& c, const TensorShapeLookup& shape_of) {
  const int64_t d = c.d_model;
  const int64_t q = static_cast<int64_t>(c.n_heads) * c.head_dim;
  const int64_t kv = static_cast<int64_t>(c.n_kv_heads) * c.head_dim;
  const int64_t ff = c.d_ff;
  if (absl::Status s = Expect(shape_of, "token_embd.weight", {c.vocab_size, d}); !s.ok()) return s;
  if (absl::Status s = Expect(shape_of, "output_norm.weight", {d}); !s.ok()) return s;
  if (!c.tied_embeddings) {
    if (absl::Status s = Expect(shape_of, "output.weight", {c.vocab_size, d}); !s.ok()) return s;
  }
  struct Want {
    const char* suffix;
    std::vector<int64_t> shape;
    bool required;
  };
  const Want wants[] = {
      {"attn_norm.weight", {d}, true},      {"attn_q.weight", {q, d}, true},
      {"attn_k.weight", {kv, d}, true},     {"attn_v.weight", {kv, d}, true},
      {"attn_output.weight", {d, q}, true}, {"attn_q.bias", {q}, c.qkv_bias},
      {"attn_k.bias", {kv}, c.qkv_bias},    {"attn_v.bias", {kv}, c.qkv_bias},
      {"ffn_norm.weight", {d}, true},       {"ffn_gate.weight", {ff, d}, true},
      {"ffn_up.weight", {ff, d}, true},     {"ffn_down.weight", {d, ff}, true},
  };
  for (int l = 0; l < c.n_layers; ++l) {
    for (const Want& w : wants) {
      if (absl::Status s = Expect(shape_of, LayerTensorName(l, w.suffix), w.shape, w.required);
          !s.ok()) {
        return s;
      }
    }
  }
  return absl::OkStatus();
}

std::vector<int64_t> UnpermuteRowMap(int64_t rows, int64_t n_heads) {
  const int64_t hd = rows / n_heads;
  const int64_t half = hd / 2;
  std::vector<int64_t> map(static_cast<size_t>(rows));
  for (int64_t h = 0; h < n_heads; ++h) {
    for (int64_t i = 0; i < half; ++i) {
      for (int64_t s = 0; s < 2; ++s) {
        map[static_cast<size_t>(h * hd + 2 * i + s)] = h * hd + s * half + i;
      }
    }
  }
  return map;
}

}  // namespace longctx
