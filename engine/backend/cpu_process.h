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
// - OpenMP threads wait at barriers and between parallel regions. Spinning
//   for long (OMP_WAIT_POLICY=active) makes a thread wait for a descheduled
//   peer for whole scheduler slices when the process shares its cores (other
//   processes, a container's CPU quota): measured 10x slower steps on a loaded
//   2-core machine. Sleeping at once (passive) pays a futex wake-up per region,
//   hundreds of them per decode step: quantized decode at 512 tokens ran at
//   69 tok/s passive, 153 tok/s spinning briefly. So, unless OMP_WAIT_POLICY or
//   GOMP_SPINCOUNT is set, threads spin kShortSpin iterations, then sleep
//   (GOMP_SPINCOUNT, libgomp's setting). Set OMP_WAIT_POLICY=active on
//   dedicated cores, passive on crowded ones.
#pragma once

namespace longctx {

void PrepareCpuProcess(char** argv);

}  // namespace longctx
