// The configuration types of the CUDA backend (what cuda_backend.h's factory
// takes and its accessors report), apart from the backend itself so that the
// backend's parts (attention planning, step graphs) can use them without
// including the backend's public header.
#pragma once

#include <cstdint>
#include <string>

namespace longctx {

// Which attention kernels the backend runs (kernels/cuda/ops_cuda.h).
enum class CudaAttentionKernels {
  kAuto,    // split-KV for decode-sized sequences, tiled for the rest, simple
            // where the tiling does not apply (chunk length or block size not a
            // multiple of 64, head dim not 64 or 128)
  kSimple,  // the warp-per-row kernel for every sequence
  kTiled,   // the tiled kernel wherever it applies, else simple
  kSplit,   // the split-KV kernel wherever it applies, else simple
  // As kAuto, but the tiled work on the mma.sync kernel even where the Hopper
  // (wgmma) kernel could run it: the baseline the wgmma kernel is measured and
  // tested against.
  kAutoMmaSync,
  // As kAuto, with the Hopper kernel's overlapped schedule (a tile's softmax
  // under the previous tile's P V product, kernels/cuda/dca_attention_wgmma.cu)
  // instead of the serial one; not the default until measured on a GPU.
  kAutoWgmmaOverlapped,
};

// The choice a tool's --prefill_kernel flag names: one of kPrefillKernelNames;
// false for any other name.
inline constexpr char kPrefillKernelNames[] = "auto, wgmma-overlapped or mma.sync";
inline bool PrefillKernelsByName(const std::string& name, CudaAttentionKernels* kernels) {
  if (name == "auto") {
    *kernels = CudaAttentionKernels::kAuto;
  } else if (name == "wgmma-overlapped") {
    *kernels = CudaAttentionKernels::kAutoWgmmaOverlapped;
  } else if (name == "mma.sync") {
    *kernels = CudaAttentionKernels::kAutoMmaSync;
  } else {
    return false;
  }
  return true;
}

// Whether the backend picks the kernel per sequence (kAuto and its variants).
inline bool AutomaticKernels(CudaAttentionKernels k) {
  return k == CudaAttentionKernels::kAuto || k == CudaAttentionKernels::kAutoMmaSync ||
         k == CudaAttentionKernels::kAutoWgmmaOverlapped;
}

// The name tests and tools print for a choice of kernels.
inline const char* CudaAttentionKernelsName(CudaAttentionKernels k) {
  switch (k) {
    case CudaAttentionKernels::kSimple:
      return "simple";
    case CudaAttentionKernels::kTiled:
      return "tiled";
    case CudaAttentionKernels::kSplit:
      return "split";
    case CudaAttentionKernels::kAutoMmaSync:
      return "auto-mma.sync";
    case CudaAttentionKernels::kAutoWgmmaOverlapped:
      return "auto-wgmma-overlapped";
    case CudaAttentionKernels::kAuto:
      break;
  }
  return "auto";
}

struct CudaBackendOptions {
  int device = 0;  // CUDA device ordinal
  CudaAttentionKernels attention = CudaAttentionKernels::kAuto;
  // Record bracketed steps (Backend::BeginStep) as CUDA graphs and replay them.
  // A step's first occurrence runs op by op (warming cuBLAS and the scratch
  // buffers), the next is captured, later ones replay while their launches stay
  // the same (same tensors, shapes and work-list sizes; host arguments such as
  // token ids, positions, slots and block tables are rewritten in a fixed
  // device buffer before each replay). A step that no longer matches is redone
  // op by op and captured again.
  bool step_graphs = true;
  // Launch the decode-path kernels as programmatic dependents of the kernel
  // ahead of them, so each one's launch overlaps its predecessor's tail
  // (kernels/cuda/ops_cuda.h, SetDependentLaunch: process-wide, the last
  // backend created sets it).
  bool dependent_launch = true;
};

// What the step graphs of a CUDA backend have done so far.
struct CudaStepGraphStats {
  bool enabled = false;
  int64_t eager_steps = 0;      // bracketed steps run op by op (warm-up)
  int64_t captures = 0;         // graphs recorded
  int64_t replays = 0;          // steps run by replaying a recorded graph
  int64_t aborted = 0;          // steps that had to be redone op by op
  int64_t backoffs = 0;         // pauses of recording after graphs that did not last
  int64_t graph_kernels = 0;    // kernel nodes of the last recorded graph
  int64_t graph_nodes = 0;      // all nodes of the last recorded graph
  int64_t args_bytes = 0;       // host arguments copied up per replay (last graph)
  std::string last_abort;       // why the last step was aborted
  std::string disabled_reason;  // set when the backend gave up on graphs
};

}  // namespace longctx
