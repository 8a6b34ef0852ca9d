// The unit-test binary's main: the CPU process set-up every longctx program does
// (engine/backend/cpu_process.h), then GoogleTest.
#include <cstdlib>

#include "engine/backend/cpu_process.h"
#include "gtest/gtest.h"

int main(int argc, char** argv) {
  // The test machine is shared: threads that wait for work should sleep.
  setenv("OMP_WAIT_POLICY", "passive", 0);
  longctx::PrepareCpuProcess(argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
