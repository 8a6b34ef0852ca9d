// The ranks of a context-parallel group as a process runs them
// (docs/multi-gpu.md, engine/dist/dist_step_model.h): rank 0 leads and serves;
// every other rank is a process of its own (one per GPU) that loads the same
// model, joins the group and executes the leader's commands until the leader
// ends the group. With the rendezvous "inproc" (CPU backend) rank 0's process
// runs the other ranks as threads, which is how CI exercises the path.
//
// Each rank uses CUDA device 0 of its process: Kubernetes gives each pod its
// GPU as device 0; on one host, start rank r with CUDA_VISIBLE_DEVICES=r.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/dist/communicator.h"
#include "engine/dist/dist_step_model.h"
#include "engine/dist/rendezvous.h"
#include "engine/kv/kv_cache.h"
#include "engine/model/host_weights.h"
#include "engine/model/load_model.h"

namespace longctx {

struct GroupConfig {
  // world_size, this process's rank, the rendezvous and its timeouts.
  DistOptions dist;
  // Called on an in-process rank's thread when it stops, with why.
  std::function<void(int rank, const absl::Status&)> on_rank_stopped;
};

// Rank 0's side of a group: the communicator, the leader's executor, and with
// inproc the other ranks' threads. Outlives the engine whose model is
// MakeStepModel()'s.
class LeaderGroup {
 public:
  // Forms the group (rendezvous, then the communicator) over `model`; inproc
  // ranks build their models from `host` with a KV cache of `kv`.
  static absl::StatusOr<std::unique_ptr<LeaderGroup>> Form(const GroupConfig& config,
                                                           const HostModel& host,
                                                           const KvCacheConfig& kv,
                                                           LlamaModel* model);
  // Joins the inproc ranks' threads (they end when the leader's DistStepModel
  // shuts the group down, or when the group breaks).
  ~LeaderGroup();

  // The scheduler's model over the group.
  std::unique_ptr<DistStepModel> MakeStepModel() const;
  const Communicator& comm() const { return *comm_; }

 private:
  LeaderGroup() = default;

  absl::Duration collective_timeout_;
  std::unique_ptr<Communicator> comm_;
  std::unique_ptr<RankExecutor> leader_;
  // inproc only: the other ranks.
  struct Local {
    std::unique_ptr<Communicator> comm;
    LoadedModel model;
    std::unique_ptr<RankExecutor> executor;
  };
  std::vector<std::unique_ptr<Local>> locals_;
  std::vector<std::thread> threads_;
};

// What a worker rank reports once it has joined.
struct WorkerRankInfo {
  std::string backend;
  int64_t kv_blocks = 0;
  absl::Duration load_time;
};

// A rank other than 0, in its own process: loads the model at `model_path`
// on `backend`, joins the group (then calls on_joined) and serves until rank 0
// ends the group (OK) or the group breaks (its error).
absl::Status ServeWorkerRank(const GroupConfig& config, const std::string& model_path,
                             const std::string& backend, const KvCacheConfig& kv,
                             const std::function<void(const WorkerRankInfo&)>& on_joined);

}  // namespace longctx
