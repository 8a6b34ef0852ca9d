// libFuzzer target for the GGUF reader: parses arbitrary bytes from memory and,
// when they parse, reads every metadata value through the typed getters,
// dequantizes the small tensors and runs the whole model load (config,
// vocabulary, shape checks, un-permute). Any crash, sanitizer report or leak
// is a bug; errors are the expected outcome for almost every input.
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "engine/model/gguf.h"
#include "engine/model/gguf_model.h"

namespace {

constexpr int64_t kMaxFuzzElements = int64_t{1} << 20;

void ReadAllMetadata(const longctx::GgufFile& f) {
  for (const auto& [key, value] : f.metadata()) {
    (void)f.GetInt(key);
    (void)f.GetFloat(key);
    (void)f.GetBool(key);
    (void)f.GetString(key);
    (void)f.GetStringArray(key);
    (void)f.GetFloatArray(key);
    (void)f.GetIntArray(key);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto parsed = longctx::GgufFile::Parse(std::span<const uint8_t>(data, size));
  if (!parsed.ok()) return 0;
  const longctx::GgufFile& f = **parsed;
  ReadAllMetadata(f);
  for (const longctx::GgufTensorInfo& t : f.tensors()) {
    // Parsing validated shape, type, size and bounds; the data must be there.
    const std::span<const uint8_t> bytes = f.TensorData(t);
    if (bytes.size() != static_cast<size_t>(t.n_bytes)) __builtin_trap();
    if (t.n_elements > kMaxFuzzElements) continue;
    std::vector<float> out(static_cast<size_t>(t.n_elements));
    (void)f.Dequantize(t, out);
  }
  (void)longctx::LoadGgufModel(f);
  return 0;
}
