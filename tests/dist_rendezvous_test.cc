// Rendezvous of the ranks (engine/dist/rendezvous.h): address parsing, option
// validation, and the TCP and file exchanges with threads as ranks on loopback.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/dist/rendezvous.h"
#include "gtest/gtest.h"

namespace longctx {
namespace {

// A loopback port that was free a moment ago.
int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof(a);
  EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  EXPECT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len), 0);
  close(fd);
  return ntohs(a.sin_port);
}

// A 128-byte payload like an NCCL unique id, with zero bytes in it.
std::string IdLikePayload() {
  std::string id(128, '\0');
  for (size_t i = 0; i < id.size(); i += 3) id[i] = static_cast<char>(i * 7 + 1);
  return id;
}

DistOptions Options(int world, int rank, const std::string& address,
                    absl::Duration timeout = absl::Seconds(20)) {
  DistOptions o;
  o.world_size = world;
  o.rank = rank;
  o.rendezvous = address;
  o.rendezvous_timeout = timeout;
  return o;
}

// Runs Rendezvous on one thread per rank; rank 0 offers `payload`.
std::vector<absl::StatusOr<std::string>> RunRanks(const std::vector<DistOptions>& ranks,
                                                  const std::string& payload) {
  std::vector<absl::StatusOr<std::string>> results(ranks.size(), absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (size_t r = 0; r < ranks.size(); ++r) {
    threads.emplace_back([&, r] {
      results[r] = Rendezvous(ranks[r], ranks[r].rank == 0 ? payload : std::string("ignored"));
    });
  }
  for (std::thread& t : threads) t.join();
  return results;
}

TEST(DistRendezvousTest, ParsesAddresses) {
  auto tcp = ParseRendezvousAddress("tcp://longctx-0.longctx:29500");
  ASSERT_TRUE(tcp.ok()) << tcp.status();
  EXPECT_EQ(tcp->kind, RendezvousAddress::Kind::kTcp);
  EXPECT_EQ(tcp->host, "longctx-0.longctx");
  EXPECT_EQ(tcp->port, 29500);
  auto v6 = ParseRendezvousAddress("tcp://[::1]:80");
  ASSERT_TRUE(v6.ok());
  EXPECT_EQ(v6->host, "::1");
  auto file = ParseRendezvousAddress("file:///shared/job-7/id");
  ASSERT_TRUE(file.ok());
  EXPECT_EQ(file->kind, RendezvousAddress::Kind::kFile);
  EXPECT_EQ(file->path, "/shared/job-7/id");
  for (const char* bad : {"", "host:1", "tcp://host", "tcp://host:0", "tcp://host:70000",
                          "tcp://:80", "tcp://h:x", "file://", "udp://h:1"}) {
    EXPECT_EQ(ParseRendezvousAddress(bad).status().code(), absl::StatusCode::kInvalidArgument)
        << bad;
  }
}

TEST(DistRendezvousTest, ValidatesOptions) {
  EXPECT_TRUE(Options(1, 0, "").Validate().ok());
  EXPECT_EQ(Options(2, 0, "").Validate().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Options(2, 2, "tcp://h:1").Validate().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Options(0, 0, "").Validate().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Options(2, 1, "nope").Validate().code(), absl::StatusCode::kInvalidArgument);
  DistOptions o = Options(2, 1, "tcp://h:1");
  o.collective_timeout = absl::ZeroDuration();
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
}

TEST(DistRendezvousTest, TwoRanksExchangeTheIdOverTcp) {
  const std::string address = absl::StrCat("tcp://127.0.0.1:", FreePort());
  const std::string id = IdLikePayload();
  auto results = RunRanks({Options(2, 0, address), Options(2, 1, address)}, id);
  for (auto& r : results) {
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(*r, id);
  }
}

TEST(DistRendezvousTest, FourRanksOverTcpWithRankZeroStartingLast) {
  const std::string address = absl::StrCat("tcp://localhost:", FreePort());
  const std::string id = IdLikePayload();
  std::vector<absl::StatusOr<std::string>> results(4, absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (int r = 3; r >= 0; --r) {
    threads.emplace_back([&, r] { results[r] = Rendezvous(Options(4, r, address), id); });
    if (r == 1) absl::SleepFor(absl::Milliseconds(300));  // workers retry until rank 0 listens
  }
  for (std::thread& t : threads) t.join();
  for (auto& r : results) {
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(*r, id);
  }
}

TEST(DistRendezvousTest, WorldSizeMismatchIsInvalidArgumentOnBothSides) {
  const std::string address = absl::StrCat("tcp://127.0.0.1:", FreePort());
  auto results = RunRanks({Options(2, 0, address), Options(3, 1, address)}, "id");
  EXPECT_EQ(results[0].status().code(), absl::StatusCode::kInvalidArgument) << results[0].status();
  EXPECT_EQ(results[1].status().code(), absl::StatusCode::kInvalidArgument) << results[1].status();
}

TEST(DistRendezvousTest, MissingRankZeroIsUnavailableAfterTheTimeout) {
  const std::string address = absl::StrCat("tcp://127.0.0.1:", FreePort());
  const absl::Time start = absl::Now();
  auto r = Rendezvous(Options(2, 1, address, absl::Milliseconds(400)), "");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(350));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

TEST(DistRendezvousTest, MissingWorkerIsUnavailableForRankZero) {
  const std::string address = absl::StrCat("tcp://127.0.0.1:", FreePort());
  auto r = Rendezvous(Options(3, 0, address, absl::Milliseconds(400)), "id");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_NE(r.status().message().find("1 of 3 ranks"), absl::string_view::npos) << r.status();
}

TEST(DistRendezvousTest, ThreeRanksExchangeTheIdThroughAFile) {
  const std::filesystem::path path =
      std::filesystem::path(testing::TempDir()) / absl::StrCat("longctx_rendezvous_", getpid());
  std::filesystem::remove(path);
  const std::string address = "file://" + path.string();
  const std::string id = IdLikePayload();
  std::vector<absl::StatusOr<std::string>> results(3, absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (int r = 2; r >= 0; --r) {  // readers first: they poll until the file appears
    threads.emplace_back([&, r] { results[r] = Rendezvous(Options(3, r, address), id); });
    absl::SleepFor(absl::Milliseconds(100));
  }
  for (std::thread& t : threads) t.join();
  for (auto& r : results) {
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(*r, id);
  }
  // A reader with another world size refuses the file.
  EXPECT_EQ(Rendezvous(Options(2, 1, address), "").status().code(),
            absl::StatusCode::kInvalidArgument);
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace longctx
