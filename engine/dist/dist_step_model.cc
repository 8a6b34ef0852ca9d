#include "engine/dist/dist_step_model.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/util/status_macros.h"

namespace longctx {
namespace {

static_assert(sizeof(GroupCommand) % sizeof(float) == 0);

// Raw bytes as an f32 tensor: Upload/Download of f32 copy the bits unchanged.
Tensor Raw(void* data, size_t bytes) {
  return Tensor{data, DType::kF32, 1, static_cast<int64_t>(bytes / sizeof(float))};
}

cpu::DcaParams DcaOf(const GroupCommand& c) {
  cpu::DcaParams d;
  d.chunk_len = static_cast<int>(c.chunk_len);
  d.chunk_size = static_cast<int>(c.chunk_size);
  d.softmax_scale = std::bit_cast<float>(static_cast<uint32_t>(c.softmax_scale_bits));
  d.sink_tokens = static_cast<int>(c.sink_tokens);
  d.window_start = static_cast<int>(c.window_start);
  return d;
}

int64_t LogitRows(const GroupCommand& c) {
  switch (static_cast<LogitsMode>(c.logits)) {
    case LogitsMode::kNone:
      return 0;
    case LogitsMode::kLast:
      return 1;
    case LogitsMode::kAll:
      return c.n_tokens;
    case LogitsMode::kGreedy:  // refused before a command is sent
      return 0;
  }
  return 0;
}

}  // namespace

RankExecutor::RankExecutor(Communicator* comm, LlamaModel* model)
    : comm_(comm),
      model_(model),
      cp_(comm, model->backend(), &model->kv_cache(), model->config().n_heads,
          std::vector<float>(model->inv_freq().begin(), model->inv_freq().end())) {}

RankExecutor::~RankExecutor() {
  for (auto& [id, seq] : sessions_) cp_.Release(*seq);
}

absl::StatusOr<void*> RankExecutor::Scratch(DeviceBuffer* buf, size_t* have, size_t bytes) {
  if (bytes > *have) {
    *buf = DeviceBuffer();
    *have = 0;
    ASSIGN_OR_RETURN(*buf, model_->backend()->Allocate(bytes));
    *have = bytes;
  }
  return buf->data();
}

absl::Status RankExecutor::Exchange(GroupCommand* cmd, std::vector<int32_t>* tokens) {
  Backend& b = *model_->backend();
  const bool leader = comm_->rank() == 0;
  if (command_buf_.data() == nullptr) {
    auto buf = b.Allocate(sizeof(GroupCommand));
    if (!buf.ok()) {
      comm_->Abort(buf.status().message());
      return buf.status();
    }
    command_buf_ = *std::move(buf);
  }
  const Tensor wire = Raw(command_buf_.data(), sizeof(GroupCommand));
  auto local = [&](absl::Status s) {  // a local failure would leave peers waiting
    if (!s.ok()) comm_->Abort(s.message());
    return s;
  };
  if (leader) {
    RETURN_IF_ERROR(local(b.Upload(wire, reinterpret_cast<const float*>(cmd))));
    RETURN_IF_ERROR(local(b.Synchronize()));
  }
  RETURN_IF_ERROR(comm_->Broadcast(command_buf_.data(), sizeof(GroupCommand), 0));
  if (!leader) {
    RETURN_IF_ERROR(local(b.Download(reinterpret_cast<float*>(cmd), wire)));
  }
  if (cmd->op != GroupCommand::kStep) return absl::OkStatus();
  if (cmd->n_tokens < 1 || cmd->n_tokens > (int64_t{1} << 24)) {
    return local(absl::InternalError(absl::StrCat("group: step of ", cmd->n_tokens, " tokens")));
  }
  const size_t bytes = static_cast<size_t>(cmd->n_tokens) * sizeof(int32_t);
  auto buf = Scratch(&token_buf_, &token_bytes_, bytes);
  if (!buf.ok()) return local(buf.status());
  const Tensor t = Raw(*buf, bytes);
  if (leader) {
    RETURN_IF_ERROR(local(b.Upload(t, reinterpret_cast<const float*>(tokens->data()))));
    RETURN_IF_ERROR(local(b.Synchronize()));
  }
  RETURN_IF_ERROR(comm_->Broadcast(*buf, bytes, 0));
  if (!leader) {
    tokens->resize(static_cast<size_t>(cmd->n_tokens));
    RETURN_IF_ERROR(local(b.Download(reinterpret_cast<float*>(tokens->data()), t)));
  }
  return absl::OkStatus();
}

absl::Status RankExecutor::Execute(const GroupCommand& cmd, std::span<const int32_t> tokens,
                                   std::vector<float>* logits) {
  switch (cmd.op) {
    case GroupCommand::kHeartbeat: {
      // A round trip: a broadcast alone may complete into a dead peer's
      // buffers (small messages are sent eagerly), so every rank answers.
      const size_t bytes = sizeof(float) * static_cast<size_t>(comm_->world_size());
      auto buf = Scratch(&ack_buf_, &ack_bytes_, bytes);
      if (!buf.ok()) {
        comm_->Abort(buf.status().message());
        return buf.status();
      }
      float* acks = static_cast<float*>(*buf);
      return comm_->AllGather(acks + comm_->rank(), acks, sizeof(float));
    }
    case GroupCommand::kShutdown:
      return absl::OkStatus();
    case GroupCommand::kTruncate: {
      auto it = sessions_.find(cmd.session);
      if (it != sessions_.end()) cp_.Truncate(*it->second, static_cast<int>(cmd.length));
      return absl::OkStatus();
    }
    case GroupCommand::kRelease: {
      auto it = sessions_.find(cmd.session);
      if (it != sessions_.end()) {
        cp_.Release(*it->second);
        sessions_.erase(it);
      }
      return absl::OkStatus();
    }
    case GroupCommand::kStep:
      return Step(cmd, tokens, logits);
  }
  absl::Status bad = absl::InternalError(absl::StrCat("group: unknown command ", cmd.op));
  comm_->Abort(bad.message());
  return bad;
}

absl::StatusOr<ShardedSequence*> RankExecutor::SequenceFor(const GroupCommand& cmd) {
  auto it = sessions_.find(cmd.session);
  if (it == sessions_.end()) {
    auto placement = ChunkPlacement::Create(comm_->world_size(), static_cast<int>(cmd.home),
                                            static_cast<int>(cmd.span));
    if (!placement.ok()) {
      comm_->Abort(placement.status().message());
      return placement.status();
    }
    it = sessions_.emplace(cmd.session, std::make_unique<ShardedSequence>(*placement)).first;
  }
  return it->second.get();
}

absl::Status RankExecutor::RunStep(const GroupCommand& cmd, ShardedSequence& seq,
                                   std::span<const int32_t> tokens) {
  const cpu::DcaParams dca = DcaOf(cmd);
  const int n = static_cast<int>(cmd.n_tokens);
  const int n_layers = model_->config().n_layers;
  if (comm_->rank() != static_cast<int>(cmd.home)) return cp_.ServeStep(seq, n, n_layers, dca);
  RETURN_IF_ERROR(cp_.BeginStep(seq, n));
  ContextParallelStep step(&cp_, &seq, dca, n_layers);
  StepItem item;
  item.tokens = tokens;
  item.logits = static_cast<LogitsMode>(cmd.logits);
  item.dca = dca;
  item.external = &step;
  return step.Finish(model_->Forward({&item, 1}, &local_logits_));
}

absl::Status RankExecutor::Step(const GroupCommand& cmd, std::span<const int32_t> tokens,
                                std::vector<float>* logits) {
  ASSIGN_OR_RETURN(ShardedSequence * seq, SequenceFor(cmd));
  absl::Status status = RunStep(cmd, *seq, tokens);
  if (cmd.home == 0) {
    if (comm_->rank() == 0 && status.ok()) logits->swap(local_logits_);
    return status;
  }
  return SendToLeader(cmd, std::move(status), logits);
}

absl::Status RankExecutor::SendToLeader(const GroupCommand& cmd, absl::Status status,
                                        std::vector<float>* logits) {
  const int rank = comm_->rank(), home = static_cast<int>(cmd.home);
  // The home sends its outcome and logits to the leader: [status code, rows].
  if (!comm_->health().ok()) return status.ok() ? comm_->health() : status;
  const int vocab = model_->config().vocab_size;
  const int64_t rows = LogitRows(cmd);
  const size_t count = 1 + static_cast<size_t>(rows) * static_cast<size_t>(vocab);
  auto buf = Scratch(&result_buf_, &result_bytes_, count * sizeof(float));
  if (!buf.ok()) {
    comm_->Abort(buf.status().message());
    return buf.status();
  }
  Backend& b = *model_->backend();
  const Tensor wire = Raw(*buf, count * sizeof(float));
  absl::Status local;
  if (rank == home) {
    std::vector<float> out(count, 0.f);
    out[0] = static_cast<float>(static_cast<int>(status.code()));
    if (status.ok() && local_logits_.size() + 1 == count) {
      std::copy(local_logits_.begin(), local_logits_.end(), out.begin() + 1);
    } else if (status.ok()) {
      status = absl::InternalError(absl::StrCat("group: the home computed ", local_logits_.size(),
                                                " logits, expected ", count - 1));
      out[0] = static_cast<float>(static_cast<int>(status.code()));
    }
    local = b.Upload(wire, out.data());
    if (local.ok()) local = b.Synchronize();
  }
  if (!local.ok()) {
    comm_->Abort(local.message());
    return local;
  }
  RETURN_IF_ERROR(comm_->Broadcast(*buf, count * sizeof(float), home));
  if (rank != 0) return status;
  logits->resize(count);
  RETURN_IF_ERROR(b.Download(logits->data(), wire));
  const auto c = static_cast<absl::StatusCode>(static_cast<int>((*logits)[0]));
  if (c != absl::StatusCode::kOk) {
    // The leader's own outcome (e.g. the ranks' agreed RESOURCE_EXHAUSTED) says more.
    if (!status.ok()) return status;
    return absl::Status(c, absl::StrCat("group: the step failed on its home rank ", home, " (",
                                        absl::StatusCodeToString(c), ")"));
  }
  logits->erase(logits->begin());
  return absl::OkStatus();
}

absl::Status ServeRank(RankExecutor& rank) {
  std::vector<int32_t> tokens;
  std::vector<float> unused;
  while (true) {
    GroupCommand cmd;
    RETURN_IF_ERROR(rank.Exchange(&cmd, &tokens));
    if (cmd.op == GroupCommand::kShutdown) return absl::OkStatus();
    absl::Status s = rank.Execute(cmd, tokens, nullptr);
    // A step's failure is the leader's to report; a broken group ends the rank.
    if (!s.ok() && !rank.comm().health().ok()) return rank.comm().health();
  }
}

DistStepModel::DistStepModel(RankExecutor* rank, absl::Duration idle_interval)
    : rank_(rank),
      idle_interval_(idle_interval),
      table_(rank->comm().world_size()),
      last_command_(absl::Now()) {
  const KvCache& kv = rank->model().kv_cache();
  KvGeometry g = kv.geometry();
  g.n_blocks *= rank->comm().world_size();
  ledger_ = KvCache::CreateLedger(g, kv.BytesPerBlock() / kv.geometry().ElementsPerBlock());
}

DistStepModel::~DistStepModel() {
  if (!health().ok()) return;
  GroupCommand cmd;
  cmd.op = GroupCommand::kShutdown;
  Run(cmd, {}, nullptr).IgnoreError();
}

int DistStepModel::vocab_size() const { return rank_->model().config().vocab_size; }
int DistStepModel::head_dim() const { return rank_->model().config().head_dim; }

absl::Status DistStepModel::Run(GroupCommand cmd, std::span<const int32_t> tokens,
                                std::vector<float>* logits) {
  last_command_ = absl::Now();
  std::vector<int32_t> t(tokens.begin(), tokens.end());
  RETURN_IF_ERROR(rank_->Exchange(&cmd, &t));
  return rank_->Execute(cmd, t, logits);
}

absl::StatusOr<std::unique_ptr<InfiniWindow>> DistStepModel::CreateWindow(
    const InfiniConfig& config, const cpu::DcaParams& dca) {
  (void)config;
  (void)dca;
  return absl::UnimplementedError(
      absl::StrCat("Infini windows (SLIDE and COMPRESS sessions) are not available on a group of ",
                   rank_->comm().world_size(), " ranks; use the REJECT overflow policy"));
}

absl::Status DistStepModel::Forward(std::span<const StepItem> items, std::vector<float>* logits) {
  logits->clear();
  for (const StepItem& item : items) {
    if (item.seq == nullptr || item.external != nullptr || item.infini != nullptr ||
        item.tokens.empty()) {
      return absl::InvalidArgumentError(
          "group forward: every item needs tokens and a sequence of the group's ledger");
    }
  }
  size_t done = 0;
  absl::Status status;
  for (; done < items.size() && status.ok(); ++done) {
    status = StepItemOnGroup(items[done], logits);
  }
  if (status.ok()) return status;
  // On error no sequence has grown: undo the items that went through.
  for (size_t i = 0; i + 1 < done; ++i) {
    const StepItem& item = items[i];
    TruncateSequence(*item.seq, item.seq->length() - static_cast<int>(item.tokens.size()));
  }
  return status;
}

absl::Status DistStepModel::StepItemOnGroup(const StepItem& item, std::vector<float>* logits) {
  if (item.logits == LogitsMode::kGreedy) {
    return absl::UnimplementedError("group: greedy items are not supported (greedy_tokens())");
  }
  KvSequence& seq = *item.seq;
  auto it = placed_.find(&seq);
  if (it == placed_.end()) {
    ASSIGN_OR_RETURN(ChunkPlacement p, table_.Place(PlacementSpan(item.dca)));
    it = placed_.emplace(&seq, Placed{next_id_++, p}).first;
  }
  const Placed& placed = it->second;
  const int from = seq.length();
  const int n = static_cast<int>(item.tokens.size());
  GroupCommand cmd;
  cmd.op = GroupCommand::kStep;
  cmd.session = placed.id;
  cmd.home = placed.placement.home();
  cmd.span = placed.placement.span();
  cmd.n_tokens = n;
  cmd.logits = static_cast<int64_t>(item.logits);
  cmd.chunk_len = item.dca.chunk_len;
  cmd.chunk_size = item.dca.chunk_size;
  cmd.softmax_scale_bits = std::bit_cast<uint32_t>(item.dca.softmax_scale);
  cmd.sink_tokens = item.dca.sink_tokens;
  cmd.window_start = item.dca.window_start;
  absl::Status s = Run(cmd, item.tokens, &item_logits_);
  if (!s.ok()) {
    // A home that failed after attending may have grown the ranks' shares.
    TruncateOnRanks(placed.id, from);
    return s;
  }
  std::vector<int32_t> slots;
  if (absl::Status grown = ledger_->Append(seq, n, &slots); !grown.ok()) {
    // The ranks found room the ledger does not have: keep both in agreement.
    TruncateOnRanks(placed.id, from);
    return grown;
  }
  table_.Resize(placed.placement, from, seq.length());
  logits->insert(logits->end(), item_logits_.begin(), item_logits_.end());
  return absl::OkStatus();
}

void DistStepModel::TruncateSequence(KvSequence& seq, int length) {
  const int from = seq.length();
  ledger_->Truncate(seq, length);
  auto it = placed_.find(&seq);
  if (it == placed_.end()) return;
  table_.Resize(it->second.placement, from, seq.length());
  TruncateOnRanks(it->second.id, seq.length());
}

void DistStepModel::TruncateOnRanks(int64_t session, int length) {
  if (!health().ok()) return;
  GroupCommand cmd;
  cmd.op = GroupCommand::kTruncate;
  cmd.session = session;
  cmd.length = length;
  Run(cmd, {}, nullptr).IgnoreError();  // a failure breaks the group: health() says so
}

void DistStepModel::ReleaseSequence(KvSequence& seq) {
  const int from = seq.length();
  ledger_->Release(seq);
  auto it = placed_.find(&seq);
  if (it == placed_.end()) return;
  table_.Remove(it->second.placement, from);
  GroupCommand cmd;
  cmd.op = GroupCommand::kRelease;
  cmd.session = it->second.id;
  placed_.erase(it);
  if (health().ok()) Run(cmd, {}, nullptr).IgnoreError();
}

void DistStepModel::Idle() {
  if (!health().ok() || absl::Now() - last_command_ < idle_interval_) return;
  Run(GroupCommand(), {}, nullptr).IgnoreError();
}

void DistStepModel::PublishLoad(EngineStats& stats) const {
  const int world = std::min(table_.world_size(), EngineStats::kMaxRanks);
  stats.group_ranks.store(world);
  for (int r = 0; r < world; ++r) {
    stats.rank_sessions[static_cast<size_t>(r)].store(table_.load(r).sessions);
    stats.rank_kv_tokens[static_cast<size_t>(r)].store(table_.load(r).tokens);
  }
}

std::vector<RankLoad> DistStepModel::Loads() const {
  std::vector<RankLoad> loads;
  for (int r = 0; r < table_.world_size(); ++r) loads.push_back(table_.load(r));
  return loads;
}

}  // namespace longctx
