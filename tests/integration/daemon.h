// Test harness for the integration tests: runs the real longctxd binary as a
// child process on free loopback ports, waits for it to serve, and stops it
// with a signal. Also locates the default model and the sample books.
#pragma once

#include <sys/types.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "longctx/v1/longctx.grpc.pb.h"

namespace longctx::testing {

// The model the tests run (env LONGCTX_MODEL), or empty.
std::string ModelPath();
// A sample book's text (env LONGCTX_BOOKS or ../shared/data/books next to the
// source tree), or nullopt.
std::optional<std::string> ReadBook(const std::string& file_name);

// How a test daemon's process is limited.
struct DaemonLimits {
  int64_t max_file_bytes = 0;  // RLIMIT_FSIZE (0: none): a "full disk" for every file
};

class Daemon {
 public:
  // Starts longctxd with `flags` (--name=value) added to the test defaults
  // (loopback ports, the model, the CPU backend, no Infini gates, a port
  // file, a state_dir of its own that goes with it unless `flags` name one);
  // a flag in `flags` overrides a default. Does not wait.
  // `credentials` (default plaintext) are those of the test's own channel.
  static absl::StatusOr<std::unique_ptr<Daemon>> Start(
      const std::vector<std::string>& flags,
      std::shared_ptr<grpc::ChannelCredentials> credentials = nullptr, DaemonLimits limits = {});
  ~Daemon();  // SIGKILL if still running

  // Waits for the port file (the server listens) or for SERVING health.
  absl::Status WaitListening(absl::Duration timeout);
  absl::Status WaitServing(absl::Duration timeout);

  // Sends `sig`; Wait() returns the exit code (or 128 + signal).
  void Signal(int sig);
  absl::StatusOr<int> Wait(absl::Duration timeout);
  bool running();
  int pid() const { return pid_; }

  const std::string& address() const { return address_; }
  int metrics_port() const { return metrics_port_; }
  std::shared_ptr<grpc::Channel> channel();
  std::unique_ptr<v1::LongContext::Stub> Stub();
  std::unique_ptr<grpc::health::v1::Health::Stub> HealthStub();
  // The tail of the server's log (for failure messages).
  std::string LogTail(size_t bytes = 4000) const;

 private:
  Daemon() = default;

  pid_t pid_ = -1;
  std::optional<int> exit_code_;
  std::string dir_;
  std::string log_path_;
  std::string port_file_;
  std::string address_;
  int metrics_port_ = 0;
  std::shared_ptr<grpc::Channel> channel_;
  std::shared_ptr<grpc::ChannelCredentials> credentials_;
};

// The server all tests share that need only a default configuration.
// Started on first use; nullptr (and the reason in *why) when no model is set.
Daemon* SharedDaemon(std::string* why);

// Tests on the shared server; skipped when no model is set. A subclass that
// sets up more calls SharedDaemonTest::SetUp() first and returns if IsSkipped().
class SharedDaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    daemon_ = SharedDaemon(&why);
    if (daemon_ == nullptr) GTEST_SKIP() << why;
    stub_ = daemon_->Stub();
  }
  Daemon* daemon_ = nullptr;
  std::unique_ptr<v1::LongContext::Stub> stub_;
};

// Sample values of an HTTP /metrics page: "name{labels}" -> value.
absl::StatusOr<std::map<std::string, double>> ScrapeMetrics(int port);

}  // namespace longctx::testing
