// The counter-based generator behind FillUniform (kernels/ops.h and its CUDA
// version): element i of a fill with `seed` depends only on (seed, i), so the
// CPU and the GPU produce the same values in any order or grid. Shared by host
// and device code.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define LONGCTX_HOST_DEVICE __host__ __device__
#else
#define LONGCTX_HOST_DEVICE
#endif

namespace longctx {

// A uniform float in [0, 1) with 24 random bits: a splitmix64 finaliser of
// seed and index.
LONGCTX_HOST_DEVICE inline float UniformAt(uint64_t seed, int64_t i) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(i) + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<float>(z >> 40) * (1.0f / 16777216.0f);
}

}  // namespace longctx
