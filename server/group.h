// The ranks of a context-parallel group as longctxd runs them (DESIGN §7,
// engine/dist/dist_step_model.h): rank 0 serves gRPC and leads; every other
// rank is a process of its own (one per GPU, `--rank=N`) that loads the same
// model, joins the group and executes the leader's commands until the leader
// ends the group. With `--rendezvous=inproc` (CPU backend) rank 0's process
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
#include "engine/backend/backend.h"
#include "engine/dist/communicator.h"
#include "engine/dist/dist_step_model.h"
#include "engine/model/host_weights.h"
#include "engine/model/llama_model.h"
#include "server/config.h"

namespace longctx::server {

// config.rank, or for -1 the ordinal that ends the host name ("longctx-2": 2).
absl::StatusOr<int> ResolveRank(const ServerConfig& config);

// One rank's model on its own backend.
struct RankModel {
  std::unique_ptr<Backend> backend;
  std::unique_ptr<LlamaModel> model;
};
absl::StatusOr<RankModel> LoadRankModel(const ServerConfig& config, const HostModel& host,
                                        const std::string& backend_kind);

// Rank 0's side of a group: the communicator, the leader's executor, and with
// inproc the other ranks' threads. Outlives the SessionService whose model is
// Leader()'s DistStepModel.
class LeaderGroup {
 public:
  // Forms the group (rendezvous, then the communicator) over `model`.
  static absl::StatusOr<std::unique_ptr<LeaderGroup>> Form(const ServerConfig& config,
                                                           const HostModel& host,
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
    RankModel model;
    std::unique_ptr<RankExecutor> executor;
  };
  std::vector<std::unique_ptr<Local>> locals_;
  std::vector<std::thread> threads_;
};

// A rank other than 0, in its own process: loads the model, joins the group
// (then calls on_joined) and serves until rank 0 ends the group (OK) or the
// group breaks (its error).
absl::Status RunWorkerRank(const ServerConfig& config, int rank,
                           const std::function<void()>& on_joined);

}  // namespace longctx::server
