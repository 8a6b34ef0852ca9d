#include "engine/model/dequant.h"

#include <array>
#include <cstring>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"

namespace longctx {
namespace {

constexpr int64_t kQK = 32;    // block size of the legacy quants
constexpr int64_t kQKK = 256;  // block size of the k-quants
constexpr int kKScaleSize = 12;

struct TypeEntry {
  uint32_t id;
  GgmlTypeTraits traits;
};

// Every ggml type id a GGUF file may carry, so errors can name the type.
constexpr TypeEntry kTypes[] = {
    {0, {"F32", 1, 4, true}},          {1, {"F16", 1, 2, true}},
    {2, {"Q4_0", 32, 18, true}},       {3, {"Q4_1", 32, 20, true}},
    {6, {"Q5_0", 32, 22, true}},       {7, {"Q5_1", 32, 24, true}},
    {8, {"Q8_0", 32, 34, true}},       {9, {"Q8_1", 32, 40, false}},
    {10, {"Q2_K", 256, 84, false}},    {11, {"Q3_K", 256, 110, false}},
    {12, {"Q4_K", 256, 144, true}},    {13, {"Q5_K", 256, 176, true}},
    {14, {"Q6_K", 256, 210, true}},    {15, {"Q8_K", 256, 292, false}},
    {16, {"IQ2_XXS", 256, 66, false}}, {17, {"IQ2_XS", 256, 74, false}},
    {18, {"IQ3_XXS", 256, 98, false}}, {19, {"IQ1_S", 256, 50, false}},
    {20, {"IQ4_NL", 32, 18, false}},   {21, {"IQ3_S", 256, 110, false}},
    {22, {"IQ2_S", 256, 82, false}},   {23, {"IQ4_XS", 256, 136, false}},
    {24, {"I8", 1, 1, false}},         {25, {"I16", 1, 2, false}},
    {26, {"I32", 1, 4, false}},        {27, {"I64", 1, 8, false}},
    {28, {"F64", 1, 8, false}},        {29, {"IQ1_M", 256, 56, false}},
    {30, {"BF16", 1, 2, true}},        {34, {"TQ1_0", 256, 54, false}},
    {35, {"TQ2_0", 256, 66, false}},   {39, {"MXFP4", 32, 17, false}},
};

const std::array<float, 65536>& HalfTable() {
  static const std::array<float, 65536>* table = [] {
    auto* t = new std::array<float, 65536>;
    for (uint32_t h = 0; h < 65536; ++h) {
      const uint32_t sign = (h >> 15) << 31;
      const uint32_t exp = (h >> 10) & 0x1f;
      const uint32_t mant = h & 0x3ff;
      float f;
      if (exp == 0) {
        // Zero or subnormal: mant * 2^-24 is exact in f32.
        f = static_cast<float>(mant) * 0x1p-24f;
        if (sign) f = -f;
      } else {
        const uint32_t bits =
            sign | (exp == 31 ? 0x7f800000u | (mant << 13) : ((exp + 112) << 23) | (mant << 13));
        std::memcpy(&f, &bits, 4);
      }
      (*t)[h] = f;
    }
    return t;
  }();
  return *table;
}

inline uint16_t Load16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

inline uint32_t Load32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

inline float LoadHalf(const std::array<float, 65536>& ht, const uint8_t* p) {
  return ht[Load16(p)];
}

void RowQ4_0(const uint8_t* b, int64_t nb, float* y) {
  const auto& ht = HalfTable();
  for (int64_t i = 0; i < nb; ++i, b += 18, y += kQK) {
    const float d = LoadHalf(ht, b);
    const uint8_t* qs = b + 2;
    for (int j = 0; j < 16; ++j) {
      y[j] = d * static_cast<float>(static_cast<int>(qs[j] & 0x0f) - 8);
      y[j + 16] = d * static_cast<float>(static_cast<int>(qs[j] >> 4) - 8);
    }
  }
}

void RowQ4_1(const uint8_t* b, int64_t nb, float* y) {
  const auto& ht = HalfTable();
  for (int64_t i = 0; i < nb; ++i, b += 20, y += kQK) {
    const float d = LoadHalf(ht, b);
    const float m = LoadHalf(ht, b + 2);
    const uint8_t* qs = b + 4;
    for (int j = 0; j < 16; ++j) {
      y[j] = d * static_cast<float>(qs[j] & 0x0f) + m;
      y[j + 16] = d * static_cast<float>(qs[j] >> 4) + m;
    }
  }
}

void RowQ5_0(const uint8_t* b, int64_t nb, float* y) {
  const auto& ht = HalfTable();
  for (int64_t i = 0; i < nb; ++i, b += 22, y += kQK) {
    const float d = LoadHalf(ht, b);
    const uint32_t qh = Load32(b + 2);
    const uint8_t* qs = b + 6;
    for (int j = 0; j < 16; ++j) {
      const int lo = (qs[j] & 0x0f) | static_cast<int>(((qh >> j) & 1u) << 4);
      const int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
      y[j] = d * static_cast<float>(lo - 16);
      y[j + 16] = d * static_cast<float>(hi - 16);
    }
  }
}

void RowQ5_1(const uint8_t* b, int64_t nb, float* y) {
  const auto& ht = HalfTable();
  for (int64_t i = 0; i < nb; ++i, b += 24, y += kQK) {
    const float d = LoadHalf(ht, b);
    const float m = LoadHalf(ht, b + 2);
    const uint32_t qh = Load32(b + 4);
    const uint8_t* qs = b + 8;
    for (int j = 0; j < 16; ++j) {
      const int lo = (qs[j] & 0x0f) | static_cast<int>(((qh >> j) & 1u) << 4);
      const int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
      y[j] = d * static_cast<float>(lo) + m;
      y[j + 16] = d * static_cast<float>(hi) + m;
    }
  }
}

void RowQ8_0(const uint8_t* b, int64_t nb, float* y) {
  const auto& ht = HalfTable();
  for (int64_t i = 0; i < nb; ++i, b += 34, y += kQK) {
    const float d = LoadHalf(ht, b);
    const auto* qs = reinterpret_cast<const int8_t*>(b + 2);
    for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(qs[j]) * d;
  }
}

// 6-bit scale and min of sub-block j (0..7) of a Q4_K / Q5_K super-block.
inline void ScaleMinK4(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = static_cast<uint8_t>((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

void RowQ4_K(const uint8_t* b, int64_t nb, float* y) {
  const auto& ht = HalfTable();
  for (int64_t i = 0; i < nb; ++i, b += 144) {
    const float d = LoadHalf(ht, b);
    const float dmin = LoadHalf(ht, b + 2);
    const uint8_t* scales = b + 4;
    const uint8_t* q = b + 4 + kKScaleSize;
    for (int j = 0; j < 8; j += 2, q += 32) {
      uint8_t sc, m;
      ScaleMinK4(j, scales, &sc, &m);
      const float d1 = d * static_cast<float>(sc);
      const float m1 = dmin * static_cast<float>(m);
      ScaleMinK4(j + 1, scales, &sc, &m);
      const float d2 = d * static_cast<float>(sc);
      const float m2 = dmin * static_cast<float>(m);
      for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(q[l] & 0x0f) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>(q[l] >> 4) - m2;
    }
  }
}

void RowQ5_K(const uint8_t* b, int64_t nb, float* y) {
  const auto& ht = HalfTable();
  for (int64_t i = 0; i < nb; ++i, b += 176) {
    const float d = LoadHalf(ht, b);
    const float dmin = LoadHalf(ht, b + 2);
    const uint8_t* scales = b + 4;
    const uint8_t* qh = b + 4 + kKScaleSize;
    const uint8_t* ql = qh + kQKK / 8;
    for (int j = 0; j < 8; j += 2, ql += 32) {
      uint8_t sc, m;
      ScaleMinK4(j, scales, &sc, &m);
      const float d1 = d * static_cast<float>(sc);
      const float m1 = dmin * static_cast<float>(m);
      ScaleMinK4(j + 1, scales, &sc, &m);
      const float d2 = d * static_cast<float>(sc);
      const float m2 = dmin * static_cast<float>(m);
      for (int l = 0; l < 32; ++l) {
        const int v = (ql[l] & 0x0f) | (((qh[l] >> j) & 1) << 4);
        *y++ = d1 * static_cast<float>(v) - m1;
      }
      for (int l = 0; l < 32; ++l) {
        const int v = (ql[l] >> 4) | (((qh[l] >> (j + 1)) & 1) << 4);
        *y++ = d2 * static_cast<float>(v) - m2;
      }
    }
  }
}

void RowQ6_K(const uint8_t* b, int64_t nb, float* y) {
  const auto& ht = HalfTable();
  for (int64_t i = 0; i < nb; ++i, b += 210) {
    const uint8_t* ql = b;
    const uint8_t* qh = b + kQKK / 2;
    const auto* sc = reinterpret_cast<const int8_t*>(b + kQKK / 2 + kQKK / 4);
    const float d = LoadHalf(ht, b + kQKK / 2 + kQKK / 4 + kQKK / 16);
    for (int half = 0; half < 2; ++half, ql += 64, qh += 32, sc += 8, y += 128) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l] = (d * static_cast<float>(sc[is + 0])) * static_cast<float>(q1);
        y[l + 32] = (d * static_cast<float>(sc[is + 2])) * static_cast<float>(q2);
        y[l + 64] = (d * static_cast<float>(sc[is + 4])) * static_cast<float>(q3);
        y[l + 96] = (d * static_cast<float>(sc[is + 6])) * static_cast<float>(q4);
      }
    }
  }
}

}  // namespace

const GgmlTypeTraits* GgmlTypeInfo(uint32_t type) {
  for (const TypeEntry& e : kTypes) {
    if (e.id == type) return &e.traits;
  }
  return nullptr;
}

absl::StatusOr<int64_t> GgmlRowBytes(uint32_t type, int64_t n) {
  const GgmlTypeTraits* t = GgmlTypeInfo(type);
  if (t == nullptr) return absl::InvalidArgumentError(absl::StrCat("unknown ggml type ", type));
  if (n < 0 || n % t->block_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat("row of ", n, " elements is not a multiple of ",
                                                   t->name, " block size ", t->block_size));
  }
  const int64_t blocks = n / t->block_size;
  if (blocks > std::numeric_limits<int64_t>::max() / t->type_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("row of ", n, " ", t->name, " elements overflows"));
  }
  return blocks * t->type_size;
}

