#include "engine/backend/cuda/step_graph.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "engine/backend/cuda/cuda_check.h"
#include "engine/util/status_macros.h"

namespace longctx {
namespace {

// Smallest buffer for the host arguments of a recorded step.
constexpr size_t kMinArgsBytes = size_t{1} << 20;
constexpr size_t kArgAlign = 256;
// Graphs are given up after this many failed captures in a row.
constexpr int kMaxCaptureFailures = 3;
// After this many graphs in a row that were replayed at most once (steps that
// keep changing, e.g. sessions joining and leaving), the next kBackoffSteps
// bracketed steps run op by op before recording is tried again.
constexpr int kMaxShortLivedGraphs = 4;
constexpr int kBackoffSteps = 64;

}  // namespace

StepGraph::~StepGraph() { Release(); }

void StepGraph::Init(cudaStream_t stream, bool enabled) {
  stream_ = stream;
  enabled_ = enabled;
  stats_.enabled = enabled;
}

void StepGraph::Release() {
  if (mode_ == Mode::kCapture) {
    cudaGraph_t graph = nullptr;
    if (cudaStreamEndCapture(stream_, &graph) == cudaSuccess && graph != nullptr) {
      cudaGraphDestroy(graph);
    }
    cudaGetLastError();
  }
  mode_ = Mode::kNone;
  DropGraph();
  args_.Release();
}

void* StepGraph::Stage(const void* host, size_t bytes, size_t capacity) {
  capacity = std::max(capacity, bytes);
  if (mode_ == Mode::kCapture) {
    const size_t offset = (args_used_ + kArgAlign - 1) / kArgAlign * kArgAlign;
    args_used_ = offset + capacity;
    args_needed_ = std::max(args_needed_, args_used_);
    arg_slots_.push_back({offset, capacity});
    if (args_used_ > args_.bytes()) {
      // The recording is dropped at End(); the next capture reserves enough.
      Break("the step's arguments outgrew their buffer");
      return args_.device();
    }
    if (bytes > 0) std::memcpy(args_.host() + offset, host, bytes);
    return args_.device() + offset;
  }
  if (broken_) return args_.device();
  if (arg_pos_ >= arg_slots_.size() || bytes > arg_slots_[arg_pos_].capacity) {
    Break("the step's arguments no longer fit the recorded layout");
    return args_.device();
  }
  const ArgSlot& slot = arg_slots_[arg_pos_++];
  if (bytes > 0) std::memcpy(args_.host() + slot.offset, host, bytes);
  return args_.device() + slot.offset;
}

void StepGraph::Trace(std::initializer_list<uint64_t> key) {
  if (!deferred()) return;
  uint64_t h = 0x84222325CBF29CE4ull;
  for (uint64_t v : key) {
    h = (h ^ v) * 0x100000001B3ull;
    h ^= h >> 31;
  }
  if (mode_ == Mode::kCapture) {
    trace_.push_back(h);
    return;
  }
  if (broken_) return;
  if (trace_pos_ >= trace_.size() || trace_[trace_pos_] != h) {
    Break("the step's launches differ from the recorded ones");
    return;
  }
  ++trace_pos_;
}

void StepGraph::Break(const std::string& why) {
  if (broken_) return;
  broken_ = true;
  broken_why_ = why;
}

void StepGraph::DropGraph() {
  if (exec_ != nullptr) cudaGraphExecDestroy(exec_);
  exec_ = nullptr;
  trace_.clear();
  arg_slots_.clear();
  replays_of_graph_ = 0;
}

void StepGraph::Disable(const std::string& why) {
  DropGraph();
  enabled_ = false;
  stats_.enabled = false;
  stats_.disabled_reason = why;
}

absl::Status StepGraph::Begin() {
  if (mode_ != Mode::kNone) {
    return absl::FailedPreconditionError("cuda backend: BeginStep inside a step");
  }
  ++step_serial_;
  broken_ = false;
  broken_why_.clear();
  trace_pos_ = 0;
  arg_pos_ = 0;
  if (!enabled_) {
    mode_ = Mode::kEager;
    return absl::OkStatus();
  }
  // The previous step's arguments must have left the pinned buffer.
  RETURN_IF_ERROR(args_.WaitCopied());
  if (exec_ != nullptr) {
    mode_ = Mode::kReplay;
    return absl::OkStatus();
  }
  if (eager_before_capture_ > 0) {
    --eager_before_capture_;
    ++stats_.eager_steps;
    mode_ = Mode::kEager;
    return absl::OkStatus();
  }
  RETURN_IF_ERROR(args_.Reserve(std::max(args_needed_, kMinArgsBytes), stream_));
  trace_.clear();
  arg_slots_.clear();
  args_used_ = 0;
  const cudaError_t err = cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal);
  if (err != cudaSuccess) {
    cudaGetLastError();
    Disable(absl::StrCat("cudaStreamBeginCapture: ", cudaGetErrorString(err)));
    mode_ = Mode::kEager;
    return absl::OkStatus();
  }
  mode_ = Mode::kCapture;
  return absl::OkStatus();
}

