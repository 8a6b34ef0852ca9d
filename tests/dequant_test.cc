// Dequantization against the `gguf` Python package: exact f32 bit equality on
// fixtures from tools/gen_dequant_fixtures.py (tests/fixtures/loader/dequant.bin).
#include "engine/model/dequant.h"

#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace longctx {
namespace {

struct Case {
  uint32_t type = 0;
  uint32_t rows = 0, cols = 0;
  std::vector<uint8_t> src;
  std::vector<float> expected;
};

uint32_t U32(const std::vector<uint8_t>& b, size_t* pos) {
  uint32_t v;
  std::memcpy(&v, b.data() + *pos, 4);
  *pos += 4;
  return v;
}

std::vector<Case> ReadCases() {
  std::ifstream in(std::string(LONGCTX_SOURCE_DIR) + "/tests/fixtures/loader/dequant.bin",
                   std::ios::binary);
  std::vector<uint8_t> b((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<Case> cases;
  if (b.size() < 8 || std::memcmp(b.data(), "LDQF", 4) != 0) return cases;
  size_t pos = 4;
  const uint32_t n = U32(b, &pos);
  for (uint32_t i = 0; i < n; ++i) {
    Case c;
    c.type = U32(b, &pos);
    c.rows = U32(b, &pos);
    c.cols = U32(b, &pos);
    const uint32_t n_src = U32(b, &pos);
    c.src.assign(b.begin() + pos, b.begin() + pos + n_src);
    pos += n_src;
    c.expected.resize(static_cast<size_t>(c.rows) * c.cols);
    std::memcpy(c.expected.data(), b.data() + pos, c.expected.size() * 4);
    pos += c.expected.size() * 4;
    cases.push_back(std::move(c));
  }
  return cases;
}

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

TEST(DequantTest, MatchesGgufPackageExactly) {
  const std::vector<Case> cases = ReadCases();
  std::set<std::string> covered;
  for (const Case& c : cases) {
    const GgmlTypeTraits* t = GgmlTypeInfo(c.type);
    ASSERT_NE(t, nullptr);
    covered.insert(t->name);
    std::vector<float> out(c.expected.size(), std::nanf(""));
    ASSERT_TRUE(DequantizeRows(c.type, c.src, c.rows, c.cols, out).ok()) << t->name;
    int mismatches = 0;
    for (size_t i = 0; i < out.size(); ++i) {
      if (Bits(out[i]) != Bits(c.expected[i]) && ++mismatches <= 5) {
        ADD_FAILURE() << t->name << " element " << i << ": got " << out[i] << " want "
                      << c.expected[i];
      }
    }
    EXPECT_EQ(mismatches, 0) << t->name;
  }
  const std::set<std::string> want = {"F16",  "BF16", "Q4_0", "Q4_1", "Q5_0",
                                      "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"};
  EXPECT_EQ(covered, want);
}

TEST(DequantTest, RowMapPlacesRows) {
  // Q8_0 rows with distinct scales; row r goes to map[r].
  const int64_t rows = 4, cols = 32;
  std::vector<uint8_t> src(static_cast<size_t>(rows) * 34, 0);
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t one = 0x3c00;  // f16 1.0
    std::memcpy(&src[r * 34], &one, 2);
    for (int j = 0; j < 32; ++j) src[r * 34 + 2 + j] = static_cast<uint8_t>(r + 1);
  }
  const std::vector<int64_t> map = {2, 0, 3, 1};
  std::vector<float> out(rows * cols);
  ASSERT_TRUE(
      DequantizeRows(static_cast<uint32_t>(GgmlType::kQ8_0), src, rows, cols, out, map).ok());
  for (int64_t r = 0; r < rows; ++r) {
    EXPECT_EQ(out[map[r] * cols], static_cast<float>(r + 1));
  }
  const std::vector<int64_t> not_a_permutation = {0, 0, 1, 2};
  EXPECT_FALSE(DequantizeRows(static_cast<uint32_t>(GgmlType::kQ8_0), src, rows, cols, out,
                              not_a_permutation)
                   .ok());
}

TEST(DequantTest, HalfToFloatIsExactForEveryPattern) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    const double sign = (h & 0x8000) ? -1.0 : 1.0;
    const float got = HalfToFloat(static_cast<uint16_t>(h));
    if (exp == 31) {
      EXPECT_TRUE(mant ? std::isnan(got) : std::isinf(got)) << h;
      continue;
    }
    const double want = exp == 0 ? sign * std::ldexp(mant, -24)
                                 : sign * std::ldexp(1024 + mant, static_cast<int>(exp) - 25);
    ASSERT_EQ(static_cast<double>(got), want) << h;
    ASSERT_EQ(std::signbit(got), (h & 0x8000) != 0) << h;
  }
}

TEST(DequantTest, RejectsBadArguments) {
  std::vector<uint8_t> src(20);
  std::vector<float> out(32);
  const uint32_t q4_1 = static_cast<uint32_t>(GgmlType::kQ4_1);
  EXPECT_TRUE(DequantizeRows(q4_1, src, 1, 32, out).ok());
  // Short source, long source, short destination.
  EXPECT_EQ(DequantizeRows(q4_1, std::span(src).first(19), 1, 32, out).code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<uint8_t> longer(21);
  EXPECT_EQ(DequantizeRows(q4_1, longer, 1, 32, out).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DequantizeRows(q4_1, src, 1, 32, std::span(out).first(31)).code(),
            absl::StatusCode::kInvalidArgument);
  // Row length not a multiple of the block.
  EXPECT_EQ(DequantizeRows(q4_1, src, 1, 31, out).code(), absl::StatusCode::kInvalidArgument);
  // Unknown and unsupported types are named.
  auto unknown = DequantizeRows(4, src, 1, 32, out);
  EXPECT_EQ(unknown.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(unknown.message().find("unknown ggml type 4"), std::string::npos) << unknown;
  std::vector<uint8_t> q2k(84);
  std::vector<float> out256(256);
  auto unsupported = DequantizeRows(static_cast<uint32_t>(GgmlType::kQ2_K), q2k, 1, 256, out256);
  EXPECT_EQ(unsupported.code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(unsupported.message().find("Q2_K"), std::string::npos) << unsupported;
}

TEST(DequantTest, RowBytes) {
  EXPECT_EQ(*GgmlRowBytes(static_cast<uint32_t>(GgmlType::kQ6_K), 512), 420);
  EXPECT_EQ(*GgmlRowBytes(static_cast<uint32_t>(GgmlType::kF32), 3), 12);
  EXPECT_FALSE(GgmlRowBytes(static_cast<uint32_t>(GgmlType::kQ4_K), 128).ok());
  EXPECT_FALSE(GgmlRowBytes(99, 32).ok());
}

}  // namespace
}  // namespace longctx
