#include "engine/scheduler/batch_planner.h"

#include <algorithm>
#include <tuple>

#include "absl/container/flat_hash_map.h"

namespace longctx {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Max-min fair shares of `total` over `demand`: each gets its demand or an
// equal share of what is left, whichever is smaller, raised round by round
// until `total` or the demand is spent. With fewer units than claimants left,
// one each goes to the first ones.
std::vector<int64_t> WaterFill(const std::vector<int64_t>& demand, int64_t total) {
  std::vector<int64_t> out(demand.size(), 0);
  std::vector<size_t> open;
  for (size_t t = 0; t < demand.size(); ++t) {
    if (demand[t] > 0) open.push_back(t);
  }
  while (total > 0 && !open.empty()) {
    const int64_t share = total / static_cast<int64_t>(open.size());
    std::vector<size_t> still;
    for (size_t t : open) {
      const int64_t give = std::min({std::max<int64_t>(share, 1), demand[t] - out[t], total});
      out[t] += give;
      total -= give;
      if (out[t] < demand[t]) still.push_back(t);
    }
    open = std::move(still);
  }
  return out;
}

// The jobs' tenants, numbered by first appearance in `order`.
std::vector<size_t> TenantSlots(std::span<const PlanJob> jobs, const std::vector<size_t>& order,
                                size_t* n_tenants) {
  absl::flat_hash_map<uint64_t, size_t> slot;
  std::vector<size_t> out(jobs.size(), 0);
  for (size_t i : order) out[i] = slot.try_emplace(jobs[i].tenant, slot.size()).first->second;
  *n_tenants = slot.size();
  return out;
}

// The free KV blocks while the plan hands them out.
class KvLedger {
 public:
  KvLedger(int64_t block_size, int64_t free_blocks)
      : block_size_(block_size), free_blocks_(free_blocks) {}

  // How many of `want` tokens fit `job`'s sequence: the room left in its
  // blocks and then the free ones. Takes the blocks they need.
  int64_t Take(const PlanJob& job, int64_t want) {
    // Room in the sequence's own blocks; a restore point adds whole absent
    // blocks, so this does not change when one applies.
    const int64_t slack = job.held_blocks * block_size_ - job.length;
    const int64_t n = std::min(want, slack + free_blocks_ * block_size_);
    if (n > slack) free_blocks_ -= CeilDiv(n - slack, block_size_);
    return n;
  }

 private:
  const int64_t block_size_;
  int64_t free_blocks_;
};

class Planner {
 public:
  Planner(std::span<const PlanJob> jobs, const PlanLimits& limits)
      : jobs_(jobs), limits_(limits), kv_(limits.block_size, limits.free_blocks) {
    plan_.decode_cursor = limits.decode_cursor;
  }

  BatchPlan Run() {
    std::vector<size_t> decoders, prefills;
    for (size_t i = 0; i < jobs_.size(); ++i) {
      (jobs_[i].decoding ? decoders : prefills).push_back(i);
    }
    PickDecoders(decoders);
    for (size_t i : decoders) Decode(i);
    SortPrefills(prefills);
    const bool generating =
        !decoders.empty() ||
        (!prefills.empty() && jobs_[prefills.front()].work == PlanWork::kGenerate);
    budget_ = generating ? std::min(limits_.prefill_budget, limits_.prefill_budget_decoding)
                         : limits_.prefill_budget;
    logit_rows_ = limits_.max_logit_rows;
    ShareAmongTenants(prefills);
    for (size_t i : prefills) {
      if (budget_ <= 0) break;
      Prefill(i);
    }
    return std::move(plan_);
  }

 private:
  // Oldest first; past the cap, the round-robin window.
  void PickDecoders(std::vector<size_t>& decoders) {
    std::sort(decoders.begin(), decoders.end(),
              [&](size_t a, size_t b) { return jobs_[a].order < jobs_[b].order; });
    const size_t cap = static_cast<size_t>(std::max<int64_t>(limits_.max_decode_batch, 0));
    if (decoders.size() <= cap) return;
    size_t& cursor = plan_.decode_cursor;
    cursor %= decoders.size();
    std::rotate(decoders.begin(), decoders.begin() + static_cast<long>(cursor), decoders.end());
    DealByTenant(decoders);
    decoders.resize(cap);
    cursor += cap;
  }

  // Reorders `list` round-robin over its tenants (first one of each tenant,
  // then the second of each, ...), keeping each tenant's own order.
  void DealByTenant(std::vector<size_t>& list) const {
    size_t n_tenants = 0;
    const std::vector<size_t> slot = TenantSlots(jobs_, list, &n_tenants);
    if (n_tenants <= 1) return;
    std::vector<std::vector<size_t>> by_tenant(n_tenants);
    for (size_t i : list) by_tenant[slot[i]].push_back(i);
    const size_t total = list.size();
    list.clear();
    for (size_t round = 0; list.size() < total; ++round) {
      for (const auto& t : by_tenant) {
        if (round < t.size()) list.push_back(t[round]);
      }
    }
  }

  // The most a job's prefill piece could take this step, before KV.
  int64_t Demand(const PlanJob& job) const {
    if (job.unready) return 0;
    const int64_t length = job.window && job.window->resume_to &&
                                   job.length == job.window->sink_tokens
                               ? *job.window->resume_to
                               : job.length;
    int64_t want = std::min(job.target - length, budget_);
    if (job.work == PlanWork::kScore) want = std::min(want, logit_rows_);
    if (job.window) want = WindowPiece(*job.window, length, want);
    return std::max<int64_t>(want, 0);
  }

