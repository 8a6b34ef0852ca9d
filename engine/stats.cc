#include "engine/stats.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace longctx {

const char* HostMemoryKindName(HostMemoryKind kind) {
  static constexpr const char* kNames[kNumHostMemoryKinds] = {"token_log", "queued", "import",
                                                              "export"};
  return kNames[static_cast<int>(kind)];
}

absl::Status HostMemoryBudget::TryCharge(HostMemoryKind kind, int64_t bytes,
                                         absl::string_view what) {
  const int64_t limit = limit_.load(std::memory_order_relaxed);
  int64_t total = total_.load(std::memory_order_relaxed);
  do {
    if (limit > 0 && bytes > 0 && total + bytes > limit) {
      return absl::ResourceExhaustedError(
          absl::StrCat(what, " needs ", bytes, " bytes of host memory; ", total, " of the ",
                       "server's host_memory_budget of ", limit, " bytes are in use"));
    }
  } while (!total_.compare_exchange_weak(total, total + bytes, std::memory_order_relaxed));
  by_kind_[static_cast<int>(kind)].fetch_add(bytes, std::memory_order_relaxed);
  return absl::OkStatus();
}

void HostMemoryBudget::Charge(HostMemoryKind kind, int64_t bytes) {
  total_.fetch_add(bytes, std::memory_order_relaxed);
  by_kind_[static_cast<int>(kind)].fetch_add(bytes, std::memory_order_relaxed);
}

HostMemoryCharge& HostMemoryCharge::operator=(HostMemoryCharge&& o) noexcept {
  if (this != &o) {
    Reset();
    budget_ = o.budget_;
    kind_ = o.kind_;
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

absl::Status HostMemoryCharge::TryGrow(int64_t bytes, absl::string_view what) {
  if (budget_ == nullptr || bytes <= 0) return absl::OkStatus();
  absl::Status s = budget_->TryCharge(kind_, bytes, what);
  if (s.ok()) bytes_ += bytes;
  return s;
}

void HostMemoryCharge::Reset() {
  if (budget_ != nullptr && bytes_ != 0) budget_->Release(kind_, bytes_);
  bytes_ = 0;
}

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::Observe(double value) {
  const size_t b = static_cast<size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), value) -
                                       bounds_.begin());
  absl::MutexLock lock(&mu_);
  ++counts_[b];
  ++count_;
  sum_ += value;
}

Histogram::Snapshot Histogram::Read() const {
  Snapshot s;
  s.bounds = bounds_;
  absl::MutexLock lock(&mu_);
  s.counts = counts_;
  s.count = count_;
  s.sum = sum_;
  return s;
}

double Histogram::Snapshot::Quantile(double q) const {
  if (count == 0) return 0;
  const double target = q * static_cast<double>(count);
  double seen = 0;
  for (size_t b = 0; b < counts.size(); ++b) {
    const double next = seen + static_cast<double>(counts[b]);
    if (next >= target && counts[b] > 0) {
      const double lo = b == 0 ? 0 : bounds[b - 1];
      if (b == bounds.size()) return lo;  // +Inf bucket: its lower bound
      const double hi = bounds[b];
      return lo + (hi - lo) * (target - seen) / static_cast<double>(counts[b]);
    }
    seen = next;
  }
  return bounds.empty() ? 0 : bounds.back();
}

const char* FinishReasonName(FinishReason r) {
  switch (r) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kStopString:
      return "stop_string";
    case FinishReason::kContext:
      return "context";
  }
  return "unknown";
}

std::vector<double> TimeToFirstTokenBuckets() {
  return {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25,  0.5,   0.75,
          1.0,   2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
}

std::vector<double> InterTokenLatencyBuckets() {
  return {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,  0.3,  0.4, 0.5,
          0.75, 1.0,   2.5,  5.0,   7.5, 10.0, 20.0, 40.0, 80.0};
}

std::vector<double> RequestLatencyBuckets() {
  return {0.3,  0.5,  0.8,  1.0,  1.5,   2.0,   2.5,   5.0,   10.0,   15.0,  20.0,
          30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
}

std::vector<double> StepBuckets() {
  return {0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0};
}

EngineStats::EngineStats()
    : time_to_first_token(TimeToFirstTokenBuckets()),
      inter_token_latency(InterTokenLatencyBuckets()),
      e2e_request_latency(RequestLatencyBuckets()),
      step_seconds(StepBuckets()),
      forward_seconds(StepBuckets()),
      decode_forward_seconds(StepBuckets()),
      step_batch_tokens({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096}),
      export_seconds(RequestLatencyBuckets()),
      import_seconds(RequestLatencyBuckets()) {}

}  // namespace longctx
