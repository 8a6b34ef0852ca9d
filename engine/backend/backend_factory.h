// Chooses the compute backend at start-up: the one place that knows the
// concrete backends (CPU always, CUDA when built with LONGCTX_CUDA), so that the
// Backend interface (backend.h) and the backends' own parts never include them.
#pragma once

#include <memory>
#include <string_view>

#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "engine/backend/cpu_options.h"

namespace longctx {

enum class BackendKind { kAuto, kCpu, kCuda };
// "auto", "cpu" or "cuda"; INVALID_ARGUMENT otherwise.
absl::StatusOr<BackendKind> ParseBackendKind(std::string_view s);
// kAuto picks CUDA when built with it and a GPU is present. kCuda without CUDA
// in the build is FAILED_PRECONDITION.
// `cpu` configures the CPU backend when that is the one made (validated then).
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(BackendKind kind,
                                                       const CpuBackendOptions& cpu = {});

}  // namespace longctx
