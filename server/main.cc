// longctxd: the long-context inference service. See server/config.h for the
// settings (longctxd --help lists them) and docs/service.md for operations.
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "server/config.h"
#include "server/logging.h"
#include "server/server.h"

namespace {

longctx::server::BuildInfo Build() {
  return {LONGCTX_VERSION, LONGCTX_GIT_COMMIT, LONGCTX_BUILD_TYPE};
}

}  // namespace

int main(int argc, char** argv) {
  using longctx::server::Log;
  // SIGTERM and SIGINT are taken by one thread (sigwait), never by a handler.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

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
  for (const std::string& line : config->Describe()) {
    Log(spdlog::level::info, "config", {{"setting", line}});
  }

  auto server = longctx::server::Server::Start(*config, build);
  if (!server.ok()) {
    Log(spdlog::level::critical, "cannot start", {{"error", server.status().ToString()}});
    return 1;
  }

  absl::Notification stop;
  std::thread waiter([&] {
    int sig = 0;
    sigwait(&signals, &sig);
    if (!stop.HasBeenNotified()) {
      Log(spdlog::level::info, "signal received", {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"}});
      stop.Notify();
    }
  });

  if (absl::Status s = (*server)->LoadEngine(); !s.ok()) {
    Log(spdlog::level::critical, "cannot load the engine", {{"error", s.ToString()}});
    if (!stop.HasBeenNotified()) {
      stop.Notify();
      pthread_kill(waiter.native_handle(), SIGTERM);
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