absl::Status StepGraph::End(bool launch) {
  const Mode mode = mode_;
  mode_ = Mode::kNone;
  switch (mode) {
    case Mode::kNone:
      return absl::FailedPreconditionError("cuda backend: EndStep without BeginStep");
    case Mode::kEager:
      return absl::OkStatus();
    case Mode::kCapture:
      return FinishCapture(launch);
    case Mode::kReplay:
      return FinishReplay(launch);
  }
  return absl::OkStatus();
}

absl::Status StepGraph::Abort(bool was_capture) {
  ++stats_.aborted;
  stats_.last_abort = broken_why_;
  DropGraph();
  eager_before_capture_ = 1;
  if (was_capture && ++capture_failures_ >= kMaxCaptureFailures) {
    Disable(
        absl::StrCat("capture failed ", capture_failures_, " times in a row; last: ", broken_why_));
  }
  return absl::AbortedError(absl::StrCat("cuda backend: step not run as a graph: ", broken_why_));
}

absl::Status StepGraph::FinishCapture(bool launch) {
  cudaGraph_t graph = nullptr;
  const cudaError_t end = cudaStreamEndCapture(stream_, &graph);
  if (end != cudaSuccess) {
    cudaGetLastError();
    Break(absl::StrCat("stream capture failed: ", cudaGetErrorString(end)));
  }
  // An op that failed inside the capture may have failed because of it; the
  // step is redone op by op, where a real error shows again.
  if (!launch) Break("an op failed while the step was recorded");
  if (broken_) {
    if (graph != nullptr) cudaGraphDestroy(graph);
    return Abort(/*was_capture=*/true);
  }
  size_t n_nodes = 0;
  cudaError_t err = cudaGraphGetNodes(graph, nullptr, &n_nodes);
  std::vector<cudaGraphNode_t> nodes(n_nodes);
  if (err == cudaSuccess && n_nodes > 0) err = cudaGraphGetNodes(graph, nodes.data(), &n_nodes);
  int64_t kernels = 0;
  for (size_t i = 0; err == cudaSuccess && i < n_nodes; ++i) {
    cudaGraphNodeType type = cudaGraphNodeTypeEmpty;
    err = cudaGraphNodeGetType(nodes[i], &type);
    if (type == cudaGraphNodeTypeKernel) ++kernels;
  }
  if (err == cudaSuccess) err = cudaGraphInstantiate(&exec_, graph, 0);
  cudaGraphDestroy(graph);
  if (err != cudaSuccess) {
    cudaGetLastError();
    exec_ = nullptr;
    Break(absl::StrCat("graph instantiation failed: ", cudaGetErrorString(err)));
    return Abort(/*was_capture=*/true);
  }
  capture_failures_ = 0;
  replays_of_graph_ = 0;
  ++stats_.captures;
  stats_.graph_kernels = kernels;
  stats_.graph_nodes = static_cast<int64_t>(n_nodes);
  stats_.args_bytes = static_cast<int64_t>(args_used_);
  RETURN_IF_ERROR(args_.CopyUp(args_used_, stream_));
  CUDA_RETURN_IF_ERROR(cudaGraphLaunch(exec_, stream_));
  return absl::OkStatus();
}

absl::Status StepGraph::FinishReplay(bool launch) {
  if (!launch) Break("an op failed while the step was checked against the recording");
  if (!broken_ && (trace_pos_ != trace_.size() || arg_pos_ != arg_slots_.size())) {
    Break("the step has fewer launches than the recorded one");
  }
  if (broken_) {
    // A graph that stops matching after at most one replay saved nothing.
    if (replays_of_graph_ > 1) {
      short_lived_graphs_ = 0;
    } else if (++short_lived_graphs_ >= kMaxShortLivedGraphs) {
      short_lived_graphs_ = 0;
      absl::Status aborted = Abort(/*was_capture=*/false);
      eager_before_capture_ = kBackoffSteps;
      ++stats_.backoffs;
      return aborted;
    }
    return Abort(/*was_capture=*/false);
  }
  RETURN_IF_ERROR(args_.CopyUp(args_used_, stream_));
  CUDA_RETURN_IF_ERROR(cudaGraphLaunch(exec_, stream_));
  ++replays_of_graph_;
  ++stats_.replays;
  return absl::OkStatus();
}

absl::Status StepGraph::SetEnabled(bool enabled) {
  if (mode_ != Mode::kNone) {
    return absl::FailedPreconditionError("cuda backend: step graphs switched inside a step");
  }
  DropGraph();
  enabled_ = enabled;
  stats_.enabled = enabled;
  stats_.disabled_reason.clear();
  capture_failures_ = 0;
  short_lived_graphs_ = 0;
  eager_before_capture_ = 1;
  return absl::OkStatus();
}

}  // namespace longctx
