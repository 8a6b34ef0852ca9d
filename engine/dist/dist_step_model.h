// Serving one model over a group of ranks (docs/design.md §7): every session is a
// context-parallel session whose KV is spread over the ranks by ChunkPlacement.
//
// Rank 0 (the leader) runs the scheduler; its StepModel is DistStepModel,
// which turns each scheduler operation on a session into a command broadcast
// to every rank: a step (the new tokens), a rollback, a release, a heartbeat
// while idle, shutdown. Every rank, the leader included, executes each command
// with a RankExecutor over its own copy of the model and its own KV cache:
// the session's home rank (the least loaded when the session first steps) runs
// the model with ContextParallelStep, the other ranks serve its attention
// (ContextParallelAttention::ServeStep), and a home other than the leader
// sends the step's logits to the leader. Ranks other than the leader run
// ServeRank until the leader shuts the group down or the group breaks.
//
// A lost rank breaks the communicator: the step in flight and every later one
// fail with UNAVAILABLE (within the communicator's collective timeout), and
// health() turns to that error, which the server reports as NOT_SERVING. While
// the scheduler is idle the leader sends a heartbeat every idle_interval(),
// which every rank answers (an all-gather: a broadcast alone can complete into
// a dead peer's buffers), so the workers' wait for the next command never runs
// into their timeout and a rank lost during a quiet spell is noticed within
// idle_interval() + the collective timeout.
//
// Infini windows (SLIDE/COMPRESS sessions) are not context-parallel: such
// sessions fail with UNIMPLEMENTED on a group of more than one rank.
//
// Thread safety: DistStepModel is used by the leader's engine thread;
// ServeRank runs on the worker rank's own thread. health() from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/dist/communicator.h"
#include "engine/dist/context_parallel.h"
#include "engine/dist/placement.h"
#include "engine/model/llama_model.h"
#include "engine/scheduler/step_model.h"

namespace longctx {

// One command of the leader, as broadcast (fixed size, plain integers).
struct GroupCommand {
  enum Op : int64_t { kHeartbeat = 0, kStep = 1, kTruncate = 2, kRelease = 3, kShutdown = 4 };
  int64_t op = kHeartbeat;
  int64_t session = 0;  // the session's group-wide id
  int64_t home = 0;     // kStep: the session's placement
  int64_t span = 0;
  int64_t n_tokens = 0;   // kStep: new tokens (broadcast right after the command)
  int64_t logits = 0;     // kStep: LogitsMode
  int64_t length = 0;     // kTruncate: the length to keep
  int64_t chunk_len = 0;  // kStep: the step's DcaParams
  int64_t chunk_size = 0;
  int64_t softmax_scale_bits = 0;  // the f32 scale's bits
  int64_t sink_tokens = 0;
  int64_t window_start = 0;
};

// One rank's side of the group: its model, its share of every session, and
// the execution of the leader's commands. Every method is collective.
class RankExecutor {
 public:
  // comm and model outlive the executor; model->kv_cache() holds this rank's KV.
  RankExecutor(Communicator* comm, LlamaModel* model);
  ~RankExecutor();

  Communicator& comm() const { return *comm_; }
  LlamaModel& model() const { return *model_; }
  const ContextParallelStats& attention_stats() const { return cp_.stats(); }

  // Leader: broadcasts `cmd` (and a step's tokens). Others: receives them.
  absl::Status Exchange(GroupCommand* cmd, std::vector<int32_t>* tokens);
  // Runs a received command. For a step, `logits` (leader only; else null)
  // receives the step's logits rows. A failed step has grown no rank's share
  // where the group still works.
  absl::Status Execute(const GroupCommand& cmd, std::span<const int32_t> tokens,
                       std::vector<float>* logits);

 private:
  absl::Status Step(const GroupCommand& cmd, std::span<const int32_t> tokens,
                    std::vector<float>* logits);
  // The session's share on this rank, made at its first step.
  absl::StatusOr<ShardedSequence*> SequenceFor(const GroupCommand& cmd);
  // This rank's part of a step: the model's forward on the home rank, the
  // served attention layers elsewhere.
  absl::Status RunStep(const GroupCommand& cmd, ShardedSequence& seq,
                       std::span<const int32_t> tokens);
  // A home other than the leader sends it the step's outcome and logits.
  absl::Status SendToLeader(const GroupCommand& cmd, absl::Status status,
                            std::vector<float>* logits);
  // Device scratch of at least `bytes`, kept across calls.
  absl::StatusOr<void*> Scratch(DeviceBuffer* buf, size_t* have, size_t bytes);

  Communicator* comm_;
  LlamaModel* model_;
  ContextParallelAttention cp_;
  absl::flat_hash_map<int64_t, std::unique_ptr<ShardedSequence>> sessions_;
  DeviceBuffer command_buf_, token_buf_, result_buf_, ack_buf_;
  size_t token_bytes_ = 0, result_bytes_ = 0, ack_bytes_ = 0;
  std::vector<float> local_logits_;
};

// Runs a rank other than the leader until the leader's shutdown (OK) or until
// the group breaks (its error).
absl::Status ServeRank(RankExecutor& rank);

// The leader's StepModel over the group. Sequences given to Forward live in
// kv_cache(), a ledger of the whole group's blocks (world size × one rank's),
// for the scheduler's accounting; their KV lives on the ranks.
class DistStepModel final : public StepModel {
 public:
  // `rank` is the leader's executor (comm rank 0); it and its model outlive this.
  // idle_interval: at most this long without a command (heartbeats).
  DistStepModel(RankExecutor* rank, absl::Duration idle_interval);
  // Shuts the group down (the workers' ServeRank return OK) while it works.
  ~DistStepModel() override;

  int vocab_size() const override;
  int head_dim() const override;
  KvCache& kv_cache() override { return *ledger_; }
  // Items run one after another, each a context-parallel step over the group.
  absl::Status Forward(std::span<const StepItem> items, std::vector<float>* logits) override;
  absl::StatusOr<std::unique_ptr<InfiniWindow>> CreateWindow(const InfiniConfig& config,
                                                             const cpu::DcaParams& dca) override;
  void TruncateSequence(KvSequence& seq, int length) override;
  void ReleaseSequence(KvSequence& seq) override;
  absl::Duration idle_interval() const override { return idle_interval_; }
  void Idle() override;
  absl::Status health() const override { return rank_->comm().health(); }

  void PublishLoad(EngineStats& stats) const override;

  // Per-rank load as placed: sessions homed and KV tokens held.
  std::vector<RankLoad> Loads() const;

 private:
  struct Placed {
    int64_t id = 0;
    ChunkPlacement placement;
  };
  // Broadcasts and runs one command on every rank.
  absl::Status Run(GroupCommand cmd, std::span<const int32_t> tokens, std::vector<float>* logits);
  absl::Status StepItemOnGroup(const StepItem& item, std::vector<float>* logits);
  // Every rank shrinks the session to `length` tokens (while the group works).
  void TruncateOnRanks(int64_t session, int length);

  RankExecutor* rank_;
  const absl::Duration idle_interval_;
  std::unique_ptr<KvCache> ledger_;
  PlacementTable table_;
  absl::flat_hash_map<const KvSequence*, Placed> placed_;
  int64_t next_id_ = 1;
  absl::Time last_command_;
  std::vector<float> item_logits_;
};

}  // namespace longctx
