// libFuzzer target for the Hugging Face readers: the bytes are parsed as a
// safetensors file (header, offsets, dtype conversion) and as JSON text, which
// then goes through the config.json and tokenizer.json readers.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "engine/model/hf_model.h"
#include "engine/model/safetensors.h"
#include "engine/util/json_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto st = longctx::SafetensorsFile::Parse(std::span<const uint8_t>(data, size));
  if (st.ok()) {
    for (const longctx::SafetensorsTensorInfo& t : (*st)->tensors()) {
      if (t.numel() > (int64_t{1} << 20)) continue;
      std::vector<float> out(static_cast<size_t>(t.numel()));
      (void)(*st)->ToF32(t, out);
    }
  }
  auto json = longctx::ParseJson(std::string_view(reinterpret_cast<const char*>(data), size));
  if (json.ok()) {
    (void)longctx::ConfigFromHfJson(*json);
    (void)longctx::VocabFromTokenizerJson(*json, *json, *json);
  }
  return 0;
}
