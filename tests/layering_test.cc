// docs/design.md §1: engine/ never includes gRPC, protobuf or prometheus headers, and
// kernels/ includes nothing of the project beyond itself. Within
// engine/backend/, includes point down only: the Backend interface and the
// backends' parts never include a concrete backend's headers.
#include <filesystem>
#include <fstream>
#include <functional>
#include <regex>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace fs = std::filesystem;

namespace {

// The include lines matching `bad` of the sources under `dir`, skipping those
// `exempt` names.
std::vector<std::string> IncludesMatching(
    const fs::path& dir, const std::regex& bad,
    const std::function<bool(const fs::path&)>& exempt = nullptr) {
  std::vector<std::string> hits;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    const auto ext = e.path().extension();
    if (ext != ".h" && ext != ".cc" && ext != ".cu" && ext != ".cuh") continue;
    if (exempt && exempt(e.path())) continue;
    std::ifstream in(e.path());
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("#include", 0) == 0 && std::regex_search(line, bad)) {
        hits.push_back(e.path().string() + ": " + line);
      }
    }
  }
  return hits;
}

TEST(LayeringTest, EngineIncludesNoRpcOrMetrics) {
  const auto hits = IncludesMatching(fs::path(LONGCTX_SOURCE_DIR) / "engine",
                                     std::regex(R"(grpc|google/protobuf|\.pb\.h|prometheus|server/)"));
  EXPECT_TRUE(hits.empty()) << hits.front();
}

TEST(LayeringTest, KernelsIncludeOnlyKernels) {
  const auto hits = IncludesMatching(fs::path(LONGCTX_SOURCE_DIR) / "kernels",
                                     std::regex(R"(#include\s+"(engine|server|proto)/)"));
  EXPECT_TRUE(hits.empty()) << hits.front();
}

// The .cc files of the CUDA backend itself (engine/backend/cuda/cuda_backend*.cc).
bool IsCudaBackendSource(const fs::path& p) {
  return p.extension() == ".cc" && p.parent_path().filename() == "cuda" &&
         p.filename().string().rfind("cuda_backend", 0) == 0;
}

// The files that may include a concrete backend's headers: the backends' own .cc
// files and the factory that chooses among them.
bool IsConcreteBackendSource(const fs::path& p) {
  return IsCudaBackendSource(p) || p.filename() == "cpu_backend.cc" ||
         p.filename() == "backend_factory.cc";
}

TEST(LayeringTest, BackendPartsIncludeNoConcreteBackend) {
  const auto hits = IncludesMatching(
      fs::path(LONGCTX_SOURCE_DIR) / "engine" / "backend",
      std::regex(R"(#include\s+"engine/backend/(cpu_backend|cuda/cuda_backend(_internal)?)\.h")"),
      IsConcreteBackendSource);
  EXPECT_TRUE(hits.empty()) << hits.front();
}

TEST(LayeringTest, CudaBackendInternalHeaderStaysInTheBackend) {
  for (const char* dir : {"engine", "server", "tools", "tests"}) {
    const auto hits =
        IncludesMatching(fs::path(LONGCTX_SOURCE_DIR) / dir,
                         std::regex(R"(cuda_backend_internal\.h)"), IsCudaBackendSource);
    EXPECT_TRUE(hits.empty()) << hits.front();
  }
}

// Reactors see the server through the narrow CallRegistry (server/call_registry.h),
// never the whole service; the service includes the reactors, not the reverse.
TEST(LayeringTest, ReactorsDoNotIncludeTheService) {
  const auto hits = IncludesMatching(
      fs::path(LONGCTX_SOURCE_DIR) / "server", std::regex(R"(#include\s+"server/service\.h")"),
      [](const fs::path& p) { return p.filename().string().find("reactor") == std::string::npos; });
  EXPECT_TRUE(hits.empty()) << hits.front();
}

}  // namespace
