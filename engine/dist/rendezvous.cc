#include "engine/dist/rendezvous.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <set>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "engine/util/status_macros.h"

namespace longctx {
namespace {

// Wire format, all integers big-endian u32.
//   hello (rank > 0 → rank 0): kMagic, kVersion, world_size, rank
//   reply (rank 0 → rank > 0): kMagic, ReplyCode, payload length, payload
// The file holds a reply with code kOk followed by the world size.
constexpr uint32_t kMagic = 0x4c435256;  // "LCRV"
constexpr uint32_t kVersion = 1;
enum ReplyCode : uint32_t { kOk = 0, kWrongWorldSize = 1, kBadRank = 2 };

constexpr absl::Duration kRetryInterval = absl::Milliseconds(50);

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) {
      Reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { Reset(); }
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }

 private:
  void Reset() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }
  int fd_ = -1;
};

absl::Status Errno(absl::string_view what) {
  return absl::UnavailableError(absl::StrCat("rendezvous: ", what, ": ", std::strerror(errno)));
}

int RemainingMs(absl::Time deadline) {
  const absl::Duration left = deadline - absl::Now();
  if (left <= absl::ZeroDuration()) return 0;
  return static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(left) + 1, 1 << 30));
}

// Waits for `events` on fd. DEADLINE passes → UNAVAILABLE.
absl::Status WaitFd(int fd, short events, absl::Time deadline, absl::string_view what) {
  while (true) {
    pollfd p{fd, events, 0};
    const int n = poll(&p, 1, RemainingMs(deadline));
    if (n > 0) return absl::OkStatus();
    if (n == 0) return absl::UnavailableError(absl::StrCat("rendezvous: timed out ", what));
    if (errno != EINTR) return Errno(what);
  }
}

absl::Status WriteAll(int fd, const void* data, size_t n, absl::Time deadline) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    RETURN_IF_ERROR(WaitFd(fd, POLLOUT, deadline, "sending"));
    const ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
    if (k < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      return Errno("send");
    }
    p += k;
    n -= static_cast<size_t>(k);
  }
  return absl::OkStatus();
}

absl::Status ReadAll(int fd, void* data, size_t n, absl::Time deadline) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    RETURN_IF_ERROR(WaitFd(fd, POLLIN, deadline, "receiving"));
    const ssize_t k = recv(fd, p, n, 0);
    if (k == 0) return absl::UnavailableError("rendezvous: peer closed the connection");
    if (k < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      return Errno("recv");
    }
    p += k;
    n -= static_cast<size_t>(k);
  }
  return absl::OkStatus();
}

void PutU32(std::string* out, uint32_t v) {
  const uint32_t be = htonl(v);
  out->append(reinterpret_cast<const char*>(&be), sizeof(be));
}

uint32_t GetU32(const char* p) {
  uint32_t be;
  std::memcpy(&be, p, sizeof(be));
  return ntohl(be);
}

std::string Reply(ReplyCode code, absl::string_view payload) {
  std::string out;
  PutU32(&out, kMagic);
  PutU32(&out, code);
  PutU32(&out, static_cast<uint32_t>(payload.size()));
  out.append(payload.data(), payload.size());
  return out;
}

bool SetNonBlocking(int fd) {
  const int flags = fcntl(fd, F_GETFL, 0);
  return flags >= 0 && fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0;
}

// Listening socket on `port`, every interface: IPv6 dual-stack where the host
// has IPv6, else IPv4.
absl::StatusOr<UniqueFd> Listen(int port) {
  UniqueFd fd(socket(AF_INET6, SOCK_STREAM, 0));
  const int one = 1, zero = 0;
  if (fd.valid()) {
    setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
    sockaddr_in6 a{};
    a.sin6_family = AF_INET6;
    a.sin6_addr = in6addr_any;
    a.sin6_port = htons(static_cast<uint16_t>(port));
    if (bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) fd = UniqueFd();
  }
  if (!fd.valid()) {
    fd = UniqueFd(socket(AF_INET, SOCK_STREAM, 0));
    if (!fd.valid()) return Errno("socket");
    setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    a.sin_port = htons(static_cast<uint16_t>(port));
    if (bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
      return Errno(absl::StrCat("bind port ", port));
    }
  }
  if (listen(fd.get(), 128) != 0) return Errno("listen");
  if (!SetNonBlocking(fd.get())) return Errno("fcntl");
  return fd;
}

