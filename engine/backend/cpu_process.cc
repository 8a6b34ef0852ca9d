#include "engine/backend/cpu_process.h"

#include <cblas.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cerrno>
#include <cstring>

namespace longctx {
namespace {

constexpr char kPreparedEnv[] = "LONGCTX_PROCESS_PREPARED";
// Spins of a waiting OpenMP thread before it sleeps: longer than the gaps
// between the parallel regions of a decode step, short against a scheduler
// slice (cpu_process.h).
constexpr char kShortSpin[] = "20000";

// The OpenBLAS kernel family to ask for, or nullptr to keep the detected one.
const char* BetterBlasCore() {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr) return nullptr;
  const char* core = openblas_get_corename();
  if (core == nullptr || (std::strcmp(core, "Prescott") != 0 && std::strcmp(core, "Unknown") != 0)) {
    return nullptr;
  }
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    return "SkylakeX";
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
  return nullptr;
}

}  // namespace

void PrepareCpuProcess(char** argv) {
  if (std::getenv(kPreparedEnv) != nullptr) return;
  bool changed = false;
  if (const char* core = BetterBlasCore()) {
    setenv("OPENBLAS_CORETYPE", core, 1);
    changed = true;
  }
  if (std::getenv("OMP_WAIT_POLICY") == nullptr && std::getenv("GOMP_SPINCOUNT") == nullptr) {
    setenv("GOMP_SPINCOUNT", kShortSpin, 1);
    changed = true;
  }
  if (!changed) return;
  setenv(kPreparedEnv, "1", 1);
  execv("/proc/self/exe", argv);
  std::fprintf(stderr, "warning: could not restart with tuned BLAS/OpenMP settings: %s\n",
               std::strerror(errno));
}

}  // namespace longctx
