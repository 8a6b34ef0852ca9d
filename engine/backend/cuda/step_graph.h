// Step graphs of the CUDA backend (CudaBackendOptions::step_graphs): a forward
// step bracketed by Backend::BeginStep / EndStep is recorded once as a CUDA
// graph and replayed while it stays the same.
//
// Inside a bracket the backend's ops call Stage() for their host arguments and
// Trace() with what they launch (tensors, shapes, staged addresses, work-list
// sizes). Modes:
//   eager    the first step after a change runs op by op (warming cuBLAS and
//            growing scratch buffers); Stage/Trace are not used.
//   capture  the ops' launches are recorded (stream capture); their arguments
//            get fixed places in a pinned buffer mirrored on the device, and
//            their keys form the trace. End() instantiates and launches.
//   replay   the ops validate, write their arguments into the recorded places
//            and check their keys against the trace, launching nothing. End()
//            copies the arguments up in one transfer and launches the graph.
// A step that does not match the recording (keys differ, an argument outgrew
// its place, a scratch buffer would have to grow) is Break()-ed: End() returns
// ABORTED, nothing ran, the graph is dropped and the caller redoes the step op
// by op; the next bracketed step runs eagerly, the one after is captured again.
// Graphs are given up (with the reason in the stats) after repeated capture
// failures; when recordings keep being replayed at most once, recording pauses
// for a number of steps.
//
// Thread safety: owned by the backend's engine thread.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/backend/cuda/cuda_options.h"
#include "engine/backend/cuda/device_memory.h"

namespace longctx {

class StepGraph {
 public:
  enum class Mode { kNone, kEager, kCapture, kReplay };

  StepGraph() = default;
  StepGraph(const StepGraph&) = delete;
  StepGraph& operator=(const StepGraph&) = delete;
  ~StepGraph();

  void Init(cudaStream_t stream, bool enabled);
  // Ends an open capture and frees everything. REQUIRES: the stream still exists.
  void Release();

  Mode mode() const { return mode_; }
  // Changes at every Begin(): what an op caches for the rest of one step.
  uint64_t step_serial() const { return step_serial_; }
  // Capturing or replaying: ops must not run anything but launches.
  bool deferred() const { return mode_ == Mode::kCapture || mode_ == Mode::kReplay; }
  bool replaying() const { return mode_ == Mode::kReplay; }

  absl::Status Begin();
  absl::Status End(bool launch);

  // REQUIRES: deferred(). Device address of `bytes` of host arguments at this
  // op's place in the step's argument buffer, which holds up to `capacity`
  // bytes (room for growth between replays). After a Break the address is a
  // placeholder: the step will not run.
  void* Stage(const void* host, size_t bytes, size_t capacity);
  // Records (capture) or checks (replay) one op's launch key.
  void Trace(std::initializer_list<uint64_t> key);
  // Marks the current step unusable as a graph; `why` goes to the stats.
  void Break(const std::string& why);

  // REQUIRES: mode() == kNone. Drops any recording.
  absl::Status SetEnabled(bool enabled);
  const CudaStepGraphStats& stats() const { return stats_; }

 private:
  struct ArgSlot {
    size_t offset = 0;
    size_t capacity = 0;
  };
  void DropGraph();
  void Disable(const std::string& why);
  absl::Status Abort(bool was_capture);
  absl::Status FinishCapture(bool launch);
  absl::Status FinishReplay(bool launch);

  cudaStream_t stream_ = nullptr;
  Mode mode_ = Mode::kNone;
  uint64_t step_serial_ = 0;
  bool enabled_ = false;
  int eager_before_capture_ = 1;
  int capture_failures_ = 0;
  int short_lived_graphs_ = 0;
  int64_t replays_of_graph_ = 0;
  bool broken_ = false;
  std::string broken_why_;
  cudaGraphExec_t exec_ = nullptr;
  std::vector<uint64_t> trace_;  // one key per op of the recorded step
  size_t trace_pos_ = 0;
  std::vector<ArgSlot> arg_slots_;  // one per staged argument of the recorded step
  size_t arg_pos_ = 0;
  size_t args_used_ = 0;    // bytes of args_ the recording laid out
  size_t args_needed_ = 0;  // what the next capture reserves
  MirroredBuffer args_;
  CudaStepGraphStats stats_;
};

}  // namespace longctx
