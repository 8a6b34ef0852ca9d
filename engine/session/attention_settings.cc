#include "engine/session/attention_settings.h"

#include <algorithm>
#include <cmath>

namespace longctx {

cpu::DcaParams AttentionSettings::ToParams(int64_t length, int head_dim) const {
  cpu::DcaParams p;
  float scale = 1.f / std::sqrt(static_cast<float>(head_dim));
  if (dca) {
    p.chunk_size = chunk_size;
    p.chunk_len = chunk_size - local_window;
    if (length_temperature && pretrain_length > 0 && length > pretrain_length) {
      const float sf = std::max(
          1.f, 0.1f * std::log(static_cast<float>(length) / pretrain_length) + 1.f);
      scale *= sf * sf;
    }
  }
  p.softmax_scale = scale;
  return p;
}

}  // namespace longctx
