// The default model for tests that run the real weights: the file named by
// LONGCTX_MODEL, loaded once per test binary and shared by every suite.
#pragma once

#include <cstdlib>
#include <utility>

#include "engine/model/host_weights.h"
#include "gtest/gtest.h"

namespace longctx {

// The model, or null when LONGCTX_MODEL is unset (tests then GTEST_SKIP) or
// does not load (a test failure says why).
inline const HostModel* TestHostModel() {
  static const HostModel* const model = []() -> const HostModel* {
    const char* path = std::getenv("LONGCTX_MODEL");
    if (path == nullptr) return nullptr;
    auto host = LoadHostModel(path);
    if (!host.ok()) {
      ADD_FAILURE() << "LONGCTX_MODEL=" << path << ": " << host.status();
      return nullptr;
    }
    return new HostModel(*std::move(host));
  }();
  return model;
}

}  // namespace longctx
