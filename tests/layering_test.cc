// DESIGN §1: engine/ never includes gRPC, protobuf or prometheus headers, and
// kernels/ includes nothing of the project beyond itself.
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>

#include "gtest/gtest.h"

namespace fs = std::filesystem;

namespace {

// `#include` lines matching `bad` in the sources under `dir` whose file name
// matches `files`.
std::vector<std::string> IncludesMatching(const fs::path& dir, const std::regex& bad,
                                          const std::regex& files = std::regex(".*")) {
  std::vector<std::string> hits;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    const auto ext = e.path().extension();
    if (ext != ".h" && ext != ".cc" && ext != ".cu" && ext != ".cuh") continue;
    if (!std::regex_match(e.path().filename().string(), files)) continue;
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

// Reactors see the server through the narrow CallRegistry (server/call_registry.h),
// never the whole service; the service includes the reactors, not the reverse.
TEST(LayeringTest, ReactorsDoNotIncludeTheService) {
  const fs::path server = fs::path(LONGCTX_SOURCE_DIR) / "server";
  if (!fs::exists(server)) GTEST_SKIP() << "no server/ in this checkout";
  const auto hits = IncludesMatching(server, std::regex(R"(#include\s+"server/service\.h")"),
                                     std::regex(R"(.*reactor.*)"));
  EXPECT_TRUE(hits.empty()) << hits.front();
}

}  // namespace