float HalfToFloat(uint16_t h) { return HalfTable()[h]; }

float Bf16ToFloat(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

void DequantizeRow(GgmlType type, const uint8_t* src, int64_t n, float* dst) {
  switch (type) {
    case GgmlType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case GgmlType::kF16: {
      const auto& ht = HalfTable();
      for (int64_t i = 0; i < n; ++i) dst[i] = LoadHalf(ht, src + 2 * i);
      return;
    }
    case GgmlType::kBF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = Bf16ToFloat(Load16(src + 2 * i));
      return;
    case GgmlType::kQ4_0:
      return RowQ4_0(src, n / kQK, dst);
    case GgmlType::kQ4_1:
      return RowQ4_1(src, n / kQK, dst);
    case GgmlType::kQ5_0:
      return RowQ5_0(src, n / kQK, dst);
    case GgmlType::kQ5_1:
      return RowQ5_1(src, n / kQK, dst);
    case GgmlType::kQ8_0:
      return RowQ8_0(src, n / kQK, dst);
    case GgmlType::kQ4_K:
      return RowQ4_K(src, n / kQKK, dst);
    case GgmlType::kQ5_K:
      return RowQ5_K(src, n / kQKK, dst);
    case GgmlType::kQ6_K:
      return RowQ6_K(src, n / kQKK, dst);
    default:
      return;
  }
}

absl::Status DequantizeRows(uint32_t type, std::span<const uint8_t> src, int64_t rows, int64_t cols,
                            std::span<float> dst, std::span<const int64_t> dst_row) {
  const GgmlTypeTraits* t = GgmlTypeInfo(type);
  if (t == nullptr) return absl::InvalidArgumentError(absl::StrCat("unknown ggml type ", type));
  if (!t->dequantizable) {
    return absl::UnimplementedError(
        absl::StrCat("dequantization of ggml type ", t->name, " is not supported"));
  }
  if (rows < 0 || cols < 0) return absl::InvalidArgumentError("negative tensor dimensions");
  auto row_bytes = GgmlRowBytes(type, cols);
  if (!row_bytes.ok()) return row_bytes.status();
  if (rows != 0 && *row_bytes > static_cast<int64_t>(src.size()) / rows) {
    return absl::InvalidArgumentError(absl::StrCat("source holds ", src.size(), " bytes, ", rows,
                                                   " rows of ", *row_bytes, " bytes expected"));
  }
  if (static_cast<int64_t>(src.size()) != rows * *row_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("source holds ", src.size(), " bytes, ", rows * *row_bytes, " expected"));
  }
  if (cols != 0 && rows > static_cast<int64_t>(dst.size()) / cols) {
    return absl::InvalidArgumentError("destination too small");
  }
  if (static_cast<int64_t>(dst.size()) != rows * cols) {
    return absl::InvalidArgumentError("destination size does not match rows * cols");
  }
  if (!dst_row.empty()) {
    if (static_cast<int64_t>(dst_row.size()) != rows) {
      return absl::InvalidArgumentError("row map size does not match rows");
    }
    std::vector<bool> seen(static_cast<size_t>(rows), false);
    for (int64_t r : dst_row) {
      if (r < 0 || r >= rows || seen[static_cast<size_t>(r)]) {
        return absl::InvalidArgumentError("row map is not a permutation");
      }
      seen[static_cast<size_t>(r)] = true;
    }
  }
  const auto gt = static_cast<GgmlType>(type);
  const uint8_t* s = src.data();
  float* d = dst.data();
  const int64_t rb = *row_bytes;
  const bool mapped = !dst_row.empty();
  const int64_t* map = dst_row.data();
#pragma omp parallel for schedule(static) if (rows * cols > (1 << 16))
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t to = mapped ? map[r] : r;
    DequantizeRow(gt, s + r * rb, cols, d + to * cols);
  }
  return absl::OkStatus();
}

}  // namespace longctx
