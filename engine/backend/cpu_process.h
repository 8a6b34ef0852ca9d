// Process set-up for the CPU backend. Call PrepareCpuProcess(argv) first thing in
// main(), before any other work. It may re-execute the program once (same argv)
// with adjusted environment; explicit settings in the environment always win.
//
// Why, two runtime libraries read their settings when they are loaded, before
// main() runs:
// - OpenBLAS chooses its kernels from the CPU model number. On CPUs its build does
//   not know (newer Xeons, many virtual machines) it falls back to its oldest
//   kernels (Prescott, SSE3), an order of magnitude slower. Then, when the CPU has
//   AVX-512 or AVX2, OPENBLAS_CORETYPE is set to the matching kernel family.
// - OpenMP threads spin at barriers by default. When the process shares its cores
//   (other processes, a container's CPU quota), a spinning thread waits for a
//   descheduled peer for whole scheduler slices: measured 10x slower steps on a
//   loaded 2-core machine. OMP_WAIT_POLICY defaults to passive; set it to active
//   on dedicated cores.
#pragma once

namespace longctx {

void PrepareCpuProcess(char** argv);

}  // namespace longctx
