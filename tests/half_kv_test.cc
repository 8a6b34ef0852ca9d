// The CPU KV cache in IEEE half (cpu_kv=f16): the row conversions of
// kernels/cpu/half.h against the compiler's _Float16 (correctly rounded), and
// attention over a half cache equal, bit for bit, to attention over a float
// cache holding the same rounded values (the kernels convert a tile, then run
// the float products unchanged).
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "engine/backend/cpu_backend.h"
#include "gtest/gtest.h"
#include "kernels/cpu/half.h"
#include "kernels/ops.h"

namespace longctx {
namespace {

TEST(HalfKvTest, RowsRoundLikeTheCompilersHalf) {
#if !defined(__FLT16_MAX__)
  GTEST_SKIP() << "this compiler has no _Float16 on this target (clang before 15 on x86)";
#else
  const auto oracle = [](float f) { return std::bit_cast<uint16_t>(static_cast<_Float16>(f)); };
  std::vector<float> x = {0.f, -0.f, 1.f, -2.5f, 65504.f, 65519.f, 65520.f, 1e6f, -1e6f,
                          6.1035156e-05f, 6.0e-05f, 5.96e-08f, 2.98e-08f, 2.99e-08f, 1e-10f,
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity(), 1.00048828125f,
                          1.000732421875f, 0.333333343f};
  std::mt19937 rng(3);
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < 20000; ++i) {
    const float f = std::bit_cast<float>(bits(rng));
    if (!std::isnan(f) && std::abs(f) < 1e9f) x.push_back(f);
  }
  std::vector<uint16_t> h(x.size());
  cpu::FloatToHalfRow(x.data(), h.data(), static_cast<int>(x.size()));
  for (size_t i = 0; i < x.size(); ++i) {
    ASSERT_EQ(h[i], oracle(x[i])) << "x = " << x[i];
    ASSERT_EQ(cpu::FloatToHalf(x[i]), h[i]) << "x = " << x[i];
  }
  // Every half comes back exactly (NaN as a NaN).
  std::vector<uint16_t> all(65536);
  std::iota(all.begin(), all.end(), uint16_t{0});
  std::vector<float> back(all.size());
  cpu::HalfToFloatRow(all.data(), back.data(), static_cast<int>(all.size()));
  for (size_t i = 0; i < all.size(); ++i) {
    const float want = static_cast<float>(std::bit_cast<_Float16>(all[i]));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(back[i])) << i;
    } else {
      ASSERT_EQ(std::bit_cast<uint32_t>(back[i]), std::bit_cast<uint32_t>(want)) << i;
    }
  }
#endif
}

// Attention over the backend's half arena equals attention over a float arena
// of the rounded values, for prefill (many queries) and decode (one, keys
// shared out between threads), with GQA and DCA chunks.
TEST(HalfKvTest, AttentionOverAHalfCacheEqualsTheRoundedFloatCache) {
  const int D = 64, Hkv = 3, H = 9, block = 16, T = 700;
  const KvGeometry g{.n_layers = 2, .n_kv_heads = Hkv, .head_dim = D, .block_size = block,
                     .n_blocks = T / block + 2};
  CpuBackendOptions half_options;
  half_options.kv_type = DType::kF16;
  CpuBackend half(half_options), full;
  ASSERT_TRUE(half.InitKv(g).ok());
  ASSERT_TRUE(full.InitKv(g).ok());
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> k(size_t{T} * Hkv * D), v(k.size()), q(size_t{T} * H * D);
  for (float& x : k) x = u(rng);
  for (float& x : v) x = u(rng);
  for (float& x : q) x = 4.f * u(rng);
  // The float backend gets the values rounded to half.
  std::vector<float> kr(k.size()), vr(v.size());
  for (size_t i = 0; i < k.size(); ++i) {
    kr[i] = cpu::HalfToFloat(cpu::FloatToHalf(k[i]));
    vr[i] = cpu::HalfToFloat(cpu::FloatToHalf(v[i]));
  }
  std::vector<int32_t> slots(T);
  std::iota(slots.begin(), slots.end(), block);  // from physical block 1
  const auto tensor = [](std::vector<float>& x, int64_t rows, int64_t cols) {
    return Tensor{x.data(), DType::kF32, rows, cols};
  };
  for (int layer = 0; layer < 2; ++layer) {
    ASSERT_TRUE(half.KvWrite(layer, tensor(k, T, Hkv * D), tensor(v, T, Hkv * D), slots).ok());
    ASSERT_TRUE(full.KvWrite(layer, tensor(kr, T, Hkv * D), tensor(vr, T, Hkv * D), slots).ok());
  }
  std::vector<int32_t> table(T / block + 1);
  std::iota(table.begin(), table.end(), 1);
  std::vector<float> inv_freq(D / 2);
  for (int i = 0; i < D / 2; ++i) inv_freq[i] = std::pow(10000.f, -2.f * i / D);
  cpu::DcaParams p;
  p.chunk_len = 192;
  p.chunk_size = 256;
  p.softmax_scale = 1.f / 8.f;
  for (int n_q : {T, 1, 37}) {
    SCOPED_TRACE(n_q);
    AttentionSeq seq;
    seq.q_row = 0;
    seq.n_q = n_q;
    seq.q_start = T - n_q;
    seq.block_table = table;
    seq.dca = p;
    std::vector<float> qs(q.begin(), q.begin() + int64_t{n_q} * H * D);
    std::vector<float> a(qs.size()), b(qs.size());
    ASSERT_TRUE(half.Attention(tensor(a, n_q, H * D), tensor(qs, n_q, H * D), 1, H, {&seq, 1},
                               inv_freq)
                    .ok());
    ASSERT_TRUE(full.Attention(tensor(b, n_q, H * D), tensor(qs, n_q, H * D), 1, H, {&seq, 1},
                               inv_freq)
                    .ok());
    for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], b[i]) << i;
    // The context-parallel form (one run of keys: all of them), (o, lse) per row.
    const int32_t first[] = {0}, count[] = {T};
    PartialAttentionSeq part;
    part.n_q = n_q;
    part.q_start = T - n_q;
    part.block_table = table;
    part.run_first = first;
    part.run_count = count;
    part.dca = p;
    std::vector<float> pa(static_cast<size_t>(n_q) * H * (D + 1)), pb(pa.size());
    ASSERT_TRUE(half.PartialAttention(tensor(pa, n_q, H * (D + 1)), tensor(qs, n_q, H * D), 1, H,
                                      {&part, 1}, inv_freq)
                    .ok());
    ASSERT_TRUE(full.PartialAttention(tensor(pb, n_q, H * (D + 1)), tensor(qs, n_q, H * D), 1, H,
                                      {&part, 1}, inv_freq)
                    .ok());
    EXPECT_EQ(pa, pb);
  }
  // Blocks read back as the rounded floats.
  std::vector<float> hb(g.ElementsPerBlock()), fb(hb.size());
  ASSERT_TRUE(half.KvReadBlock(3, hb.data()).ok());
  ASSERT_TRUE(full.KvReadBlock(3, fb.data()).ok());
  EXPECT_EQ(hb, fb);
}

}  // namespace
}  // namespace longctx
