#include "engine/model/synthetic_model.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/model/weight_layout.h"

namespace longctx {
namespace {

struct Shape {
  const char* name;
  ModelConfig config;
};

ModelConfig Llama2_7b() {
  return ModelConfig{
      .architecture = "llama",
      .name = "Llama-2-7B shape (synthetic, random weights)",
      .n_layers = 32,
      .d_model = 4096,
      .n_heads = 32,
      .n_kv_heads = 32,
      .head_dim = 128,
      .d_ff = 11008,
      .vocab_size = 32000,
      .context_length = 4096,
      .rope_theta = 10000.f,
      .rms_eps = 1e-5f};
}

// The default model's shape (SmolLM2-135M): benchmarks without the model file.
ModelConfig SmolLm2_135m() {
  return ModelConfig{
      .architecture = "llama",
      .name = "SmolLM2-135M shape (synthetic, random weights)",
      .n_layers = 30,
      .d_model = 576,
      .n_heads = 9,
      .n_kv_heads = 3,
      .head_dim = 64,
      .d_ff = 1536,
      .vocab_size = 49152,
      .context_length = 8192,
      .rope_theta = 100000.f,
      .rms_eps = 1e-5f,
      .tied_embeddings = true};
}

const std::vector<Shape>& Shapes() {
  static const std::vector<Shape> shapes = {{"llama2-7b", Llama2_7b()},
                                            {"smollm2-135m", SmolLm2_135m()}};
  return shapes;
}

}  // namespace

std::vector<std::string> SyntheticModelNames() {
  std::vector<std::string> names;
  for (const Shape& s : Shapes()) names.push_back(s.name);
  return names;
}

int64_t WeightBytes(const ModelConfig& c, int bytes_per_element) {
  const int64_t D = c.d_model, q = int64_t{c.n_heads} * c.head_dim,
                kv = int64_t{c.n_kv_heads} * c.head_dim, F = c.d_ff, V = c.vocab_size;
  const int64_t per_layer =
      2 * D + D * q + 2 * D * kv + q * D + 3 * D * F + (c.qkv_bias ? q + 2 * kv : 0);
  const int64_t elements = V * D * (c.tied_embeddings ? 1 : 2) + D + c.n_layers * per_layer;
  return elements * bytes_per_element;
}

absl::StatusOr<HostModel> SyntheticHostModel(const std::string& name, uint64_t seed) {
  const Shape* shape = nullptr;
  for (const Shape& s : Shapes()) {
    if (name == s.name) shape = &s;
  }
  if (shape == nullptr) {
    return absl::NotFoundError(absl::StrCat("synthetic model '", name, "' unknown (known: ",
                                            absl::StrJoin(SyntheticModelNames(), ", "), ")"));
  }
  return SyntheticHostModelFor(shape->config, seed);
}

HostModel SyntheticHostModelFor(const ModelConfig& config, uint64_t seed) {
  HostModel m;
  m.config = config;
  const ModelConfig& c = m.config;
  uint64_t next_seed = seed * 1000003;
  auto add = [&](const std::string& tensor, std::vector<int64_t> dims, float lo, float hi) {
    HostTensor t;
    t.shape = std::move(dims);
    t.fill_seed = next_seed++;
    t.fill_lo = lo;
    t.fill_hi = hi;
    m.tensors[tensor] = std::move(t);
  };
  auto matrix = [&](const std::string& tensor, int64_t rows, int64_t cols) {
    const float a = std::sqrt(3.f / static_cast<float>(cols));
    add(tensor, {rows, cols}, -a, a);
  };
  auto norm = [&](const std::string& tensor) { add(tensor, {c.d_model}, 0.9f, 1.1f); };
  const int64_t D = c.d_model, q = int64_t{c.n_heads} * c.head_dim,
                kv = int64_t{c.n_kv_heads} * c.head_dim;
  add("token_embd.weight", {c.vocab_size, D}, -1.f, 1.f);
  norm("output_norm.weight");
  if (!c.tied_embeddings) matrix("output.weight", c.vocab_size, D);
  for (int l = 0; l < c.n_layers; ++l) {
    norm(LayerTensorName(l, "attn_norm.weight"));
    matrix(LayerTensorName(l, "attn_q.weight"), q, D);
    matrix(LayerTensorName(l, "attn_k.weight"), kv, D);
    matrix(LayerTensorName(l, "attn_v.weight"), kv, D);
    matrix(LayerTensorName(l, "attn_output.weight"), D, q);
    if (c.qkv_bias) {
      add(LayerTensorName(l, "attn_q.bias"), {q}, -0.1f, 0.1f);
      add(LayerTensorName(l, "attn_k.bias"), {kv}, -0.1f, 0.1f);
      add(LayerTensorName(l, "attn_v.bias"), {kv}, -0.1f, 0.1f);
    }
    norm(LayerTensorName(l, "ffn_norm.weight"));
    matrix(LayerTensorName(l, "ffn_gate.weight"), c.d_ff, D);
    matrix(LayerTensorName(l, "ffn_up.weight"), c.d_ff, D);
    matrix(LayerTensorName(l, "ffn_down.weight"), D, c.d_ff);
  }
  return m;
}

}  // namespace longctx
