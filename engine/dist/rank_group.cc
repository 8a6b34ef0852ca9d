#include "engine/dist/rank_group.h"

#include "absl/strings/str_cat.h"
#include "engine/backend/backend_factory.h"
#include "engine/dist/inproc_communicator.h"
#include "engine/util/status_macros.h"
#ifdef LONGCTX_WITH_NCCL
#include "engine/dist/nccl_communicator.h"
#endif

namespace longctx {
namespace {

// The communicator of this process's rank, over NCCL on CUDA device 0.
absl::StatusOr<std::unique_ptr<Communicator>> Connect(const DistOptions& options) {
#ifdef LONGCTX_WITH_NCCL
  ASSIGN_OR_RETURN(std::unique_ptr<NcclCommunicator> comm,
                   NcclCommunicator::Connect(options, /*device=*/0));
  return std::unique_ptr<Communicator>(std::move(comm));
#else
  (void)options;
  return absl::FailedPreconditionError(
      "world_size > 1 over tcp:// or file:// needs a build with CUDA and NCCL "
      "(rendezvous=inproc runs the ranks as threads on the CPU)");
#endif
}

// A rank model built from host weights another rank already holds.
absl::StatusOr<LoadedModel> CpuRankModel(const HostModel& host, const KvCacheConfig& kv) {
  LoadedModel m;
  ASSIGN_OR_RETURN(m.backend, CreateBackend(BackendKind::kCpu));
  ASSIGN_OR_RETURN(m.model, LlamaModel::Create(host, m.backend.get(), kv));
  return m;
}

}  // namespace

absl::StatusOr<std::unique_ptr<LeaderGroup>> LeaderGroup::Form(const GroupConfig& config,
                                                               const HostModel& host,
                                                               const KvCacheConfig& kv,
                                                               LlamaModel* model) {
  const DistOptions& dist = config.dist;
  std::unique_ptr<LeaderGroup> g(new LeaderGroup());
  g->collective_timeout_ = dist.collective_timeout;
  if (dist.rendezvous != "inproc") {
    DistOptions leader = dist;
    leader.rank = 0;
    ASSIGN_OR_RETURN(g->comm_, Connect(leader));
    g->leader_ = std::make_unique<RankExecutor>(g->comm_.get(), model);
    return g;
  }
  auto comms = InProcessCommunicator::CreateGroup(dist.world_size, dist.collective_timeout);
  g->comm_ = std::move(comms[0]);
  for (int r = 1; r < dist.world_size; ++r) {
    auto local = std::make_unique<Local>();
    local->comm = std::move(comms[static_cast<size_t>(r)]);
    ASSIGN_OR_RETURN(local->model, CpuRankModel(host, kv));
    local->executor = std::make_unique<RankExecutor>(local->comm.get(), local->model.model.get());
    g->locals_.push_back(std::move(local));
  }
  for (auto& local : g->locals_) {
    RankExecutor* executor = local->executor.get();
    g->threads_.emplace_back([executor, on_stopped = config.on_rank_stopped] {
      const absl::Status s = ServeRank(*executor);
      if (on_stopped) on_stopped(executor->comm().rank(), s);
    });
  }
  g->leader_ = std::make_unique<RankExecutor>(g->comm_.get(), model);
  return g;
}

LeaderGroup::~LeaderGroup() {
  // Without a shutdown from the leader (e.g. it never served), break the group
  // so the inproc ranks stop waiting.
  if (!threads_.empty() && comm_->health().ok()) comm_->Abort("the leader is going away");
  for (std::thread& t : threads_) t.join();
  leader_.reset();
  locals_.clear();
}

std::unique_ptr<DistStepModel> LeaderGroup::MakeStepModel() const {
  // Heartbeats well inside the workers' collective timeout.
  return std::make_unique<DistStepModel>(leader_.get(), collective_timeout_ / 4);
}

absl::Status ServeWorkerRank(const GroupConfig& config, const std::string& model_path,
                             const std::string& backend, const KvCacheConfig& kv,
                             const std::function<void(const WorkerRankInfo&)>& on_joined) {
  const absl::Time t0 = absl::Now();
  ASSIGN_OR_RETURN(LoadedModel model, LoadModel(model_path, backend, kv));
  WorkerRankInfo info;
  info.backend = std::string(model.backend->Name());
  info.kv_blocks = model.model->kv_cache().total_blocks();
  info.load_time = absl::Now() - t0;
  ASSIGN_OR_RETURN(std::unique_ptr<Communicator> comm, Connect(config.dist));
  RankExecutor executor(comm.get(), model.model.get());
  if (on_joined) on_joined(info);
  return ServeRank(executor);
}

}  // namespace longctx
