// Helpers shared by the tokenizer and chat template tests: the JSON fixtures
// under tests/fixtures/tokenizer/ (written by tools/gen_tokenizer_golden.py)
// and the default model's vocabulary.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "engine/model/host_weights.h"
#include "engine/tokenizer/vocab.h"
#include "engine/util/json_util.h"
#include "gtest/gtest.h"

namespace longctx::testing {

inline absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline absl::StatusOr<nlohmann::json> ReadFixture(const std::string& name) {
  auto text = ReadFile(absl::StrCat(LONGCTX_SOURCE_DIR, "/tests/fixtures/tokenizer/", name));
  if (!text.ok()) return text.status();
  return ParseJson(*text);
}

// The default model's vocabulary (LoadHostModel on $LONGCTX_MODEL), read once
// per process. Null when LONGCTX_MODEL is unset: callers skip.
inline const VocabData* ModelVocab() {
  static const VocabData* const vocab = []() -> const VocabData* {
    const char* path = std::getenv("LONGCTX_MODEL");
    if (path == nullptr) return nullptr;
    absl::StatusOr<HostModel> model = LoadHostModel(path);
    if (!model.ok()) {
      ADD_FAILURE() << "LoadHostModel(" << path << "): " << model.status();
      return nullptr;
    }
    return new VocabData(std::move(model->vocab));
  }();
  return vocab;
}

}  // namespace longctx::testing
