// The unit-test binary's main: the CPU process set-up every longctx program does
// (engine/backend/cpu_process.h), then GoogleTest.
#include "engine/backend/cpu_process.h"
#include "gtest/gtest.h"

int main(int argc, char** argv) {
  longctx::PrepareCpuProcess(argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