// Rank 0 over TCP: hands the payload to each of the other ranks once.
absl::Status ServeTcp(const DistOptions& o, const RendezvousAddress& addr,
                      absl::string_view payload, absl::Time deadline) {
  ASSIGN_OR_RETURN(UniqueFd listener, Listen(addr.port));
  std::set<int> served;
  while (static_cast<int>(served.size()) < o.world_size - 1) {
    absl::Status waited = WaitFd(listener.get(), POLLIN, deadline, "waiting for ranks");
    if (!waited.ok()) {
      return absl::UnavailableError(absl::StrCat("rendezvous: ", served.size() + 1, " of ",
                                                 o.world_size, " ranks arrived within ",
                                                 absl::FormatDuration(o.rendezvous_timeout)));
    }
    UniqueFd peer(accept(listener.get(), nullptr, nullptr));
    if (!peer.valid()) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNABORTED) {
        continue;
      }
      return Errno("accept");
    }
    if (!SetNonBlocking(peer.get())) return Errno("fcntl");
    char hello[16];
    // A connection that is not a rank (a probe, a scanner) is dropped, not fatal,
    // and may not hold rank 0 for long.
    const absl::Time hello_deadline = std::min(deadline, absl::Now() + absl::Seconds(5));
    if (!ReadAll(peer.get(), hello, sizeof(hello), hello_deadline).ok()) continue;
    if (GetU32(hello) != kMagic || GetU32(hello + 4) != kVersion) continue;
    const int world = static_cast<int>(GetU32(hello + 8));
    const int rank = static_cast<int>(GetU32(hello + 12));
    if (world != o.world_size) {
      (void)WriteAll(peer.get(), Reply(kWrongWorldSize, "").data(), 12, deadline);
      return absl::InvalidArgumentError(absl::StrCat("rendezvous: rank ", rank,
                                                     " runs with world size ", world,
                                                     ", rank 0 with ", o.world_size));
    }
    if (rank <= 0 || rank >= o.world_size || served.count(rank) != 0) {
      (void)WriteAll(peer.get(), Reply(kBadRank, "").data(), 12, deadline);
      return absl::InvalidArgumentError(
          absl::StrCat("rendezvous: a peer claims rank ", rank, ", which is ",
                       served.count(rank) != 0 ? "taken" : "out of range"));
    }
    const std::string reply = Reply(kOk, payload);
    if (WriteAll(peer.get(), reply.data(), reply.size(), deadline).ok()) served.insert(rank);
  }
  return absl::OkStatus();
}

// Connects to host:port, retrying refusals and unresolvable names (rank 0's pod
// may not exist yet) until the deadline.
absl::StatusOr<UniqueFd> Connect(const RendezvousAddress& addr, absl::Time deadline) {
  const std::string port = absl::StrCat(addr.port);
  std::string last_error = "no attempt";
  while (absl::Now() < deadline) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    const int rc = getaddrinfo(addr.host.c_str(), port.c_str(), &hints, &found);
    if (rc != 0) {
      last_error = absl::StrCat("resolve ", addr.host, ": ", gai_strerror(rc));
    }
    for (addrinfo* a = rc == 0 ? found : nullptr; a != nullptr; a = a->ai_next) {
      UniqueFd fd(socket(a->ai_family, a->ai_socktype, a->ai_protocol));
      if (!fd.valid() || !SetNonBlocking(fd.get())) continue;
      if (connect(fd.get(), a->ai_addr, a->ai_addrlen) != 0 && errno != EINPROGRESS) {
        last_error = absl::StrCat("connect: ", std::strerror(errno));
        continue;
      }
      const absl::Time attempt = std::min(deadline, absl::Now() + absl::Seconds(5));
      if (!WaitFd(fd.get(), POLLOUT, attempt, "connecting").ok()) {
        last_error = "connect: timed out";
        continue;
      }
      int err = 0;
      socklen_t len = sizeof(err);
      getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
      if (err == 0) {
        freeaddrinfo(found);
        return fd;
      }
      last_error = absl::StrCat("connect: ", std::strerror(err));
    }
    if (found != nullptr) freeaddrinfo(found);
    absl::SleepFor(std::min(kRetryInterval, deadline - absl::Now()));
  }
  return absl::UnavailableError(absl::StrCat("rendezvous: rank 0 at ", addr.host, ":", addr.port,
                                             " not reachable (", last_error, ")"));
}

absl::StatusOr<std::string> JoinTcp(const DistOptions& o, const RendezvousAddress& addr,
                                    absl::Time deadline) {
  ASSIGN_OR_RETURN(UniqueFd fd, Connect(addr, deadline));
  std::string hello;
  PutU32(&hello, kMagic);
  PutU32(&hello, kVersion);
  PutU32(&hello, static_cast<uint32_t>(o.world_size));
  PutU32(&hello, static_cast<uint32_t>(o.rank));
  RETURN_IF_ERROR(WriteAll(fd.get(), hello.data(), hello.size(), deadline));
  char head[12];
  RETURN_IF_ERROR(ReadAll(fd.get(), head, sizeof(head), deadline));
  if (GetU32(head) != kMagic) {
    return absl::UnavailableError("rendezvous: the endpoint is not a longctx rank 0");
  }
  switch (GetU32(head + 4)) {
    case kOk:
      break;
    case kWrongWorldSize:
      return absl::InvalidArgumentError(
          absl::StrCat("rendezvous: rank 0 runs with a different world size than ", o.world_size));
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("rendezvous: rank 0 refused rank ", o.rank, " (taken or out of range)"));
  }
  const uint32_t size = GetU32(head + 8);
  if (size > kMaxRendezvousPayload) {
    return absl::UnavailableError(absl::StrCat("rendezvous: payload of ", size, " bytes"));
  }
  std::string payload(size, '\0');
  RETURN_IF_ERROR(ReadAll(fd.get(), payload.data(), size, deadline));
  return payload;
}

