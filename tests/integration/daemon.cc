#include "tests/integration/daemon.h"

#include <fcntl.h>
#include <netdb.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "grpcpp/create_channel.h"

namespace longctx::testing {
namespace fs = std::filesystem;

std::string ModelPath() {
  const char* m = std::getenv("LONGCTX_MODEL");
  return m ? m : "";
}

std::optional<std::string> ReadBook(const std::string& file_name) {
  std::vector<fs::path> dirs;
  if (const char* b = std::getenv("LONGCTX_BOOKS")) dirs.emplace_back(b);
  const fs::path src(LONGCTX_SOURCE_DIR);
  dirs.push_back(src / ".." / "shared" / "data" / "books");
  dirs.push_back(src / ".." / ".." / "shared" / "data" / "books");
  for (const fs::path& d : dirs) {
    std::ifstream in(d / file_name, std::ios::binary);
    if (in)
      return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  return std::nullopt;
}

absl::StatusOr<std::unique_ptr<Daemon>> Daemon::Start(
    const std::vector<std::string>& flags, std::shared_ptr<grpc::ChannelCredentials> credentials,
    DaemonLimits limits) {
  if (ModelPath().empty()) return absl::FailedPreconditionError("LONGCTX_MODEL is not set");
  std::unique_ptr<Daemon> d(new Daemon());
  d->credentials_ = credentials ? credentials : grpc::InsecureChannelCredentials();
  char tmpl[] = "/tmp/longctxd-test-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return absl::InternalError("mkdtemp failed");
  d->dir_ = tmpl;
  d->log_path_ = d->dir_ + "/longctxd.log";
  d->port_file_ = d->dir_ + "/ports";
  std::vector<std::string> args = {LONGCTX_DAEMON_PATH, "--listen=127.0.0.1:0",
                                   "--metrics_listen=127.0.0.1:0", "--port_file=" + d->port_file_,
                                   "--model=" + ModelPath(), "--backend=cpu",
                                   "--kv_cache_bytes=512MiB",
                                   // Whatever gate sidecar sits beside the model:
                                   // tests that mix name their gates.
                                   "--infini_gates=none"};
  bool own_state = true;
  for (const std::string& f : flags) own_state = own_state && f.rfind("--state_dir=", 0) != 0;
  if (own_state) args.push_back("--state_dir=" + d->dir_ + "/state");
  args.insert(args.end(), flags.begin(), flags.end());
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    // The server never outlives the test process, however that ends.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);
    const int fd = ::open(d->log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    // The test machine is shared: threads that wait for work should sleep.
    setenv("OMP_WAIT_POLICY", "passive", 0);
    if (limits.max_file_bytes > 0) {
      const rlimit fsize = {static_cast<rlim_t>(limits.max_file_bytes),
                            static_cast<rlim_t>(limits.max_file_bytes)};
      setrlimit(RLIMIT_FSIZE, &fsize);
    }
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  d->pid_ = pid;
  return d;
}

Daemon::~Daemon() {
  if (running()) {
    kill(pid_, SIGKILL);
    int status = 0;
    waitpid(pid_, &status, 0);
  }
  std::error_code ec;
  fs::remove_all(dir_, ec);
}

bool Daemon::running() {
  if (pid_ < 0 || exit_code_) return false;
  int status = 0;
  const pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return false;
  }
  return true;
}

absl::Status Daemon::WaitListening(absl::Duration timeout) {
  const absl::Time end = absl::Now() + timeout;
  while (absl::Now() < end) {
    std::ifstream in(port_file_);
    std::string line;
    int grpc = 0, metrics = 0;
    while (std::getline(in, line)) {
      if (line.rfind("grpc=", 0) == 0) (void)absl::SimpleAtoi(line.substr(5), &grpc);
      if (line.rfind("metrics=", 0) == 0) (void)absl::SimpleAtoi(line.substr(8), &metrics);
    }
    if (grpc > 0) {
      address_ = absl::StrCat("127.0.0.1:", grpc);
      metrics_port_ = metrics;
      grpc::ChannelArguments ch;
      ch.SetMaxSendMessageSize(64 << 20);
      ch.SetMaxReceiveMessageSize(64 << 20);
      channel_ = grpc::CreateCustomChannel(address_, credentials_, ch);
      return absl::OkStatus();
    }
    if (!running()) {
      return absl::InternalError(
          absl::StrCat("longctxd exited with ", *exit_code_, ":\n", LogTail()));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  return absl::DeadlineExceededError("longctxd did not listen in time:\n" + LogTail());
}

absl::Status Daemon::WaitServing(absl::Duration timeout) {
  const absl::Time end = absl::Now() + timeout;
  if (channel_ == nullptr) {
    if (absl::Status s = WaitListening(timeout); !s.ok()) return s;
  }
  auto health = HealthStub();
  while (absl::Now() < end) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
    grpc::health::v1::HealthCheckResponse resp;
    if (health->Check(&ctx, {}, &resp).ok() &&
        resp.status() == grpc::health::v1::HealthCheckResponse::SERVING) {
      return absl::OkStatus();
    }
    if (!running()) {
      return absl::InternalError(
          absl::StrCat("longctxd exited with ", *exit_code_, ":\n", LogTail()));
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  return absl::DeadlineExceededError("longctxd did not serve in time:\n" + LogTail());
}

void Daemon::Signal(int sig) {
  if (running()) kill(pid_, sig);
}

absl::StatusOr<int> Daemon::Wait(absl::Duration timeout) {
  const absl::Time end = absl::Now() + timeout;
  while (running()) {
    if (absl::Now() > end) return absl::DeadlineExceededError("longctxd did not exit in time");
    absl::SleepFor(absl::Milliseconds(20));
  }
  if (!exit_code_) return absl::InternalError("longctxd was never started");
  return *exit_code_;
}

std::shared_ptr<grpc::Channel> Daemon::channel() { return channel_; }

std::unique_ptr<v1::LongContext::Stub> Daemon::Stub() { return v1::LongContext::NewStub(channel_); }

std::unique_ptr<grpc::health::v1::Health::Stub> Daemon::HealthStub() {
  return grpc::health::v1::Health::NewStub(channel_);
}

std::string Daemon::LogTail(size_t bytes) const {
  std::ifstream in(log_path_, std::ios::binary);
  const std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return all.size() > bytes ? all.substr(all.size() - bytes) : all;
}

Daemon* SharedDaemon(std::string* why) {
  static std::unique_ptr<Daemon>* shared = nullptr;
  static std::string* error = nullptr;
  if (shared == nullptr && error == nullptr) {
    if (ModelPath().empty()) {
      error = new std::string("LONGCTX_MODEL is not set: integration tests need the default model");
    } else {
      // Small limits so that the limit tests can reach them cheaply. f32 weights:
      // tests compare its scores with the engine run directly in other prefill
      // pieces, equal up to summation order only without int8 activations.
      auto d = Daemon::Start({"--max_message_bytes=1MiB", "--max_segment_bytes=64KiB",
                              "--max_generate_tokens=512", "--max_session_tokens=8192",
                              "--cpu_weights=f32"});
      absl::Status s = d.ok() ? (*d)->WaitServing(absl::Minutes(5)) : d.status();
      if (s.ok()) {
        shared = new std::unique_ptr<Daemon>(std::move(*d));
        std::atexit([] { shared->reset(); });
      } else {
        error = new std::string(s.ToString());
      }
    }
  }
  if (why) *why = error ? *error : "";
  return shared ? shared->get() : nullptr;
}

absl::StatusOr<std::map<std::string, double>> ScrapeMetrics(int port) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (getaddrinfo("127.0.0.1", absl::StrCat(port).c_str(), &hints, &res) != 0) {
    return absl::UnavailableError("getaddrinfo failed");
  }
  const int fd = socket(res->ai_family, res->ai_socktype, res->ai_protocol);
  const bool connected = fd >= 0 && connect(fd, res->ai_addr, res->ai_addrlen) == 0;
  freeaddrinfo(res);
  if (!connected) {
    if (fd >= 0) close(fd);
    return absl::UnavailableError(absl::StrCat("cannot connect to metrics port ", port));
  }
  const std::string req = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
  if (write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) {
    close(fd);
    return absl::UnavailableError("write failed");
  }
  std::string body;
  char buf[65536];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) body.append(buf, static_cast<size_t>(n));
  close(fd);
  if (body.rfind("HTTP/1.", 0) != 0 || body.find(" 200 ") == std::string::npos) {
    return absl::UnavailableError("metrics endpoint did not answer 200:\n" + body.substr(0, 200));
  }
  std::map<std::string, double> out;
  for (absl::string_view line : absl::StrSplit(body, '\n')) {
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    if (space == absl::string_view::npos) continue;
    double v = 0;
    if (absl::SimpleAtod(line.substr(space + 1), &v)) out[std::string(line.substr(0, space))] = v;
  }
  return out;
}

}  // namespace longctx::testing