  // Shares the prefill budget and the logit rows among the tenants of
  // `prefills` (batch_planner.h states the bound this gives).
  void ShareAmongTenants(const std::vector<size_t>& prefills) {
    size_t n_tenants = 0;
    tenant_of_ = TenantSlots(jobs_, prefills, &n_tenants);
    std::vector<int64_t> tokens(n_tenants, 0), rows(n_tenants, 0);
    for (size_t i : prefills) {
      const int64_t d = Demand(jobs_[i]);
      tokens[tenant_of_[i]] += d;
      if (jobs_[i].work == PlanWork::kScore) rows[tenant_of_[i]] += d;
    }
    tenant_tokens_ = WaterFill(tokens, budget_);
    tenant_rows_ = WaterFill(rows, logit_rows_);
  }

  void Decode(size_t i) {
    const PlanJob& job = jobs_[i];
    if (kv_.Take(job, 1) < 1) {
      plan_.refused.push_back({i, PlanRefusal::kKvFull, 1});
      return;
    }
    AddPiece({i, job.length, 1, PieceLogits::kSample, /*decode=*/true});
  }

  // Generate prompts first, oldest first; then shortest remaining first,
  // each job's remaining count lowered by one for every job that arrived
  // after it (aging: newer short jobs cannot pass an older one forever).
  void SortPrefills(std::vector<size_t>& prefills) const {
    uint64_t newest = 0;
    for (size_t i : prefills) newest = std::max(newest, jobs_[i].order);
    auto rank = [&](size_t i) {
      const PlanJob& j = jobs_[i];
      const bool generate = j.work == PlanWork::kGenerate;
      const int64_t aged = j.target - j.length - static_cast<int64_t>(newest - j.order);
      return std::make_tuple(generate ? 0 : 1, generate ? 0 : aged, j.order);
    };
    std::sort(prefills.begin(), prefills.end(),
              [&](size_t a, size_t b) { return rank(a) < rank(b); });
  }

  void Prefill(size_t i) {
    const PlanJob& job = jobs_[i];
    if (job.unready) {
      plan_.refused.push_back({i, PlanRefusal::kUnready, 0});
      return;
    }
    const size_t t = tenant_of_[i];
    // The tenant's share is spent: the job waits for the next step.
    if (tenant_tokens_[t] <= 0 && Demand(job) > 0) return;
    const int64_t length = LengthAfterResume(i);
    int64_t want = std::min({job.target - length, budget_, std::max<int64_t>(tenant_tokens_[t], 0)});
    if (job.work == PlanWork::kScore) {
      if (tenant_rows_[t] <= 0) return;
      want = std::min({want, logit_rows_, tenant_rows_[t]});
    }
    if (job.window) {
      want = WindowPiece(*job.window, length, want);
      if (want < 1) {
        plan_.refused.push_back({i, PlanRefusal::kEmpty, want});
        return;
      }
    }
    const int64_t n = kv_.Take(job, want);
    if (n < 1) {
      plan_.refused.push_back({i, PlanRefusal::kKvFull, want});
      return;
    }
    budget_ -= n;
    tenant_tokens_[t] -= n;
    PieceLogits logits = PieceLogits::kNone;
    if (job.work == PlanWork::kScore) {
      logits = PieceLogits::kAll;
      logit_rows_ -= n;
      tenant_rows_[t] -= n;
    } else if (job.work == PlanWork::kGenerate && length + n == job.target) {
      logits = PieceLogits::kSample;
    }
    AddPiece({i, length, n, logits, /*decode=*/false});
  }

  // The sequence length once the job's restore point applies, if it does now.
  int64_t LengthAfterResume(size_t i) {
    const PlanJob& job = jobs_[i];
    if (!job.window || !job.window->resume_to || job.length != job.window->sink_tokens) {
      return job.length;
    }
    plan_.resumes.push_back(i);
    return *job.window->resume_to;
  }

  // How much of `want` a windowed session's piece may take: an import
  // prefills its sinks alone before it resumes past the evicted tokens, and no
  // piece crosses a chunk boundary. Below 1 when there is nothing to take.
  static int64_t WindowPiece(const PlanWindow& w, int64_t length, int64_t want) {
    if (w.resume_to && length < w.sink_tokens) want = std::min(want, w.sink_tokens - length);
    if (want < 1 || w.chunk_len <= 0) return want;
    return std::min(want, w.chunk_len - length % w.chunk_len);
  }

  void AddPiece(const PlanPiece& piece) {
    plan_.pieces.push_back(piece);
    plan_.tokens += piece.n;
  }

  const std::span<const PlanJob> jobs_;
  const PlanLimits& limits_;
  KvLedger kv_;
  BatchPlan plan_;
  int64_t budget_ = 0;
  int64_t logit_rows_ = 0;
  // Prefill jobs' tenant slots and each tenant's share of the step.
  std::vector<size_t> tenant_of_;
  std::vector<int64_t> tenant_tokens_;
  std::vector<int64_t> tenant_rows_;
};

}  // namespace

BatchPlan PlanBatch(std::span<const PlanJob> jobs, const PlanLimits& limits) {
  return Planner(jobs, limits).Run();
}

}  // namespace longctx