absl::Status PublishFile(const DistOptions& o, const std::string& path, absl::string_view payload) {
  std::string content = Reply(kOk, payload);
  PutU32(&content, static_cast<uint32_t>(o.world_size));
  const std::string tmp = absl::StrCat(path, ".tmp.", getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(content.data(), static_cast<std::streamsize>(content.size()));
    out.flush();
    if (!out) return absl::UnavailableError(absl::StrCat("rendezvous: cannot write ", tmp));
  }
  // rename() is atomic: readers see no file or the whole file.
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return Errno(absl::StrCat("rename to ", path));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadFile(const DistOptions& o, const std::string& path,
                                     absl::Time deadline) {
  while (true) {
    std::ifstream in(path, std::ios::binary);
    if (in) {
      const std::string content((std::istreambuf_iterator<char>(in)),
                                std::istreambuf_iterator<char>());
      const size_t size = content.size() >= 12 ? GetU32(content.data() + 8) : 0;
      if (content.size() < 16 || GetU32(content.data()) != kMagic || content.size() != 16 + size) {
        return absl::InvalidArgumentError(
            absl::StrCat("rendezvous: ", path, " is not a rendezvous file"));
      }
      const int world = static_cast<int>(GetU32(content.data() + 12 + size));
      if (world != o.world_size) {
        return absl::InvalidArgumentError(absl::StrCat("rendezvous: ", path, " is for world size ",
                                                       world, ", this rank runs with ",
                                                       o.world_size));
      }
      return content.substr(12, size);
    }
    if (absl::Now() >= deadline) {
      return absl::UnavailableError(absl::StrCat("rendezvous: ", path, " did not appear within ",
                                                 absl::FormatDuration(o.rendezvous_timeout)));
    }
    absl::SleepFor(std::min(kRetryInterval, deadline - absl::Now()));
  }
}

}  // namespace

absl::Status DistOptions::Validate() const {
  if (world_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("world_size must be ≥ 1, got ", world_size));
  }
  if (rank < 0 || rank >= world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", rank, " outside [0, world_size ", world_size, ")"));
  }
  if (world_size > 1) {
    if (rendezvous.empty()) {
      return absl::InvalidArgumentError("rendezvous address required when world_size > 1");
    }
    RETURN_IF_ERROR(ParseRendezvousAddress(rendezvous).status());
  }
  if (rendezvous_timeout <= absl::ZeroDuration() || collective_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("rendezvous and collective timeouts must be positive");
  }
  return absl::OkStatus();
}

absl::StatusOr<RendezvousAddress> ParseRendezvousAddress(absl::string_view address) {
  RendezvousAddress a;
  if (absl::ConsumePrefix(&address, "file://")) {
    if (address.empty()) return absl::InvalidArgumentError("rendezvous: file:// needs a path");
    a.kind = RendezvousAddress::Kind::kFile;
    a.path = std::string(address);
    return a;
  }
  if (!absl::ConsumePrefix(&address, "tcp://")) {
    return absl::InvalidArgumentError(absl::StrCat("rendezvous address '", std::string(address),
                                                   "' must start with tcp:// or file://"));
  }
  const size_t colon = address.rfind(':');
  int port = 0;
  if (colon == absl::string_view::npos || colon == 0 ||
      !absl::SimpleAtoi(address.substr(colon + 1), &port) || port < 1 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rendezvous address tcp://", std::string(address), " must be tcp://HOST:PORT"));
  }
  a.kind = RendezvousAddress::Kind::kTcp;
  a.host = std::string(address.substr(0, colon));
  // [v6::addr] brackets are URL syntax, not part of the name.
  if (a.host.size() > 2 && a.host.front() == '[' && a.host.back() == ']') {
    a.host = a.host.substr(1, a.host.size() - 2);
  }
  a.port = port;
  return a;
}

absl::StatusOr<std::string> Rendezvous(const DistOptions& options, absl::string_view payload) {
  RETURN_IF_ERROR(options.Validate());
  if (options.rank == 0 && payload.size() > kMaxRendezvousPayload) {
    return absl::InvalidArgumentError(
        absl::StrCat("rendezvous: payload of ", payload.size(), " bytes is too large"));
  }
  if (options.world_size == 1) return std::string(payload);
  ASSIGN_OR_RETURN(const RendezvousAddress addr, ParseRendezvousAddress(options.rendezvous));
  const absl::Time deadline = absl::Now() + options.rendezvous_timeout;
  if (addr.kind == RendezvousAddress::Kind::kFile) {
    if (options.rank == 0) {
      RETURN_IF_ERROR(PublishFile(options, addr.path, payload));
      return std::string(payload);
    }
    return ReadFile(options, addr.path, deadline);
  }
  if (options.rank == 0) {
    RETURN_IF_ERROR(ServeTcp(options, addr, payload, deadline));
    return std::string(payload);
  }
  return JoinTcp(options, addr, deadline);
}

}  // namespace longctx
