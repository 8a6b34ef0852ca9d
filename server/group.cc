#include "server/group.h"

#include <unistd.h>

#include <cctype>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "engine/backend/backend_factory.h"
#include "engine/dist/inproc_communicator.h"
#include "engine/dist/rendezvous.h"
#include "engine/util/status_macros.h"
#include "server/logging.h"
#include "server/server.h"
#ifdef LONGCTX_WITH_NCCL
#include "engine/dist/nccl_communicator.h"
#endif

namespace longctx::server {
namespace {

[[maybe_unused]] DistOptions DistOptionsFrom(const ServerConfig& c, int rank) {
  DistOptions o;
  o.world_size = c.world_size;
  o.rank = rank;
  o.rendezvous = c.rendezvous;
  o.rendezvous_timeout = c.rendezvous_timeout;
  o.collective_timeout = c.collective_timeout;
  return o;
}

// The communicator of this process's rank, over NCCL on CUDA device 0.
absl::StatusOr<std::unique_ptr<Communicator>> Connect(const ServerConfig& c, int rank) {
#ifdef LONGCTX_WITH_NCCL
  ASSIGN_OR_RETURN(std::unique_ptr<NcclCommunicator> comm,
                   NcclCommunicator::Connect(DistOptionsFrom(c, rank), /*device=*/0));
  return std::unique_ptr<Communicator>(std::move(comm));
#else
  (void)c;
  (void)rank;
  return absl::FailedPreconditionError(
      "world_size > 1 over tcp:// or file:// needs a build with CUDA and NCCL "
      "(rendezvous=inproc runs the ranks as threads on the CPU)");
#endif
}

}  // namespace

absl::StatusOr<int> ResolveRank(const ServerConfig& config) {
  if (config.rank >= 0) return config.rank;
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) {
    return absl::FailedPreconditionError("rank -1: cannot read the host name");
  }
  const std::string name(host);
  size_t digits = name.size();
  while (digits > 0 && std::isdigit(static_cast<unsigned char>(name[digits - 1]))) --digits;
  int rank = -1;
  if (digits == 0 || digits == name.size() || name[digits - 1] != '-' ||
      !absl::SimpleAtoi(name.substr(digits), &rank) || rank >= config.world_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rank -1: the host name '", name, "' does not end in -N with N below world_size ",
        config.world_size));
  }
  return rank;
}

absl::StatusOr<RankModel> LoadRankModel(const ServerConfig& config, const HostModel& host,
                                        const std::string& backend_kind) {
  RankModel m;
  ASSIGN_OR_RETURN(BackendKind kind, ParseBackendKind(backend_kind));
  ASSIGN_OR_RETURN(m.backend, CreateBackend(kind));
  ASSIGN_OR_RETURN(m.model,
                   LlamaModel::Create(host, m.backend.get(), EngineOptionsFrom(config).kv));
  return m;
}

absl::StatusOr<std::unique_ptr<LeaderGroup>> LeaderGroup::Form(const ServerConfig& config,
                                                               const HostModel& host,
                                                               LlamaModel* model) {
  std::unique_ptr<LeaderGroup> g(new LeaderGroup());
  g->collective_timeout_ = config.collective_timeout;
  if (config.rendezvous == "inproc") {
    auto comms = InProcessCommunicator::CreateGroup(config.world_size, config.collective_timeout);
    g->comm_ = std::move(comms[0]);
    for (int r = 1; r < config.world_size; ++r) {
      auto local = std::make_unique<Local>();
      local->comm = std::move(comms[static_cast<size_t>(r)]);
      ASSIGN_OR_RETURN(local->model, LoadRankModel(config, host, "cpu"));
      local->executor =
          std::make_unique<RankExecutor>(local->comm.get(), local->model.model.get());
      g->locals_.push_back(std::move(local));
    }
    for (auto& local : g->locals_) {
      RankExecutor* executor = local->executor.get();
      g->threads_.emplace_back([executor] {
        const absl::Status s = ServeRank(*executor);
        Log(s.ok() ? spdlog::level::info : spdlog::level::err, "rank stopped",
            {{"rank", absl::StrCat(executor->comm().rank())}, {"status", s.ToString()}});
      });
    }
  } else {
    ASSIGN_OR_RETURN(g->comm_, Connect(config, 0));
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

absl::Status RunWorkerRank(const ServerConfig& config, int rank,
                           const std::function<void()>& on_joined) {
  const absl::Time t0 = absl::Now();
  ASSIGN_OR_RETURN(HostModel host, LoadHostModel(config.model));
  ASSIGN_OR_RETURN(RankModel model, LoadRankModel(config, host, config.backend));
  host = HostModel();
  Log(spdlog::level::info, "rank loaded",
      {{"rank", absl::StrCat(rank)},
       {"backend", model.backend->Name()},
       {"kv_blocks", absl::StrCat(model.model->kv_cache().total_blocks())},
       {"load_s", absl::StrCat(absl::ToDoubleSeconds(absl::Now() - t0))}});
  ASSIGN_OR_RETURN(std::unique_ptr<Communicator> comm, Connect(config, rank));
  Log(spdlog::level::info, "rank joined the group",
      {{"rank", absl::StrCat(rank)}, {"world_size", absl::StrCat(config.world_size)}});
  RankExecutor executor(comm.get(), model.model.get());
  if (on_joined) on_joined();
  return ServeRank(executor);
}

}  // namespace longctx::server
