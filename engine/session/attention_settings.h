// A session's attention settings (DESIGN §3) in resolved form.
#pragma once

#include <cstdint>

#include "kernels/ops.h"

namespace longctx {

struct AttentionSettings {
  bool dca = false;            // false: plain RoPE attention
  int pretrain_length = 0;     // c
  int chunk_size = 0;          // C
  int local_window = 0;        // w
  bool length_temperature = false;

  // Kernel parameters for a sequence of `length` tokens with head size `head_dim`.
  cpu::DcaParams ToParams(int64_t length, int head_dim) const;
};

}  // namespace longctx
