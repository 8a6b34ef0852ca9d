// Infini gate sidecar files (engine/model/infini_gates.*): safetensors files of
// `blk.N.infini_beta` tensors, written here byte by byte.
#include "engine/model/infini_gates.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace longctx {
namespace {

HostModel TwoLayerConfig() {
  HostModel m;
  m.config.n_layers = 2;
  m.config.n_heads = 3;
  return m;
}

struct Entry {
  std::string name, dtype;
  std::string shape;  // JSON array text
  std::string data;   // raw bytes
};

std::string F32Bytes(const std::vector<float>& v) {
  std::string s(v.size() * 4, '\0');
  std::memcpy(s.data(), v.data(), s.size());
  return s;
}

std::string Bf16Bytes(const std::vector<float>& v) {
  std::string s;
  for (float f : v) {
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    const uint16_t h = static_cast<uint16_t>(bits >> 16);  // exact for these values
    s.append(reinterpret_cast<const char*>(&h), 2);
  }
  return s;
}

// Serialises entries as safetensors; `header_override` replaces the JSON.
std::string Safetensors(const std::vector<Entry>& entries,
                        const std::string& header_override = "") {
  std::string header = "{\"__metadata__\":{\"format\":\"pt\"}", data;
  for (const Entry& e : entries) {
    header +=
        absl::StrCat(",\"", e.name, "\":{\"dtype\":\"", e.dtype, "\",\"shape\":", e.shape,
                     ",\"data_offsets\":[", data.size(), ",", data.size() + e.data.size(), "]}");
    data += e.data;
  }
  header += "}";
  if (!header_override.empty()) header = header_override;
  const uint64_t n = header.size();
  std::string out(reinterpret_cast<const char*>(&n), 8);
  return out + header + data;
}

class InfiniGatesTest : public ::testing::Test {
 protected:
  std::string Write(const std::string& bytes) {
    const std::string path =
        (std::filesystem::temp_directory_path() /
         absl::StrCat("longctx_gates_", ::testing::UnitTest::GetInstance()->random_seed(), "_",
                      counter_++, ".safetensors"))
            .string();
    std::ofstream(path, std::ios::binary) << bytes;
    paths_.push_back(path);
    return path;
  }
  void TearDown() override {
    for (const std::string& p : paths_) std::remove(p.c_str());
  }
  int counter_ = 0;
  std::vector<std::string> paths_;
};

TEST_F(InfiniGatesTest, LoadsF32AndBf16GatesForEveryLayer) {
  HostModel m = TwoLayerConfig();
  m.tensors["blk.0.infini_beta"].data = {9.f, 9.f, 9.f};  // replaced by the sidecar
  const std::vector<float> b0 = {-1.5f, 0.f, 2.25f}, b1 = {0.5f, -0.75f, 8.f};
  const std::string path =
      Write(Safetensors({{"blk.0.infini_beta", "F32", "[3]", F32Bytes(b0)},
                         {"blk.1.infini_beta", "BF16", "[1,3]", Bf16Bytes(b1)}}));
  ASSERT_TRUE(LoadInfiniGateSidecar(path, &m).ok());
  EXPECT_EQ(m.tensors["blk.0.infini_beta"].data, b0);
  EXPECT_EQ(m.tensors["blk.1.infini_beta"].data, b1);
  EXPECT_EQ(m.tensors["blk.1.infini_beta"].shape, (std::vector<int64_t>{1, 3}));
}

TEST_F(InfiniGatesTest, RejectsWhatIsNotAGateOfThisModel) {
  const std::string ok3 = F32Bytes({1.f, 2.f, 3.f});
  const std::vector<std::vector<Entry>> bad = {
      {{"blk.2.infini_beta", "F32", "[3]", ok3}},                        // layer out of range
      {{"blk.0.attn_q.weight", "F32", "[3]", ok3}},                      // not a gate
      {{"blk.x.infini_beta", "F32", "[3]", ok3}},                        // not a layer number
      {{"blk.0.infini_beta", "F32", "[4]", F32Bytes({1, 2, 3, 4})}},     // wrong head count
      {{"blk.0.infini_beta", "I32", "[3]", ok3}},                        // dtype
      {{"blk.0.infini_beta", "F32", "[3]", F32Bytes({1.f, NAN, 3.f})}},  // NaN
      {},                                                                // no gates at all
  };
  for (size_t i = 0; i < bad.size(); ++i) {
    HostModel m = TwoLayerConfig();
    EXPECT_EQ(LoadInfiniGateSidecar(Write(Safetensors(bad[i])), &m).code(),
              absl::StatusCode::kInvalidArgument)
        << "case " << i;
    EXPECT_TRUE(m.tensors.empty()) << "case " << i << ": nothing is stored on failure";
  }
}

TEST_F(InfiniGatesTest, HostileFilesFailCleanly) {
  const std::string good =
      Safetensors({{"blk.0.infini_beta", "F32", "[3]", F32Bytes({1.f, 2.f, 3.f})}});
  std::vector<std::string> files = {
      "",
      std::string("\x05\x00\x00", 3),
      good.substr(0, good.size() - 1),  // data cut short
      Safetensors({},
                  "{\"blk.0.infini_beta\":{\"dtype\":\"F32\",\"shape\":[3],"
                  "\"data_offsets\":[0,12]"),  // unterminated
      Safetensors({}, "[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]"),
      Safetensors({},
                  "{\"blk.0.infini_beta\":{\"dtype\":\"F32\",\"shape\":[3],"
                  "\"data_offsets\":[8,4]}}"),
      Safetensors({},
                  "{\"blk.0.infini_beta\":{\"dtype\":\"F32\",\"shape\":[-3],"
                  "\"data_offsets\":[0,12]}}"),
  };
  std::string huge_len = good;
  const uint64_t n = ~uint64_t{0} - 4;
  std::memcpy(huge_len.data(), &n, 8);
  files.push_back(huge_len);
  for (size_t i = 0; i < files.size(); ++i) {
    HostModel m = TwoLayerConfig();
    EXPECT_FALSE(LoadInfiniGateSidecar(Write(files[i]), &m).ok()) << "file " << i;
  }
  HostModel m = TwoLayerConfig();
  EXPECT_EQ(LoadInfiniGateSidecar("/nonexistent/gates.safetensors", &m).code(),
            absl::StatusCode::kNotFound);
}

TEST_F(InfiniGatesTest, DefaultSidecarSitsBesideTheModel) {
  EXPECT_EQ(DefaultInfiniGatesPath("/m/SmolLM2.Q4_1.gguf"),
            "/m/SmolLM2.Q4_1.infini_gates.safetensors");
  EXPECT_EQ(DefaultInfiniGatesPath("/m/model.bin"), "/m/model.bin.infini_gates.safetensors");
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / absl::StrCat("longctx_gates_hf_", counter_++);
  std::filesystem::create_directories(dir);
  EXPECT_EQ(DefaultInfiniGatesPath(dir.string()), (dir / "infini_gates.safetensors").string());
  std::filesystem::remove_all(dir);
}

TEST_F(InfiniGatesTest, SettingAutoNoneOrAPath) {
  const std::vector<float> b0 = {1.f, 2.f, 3.f}, own = {7.f, 7.f, 7.f};
  const std::string model = Write("not read: only the sidecar's name derives from it");
  const std::string sidecar = DefaultInfiniGatesPath(model);
  // auto without a sidecar: the model's own gates, or none.
  HostModel m = TwoLayerConfig();
  EXPECT_EQ(*ApplyInfiniGates("auto", model, &m), "");
  m.tensors["blk.1.infini_beta"].data = own;
  EXPECT_EQ(*ApplyInfiniGates("auto", model, &m), "model");
  // auto with a sidecar beside the model: the sidecar's gates win.
  std::ofstream(sidecar, std::ios::binary)
      << Safetensors({{"blk.1.infini_beta", "F32", "[3]", F32Bytes(b0)}});
  paths_.push_back(sidecar);
  EXPECT_EQ(*ApplyInfiniGates("auto", model, &m), sidecar);
  EXPECT_EQ(m.tensors["blk.1.infini_beta"].data, b0);
  // none drops every gate, whatever the model or a sidecar holds.
  m.tensors["blk.0.attn_q.weight"].data = {1.f};
  EXPECT_EQ(*ApplyInfiniGates("none", model, &m), "");
  EXPECT_EQ(m.tensors.count("blk.1.infini_beta"), 0u);
  EXPECT_EQ(m.tensors.count("blk.0.attn_q.weight"), 1u) << "other tensors stay";
  // A named sidecar must exist.
  EXPECT_EQ(*ApplyInfiniGates(sidecar, model, &m), sidecar);
  EXPECT_EQ(ApplyInfiniGates(sidecar + ".missing", model, &m).status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace longctx
