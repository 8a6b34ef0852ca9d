// longctxd: the long-context inference service. See server/config.h for the
// settings (longctxd --help lists them) and docs/service.md for operations.
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "engine/backend/cpu_process.h"
#include "engine/dist/rank_group.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "server/config.h"
#include "server/health.h"
#include "server/logging.h"
#include "server/metrics.h"
#include "server/server.h"

namespace {

// SIGTERM/SIGINT/SIGHUP write their number here; a thread reads it. (Libraries start
// threads before main, e.g. OpenBLAS, so blocking the signals and sigwait()
// cannot catch every delivery; a handler can.)
int g_signal_pipe[2] = {-1, -1};

void OnSignal(int sig) {
  const char c = static_cast<char>(sig);
  [[maybe_unused]] ssize_t n = write(g_signal_pipe[1], &c, 1);
}

longctx::server::BuildInfo Build() {
  return {LONGCTX_VERSION, LONGCTX_GIT_COMMIT, LONGCTX_BUILD_TYPE};
}

// A rank other than 0 (engine/dist/rank_group.h): its gRPC endpoint serves only
// grpc.health.v1 (SERVING once it has joined the group, for the same probes as
// rank 0); it serves the group until rank 0 ends it. SIGTERM does not stop it
// at once, since rank 0 drains its calls first and then ends the group; past
// the drain grace it exits anyway.
int RunWorker(const longctx::server::ServerConfig& config, int rank,
              const longctx::server::BuildInfo& build) {
  using longctx::server::Log;
  // Metrics: the process's own (build info, server state) for the same scrape.
  std::unique_ptr<longctx::server::Metrics> metrics;
  if (!config.metrics_listen.empty()) {
    auto m = longctx::server::Metrics::Start(config.metrics_listen, build.version);
    if (!m.ok()) {
      Log(spdlog::level::critical, "cannot start", {{"error", m.status().ToString()}});
      return 1;
    }
    metrics = *std::move(m);
    metrics->SetServerState(0);
  }
  longctx::server::HealthService health;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(config.listen, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&health);
  std::unique_ptr<grpc::Server> grpc_server = builder.BuildAndStart();
  if (grpc_server == nullptr || port == 0) {
    Log(spdlog::level::critical, "cannot start", {{"error", "cannot listen on " + config.listen}});
    return 1;
  }
  Log(spdlog::level::info, "listening (health only)",
      {{"rank", absl::StrCat(rank)}, {"grpc_port", absl::StrCat(port)}});
  std::thread waiter([&config, rank] {
    char sig = 0;
    // SIGHUP reloads rank 0's auth files; a worker has none.
    while ((read(g_signal_pipe[0], &sig, 1) < 0 && errno == EINTR) || sig == SIGHUP) sig = 0;
    const absl::Duration grace = config.drain_grace + config.collective_timeout;
    Log(spdlog::level::info, "signal received: serving until rank 0 ends the group",
        {{"rank", absl::StrCat(rank)}, {"exit_in", absl::FormatDuration(grace)}});
    absl::SleepFor(grace);
    Log(spdlog::level::warn, "rank 0 did not end the group in time: exiting",
        {{"rank", absl::StrCat(rank)}});
    std::fflush(nullptr);
    std::_Exit(0);
  });
  waiter.detach();
  longctx::GroupConfig group = longctx::server::EngineConfigFrom(config).group;
  group.dist.rank = rank;
  const absl::Status s = longctx::ServeWorkerRank(
      group, config.model, config.backend, longctx::server::EngineConfigFrom(config).options.kv,
      [&health, &metrics, rank, &config](const longctx::WorkerRankInfo& info) {
        Log(spdlog::level::info, "rank loaded",
            {{"rank", absl::StrCat(rank)},
             {"backend", info.backend},
             {"kv_blocks", absl::StrCat(info.kv_blocks)},
             {"load_s", absl::StrCat(absl::ToDoubleSeconds(info.load_time))}});
        Log(spdlog::level::info, "rank joined the group",
            {{"rank", absl::StrCat(rank)}, {"world_size", absl::StrCat(config.world_size)}});
        health.SetServing(true);
        if (metrics) metrics->SetServerState(1);
      });
  health.Shutdown();
  grpc_server->Shutdown(std::chrono::system_clock::now());
  if (!s.ok()) {
    Log(spdlog::level::err, "rank stopped",
        {{"rank", absl::StrCat(rank)}, {"error", s.ToString()}});
    return 1;
  }
  Log(spdlog::level::info, "rank stopped: rank 0 ended the group", {{"rank", absl::StrCat(rank)}});
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  longctx::PrepareCpuProcess(argv);
  using longctx::server::Log;
  if (pipe(g_signal_pipe) != 0) {
    std::perror("pipe");
    return 1;
  }
  struct sigaction sa = {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGHUP, &sa, nullptr);  // reloads the auth files (rank 0)
  // A file size limit (RLIMIT_FSIZE) must fail the write (the session store
  // answers it), not kill the process.
  signal(SIGXFSZ, SIG_IGN);

  auto config = longctx::server::LoadServerConfig(argc, argv);
  if (!config.ok()) {
    const bool help = config.status().code() == absl::StatusCode::kCancelled;
    std::fprintf(help ? stdout : stderr, "%s\n", std::string(config.status().message()).c_str());
    return help ? 0 : 2;
  }
  if (auto s = longctx::server::InitLogging(config->log_format, config->log_level); !s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 2;
  }
  const longctx::server::BuildInfo build = Build();
  Log(spdlog::level::info, "longctxd starting",
      {{"version", build.version}, {"git_commit", build.git_commit}, {"build", build.build_type}});
  longctx::server::LogFields settings;
  for (const std::string& line : config->Describe()) {
    const size_t eq = line.find('=');
    settings.emplace_back(line.substr(0, eq), line.substr(eq + 1));
  }
  Log(spdlog::level::info, "config", settings);

  auto rank = longctx::server::ResolveRank(*config);
  if (!rank.ok()) {
    Log(spdlog::level::critical, "cannot start", {{"error", rank.status().ToString()}});
    return 2;
  }
  if (*rank > 0) return RunWorker(*config, *rank, build);

  auto server = longctx::server::Server::Start(*config, build);
  if (!server.ok()) {
    Log(spdlog::level::critical, "cannot start", {{"error", server.status().ToString()}});
    return 1;
  }

  absl::Notification stop;
  std::thread waiter([&] {
    char sig = 0;
    while ((read(g_signal_pipe[0], &sig, 1) < 0 && errno == EINTR) || sig == SIGHUP) {
      if (sig == SIGHUP) (*server)->ReloadAuth(true);
      sig = 0;
    }
    if (!stop.HasBeenNotified()) {
      Log(spdlog::level::info, "signal received",
          {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"}});
      stop.Notify();
    }
  });

  if (absl::Status s = (*server)->LoadEngine(); !s.ok()) {
    Log(spdlog::level::critical, "cannot load the engine", {{"error", s.ToString()}});
    if (!stop.HasBeenNotified()) {
      stop.Notify();
      OnSignal(0);  // wakes the waiter
    }
    waiter.join();
    (*server)->Drain();
    return 1;
  }
  stop.WaitForNotification();
  waiter.join();
  (*server)->Drain();
  return 0;
}
