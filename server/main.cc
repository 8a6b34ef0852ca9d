// longctxd: the long-context inference service. See server/config.h for the
// settings (longctxd --help lists them) and docs/service.md for operations.
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "engine/backend/cpu_process.h"
#include "server/config.h"
#include "server/logging.h"
#include "server/server.h"

namespace {

// SIGTERM/SIGINT write their number here; a thread reads it. (Libraries start
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

  auto server = longctx::server::Server::Start(*config, build);
  if (!server.ok()) {
    Log(spdlog::level::critical, "cannot start", {{"error", server.status().ToString()}});
    return 1;
  }

  absl::Notification stop;
  std::thread waiter([&] {
    char sig = 0;
    while (read(g_signal_pipe[0], &sig, 1) < 0 && errno == EINTR) {
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
