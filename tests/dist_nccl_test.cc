// NcclCommunicator on two GPUs (one thread per rank and device, TCP rendezvous
// on loopback): the collectives move the right bytes between device buffers,
// and a peer that stops taking part turns into UNAVAILABLE within the timeout.
// Built with CUDA and NCCL; skipped where fewer than two GPUs are visible.
#ifdef LONGCTX_WITH_NCCL

#include <cuda_runtime_api.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/dist/nccl_communicator.h"
#include "gtest/gtest.h"

namespace longctx {
namespace {

int VisibleGpus() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

// Device buffer of n int32, freed on scope exit.
class DeviceInts {
 public:
  explicit DeviceInts(size_t n) : n_(n) { EXPECT_EQ(cudaMalloc(&p_, n * 4), cudaSuccess); }
  ~DeviceInts() { cudaFree(p_); }
  DeviceInts(const DeviceInts&) = delete;
  DeviceInts& operator=(const DeviceInts&) = delete;
  int32_t* get() { return static_cast<int32_t*>(p_); }
  void Set(const std::vector<int32_t>& x) {
    ASSERT_EQ(cudaMemcpy(p_, x.data(), x.size() * 4, cudaMemcpyHostToDevice), cudaSuccess);
  }
  std::vector<int32_t> Get() {
    std::vector<int32_t> x(n_);
    EXPECT_EQ(cudaMemcpy(x.data(), p_, n_ * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    return x;
  }

 private:
  size_t n_;
  void* p_ = nullptr;
};

constexpr int kWorld = 2;

// Runs body(rank, communicator) on one thread per rank, rank r on device r.
void RunRanks(absl::Duration collective_timeout,
              const std::function<void(int, NcclCommunicator&)>& body) {
  const std::string address = absl::StrCat("tcp://127.0.0.1:", FreePort());
  std::vector<std::thread> threads;
  for (int r = 0; r < kWorld; ++r) {
    threads.emplace_back([&, r] {
      DistOptions o;
      o.world_size = kWorld;
      o.rank = r;
      o.rendezvous = address;
      o.rendezvous_timeout = absl::Seconds(60);
      o.collective_timeout = collective_timeout;
      auto comm = NcclCommunicator::Connect(o, r);
      ASSERT_TRUE(comm.ok()) << comm.status();
      body(r, **comm);
    });
  }
  for (std::thread& t : threads) t.join();
}

class DistNcclTest : public testing::Test {
 protected:
  void SetUp() override {
    if (VisibleGpus() < kWorld) GTEST_SKIP() << "needs " << kWorld << " GPUs";
  }
};

TEST_F(DistNcclTest, BroadcastGatherAllGatherOnDevice) {
  RunRanks(absl::Seconds(60), [](int rank, NcclCommunicator& comm) {
    constexpr size_t kN = 1 << 20;  // 4 MiB, like one layer's queries of a prefill chunk
    DeviceInts buf(kN);
    buf.Set(std::vector<int32_t>(kN, rank == 1 ? 42 : -1));
    ASSERT_TRUE(comm.Broadcast(buf.get(), kN * 4, 1).ok());
    for (int32_t x : buf.Get()) ASSERT_EQ(x, 42);

    DeviceInts send(3), all(kWorld * 3);
    send.Set({rank, rank + 10, rank + 20});
    all.Set(std::vector<int32_t>(kWorld * 3, -1));
    ASSERT_TRUE(comm.Gather(send.get(), all.get(), 12, 0).ok());
    if (rank == 0) {
      EXPECT_EQ(all.Get(), (std::vector<int32_t>{0, 10, 20, 1, 11, 21}));
    }
    all.Set(std::vector<int32_t>(kWorld * 3, -1));
    ASSERT_TRUE(comm.AllGather(send.get(), all.get(), 12).ok());
    EXPECT_EQ(all.Get(), (std::vector<int32_t>{0, 10, 20, 1, 11, 21}));
    EXPECT_TRUE(comm.health().ok());
  });
}

TEST_F(DistNcclTest, SilentPeerTurnsIntoUnavailable) {
  RunRanks(absl::Seconds(3), [](int rank, NcclCommunicator& comm) {
    DeviceInts buf(16);
    ASSERT_TRUE(comm.Broadcast(buf.get(), 64, 0).ok());
    if (rank == 1) {
      // Stops taking part, then leaves.
      comm.Abort("test: rank 1 goes away");
      return;
    }
    // Rank 0 receives from the silent rank: nothing can complete this.
    const absl::Time start = absl::Now();
    const absl::Status s = comm.Broadcast(buf.get(), 64, 1);
    EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
    EXPECT_LT(absl::Now() - start, absl::Seconds(30));
    EXPECT_EQ(comm.health().code(), absl::StatusCode::kUnavailable);
    EXPECT_EQ(comm.Broadcast(buf.get(), 64, 0).code(), absl::StatusCode::kUnavailable);
  });
}

TEST(DistNcclIdTest, RejectsAWrongSizedId) {
  DistOptions o;
  EXPECT_EQ(NcclCommunicator::Create(o, 0, "short").status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace longctx

#endif  // LONGCTX_WITH_NCCL
