// The batch planner: which work one engine step runs. It sees a snapshot of
// the head job of every busy session and the step's budgets, and returns the
// step's pieces; it touches no model, backend, KV cache or thread, so the
// policy can be tested on plain values. The scheduler turns the snapshot's
// jobs into StepItems and runs the plan.
//
// Policy (continuous batching):
//   - Decode: one token of every decoding Generate, oldest first. Past
//     max_decode_batch, a window of that many rows moves round-robin from step
//     to step (the cursor goes in and out with the plan), and the rows are
//     dealt round-robin over tenants.
//   - Prefill: the budget is first shared among tenants (max-min fair: each
//     tenant gets its demand or an equal share of what is left, whichever is
//     smaller); within that share, Generate prompts first (oldest first), then
//     Score and Ingest, shortest remaining first (ties: oldest), where a job's
//     remaining count is lowered by one for each job that arrived after it
//     (aging: a job with R tokens left is passed by newer Score and Ingest
//     jobs for at most R later arrivals). Score rows (max_logit_rows) are
//     shared among tenants the same way. A step with a Generate under way (a decode row, or a prompt first
//     in line) takes min(prefill_budget, prefill_budget_decoding) so that its
//     tokens come quickly. Score pieces also share max_logit_rows (one logits
//     row per token).
//   - KV: each piece takes as many of its tokens as the free blocks hold (a
//     shorter piece when not all fit); a job none of whose tokens fit is
//     refused.
//   - Windowed sessions (compress, slide): a piece stops at the next chunk
//     boundary, and an imported session prefills its sinks alone before its
//     restore point applies.
//
// Fairness bound (tenants): let T be the number of tenants with head jobs in a
// step, B its prefill budget and R = max_logit_rows. While T <= B, every
// tenant's head jobs together get at least min(their demand, floor(B / T))
// prefill tokens in every step (and Score jobs min(demand, floor(R / T)) rows
// while T <= R), however many sessions and jobs other tenants have queued; so
// a tenant's first prefill piece runs in the very next step. While
// T <= max_decode_batch, every tenant with decoding Generates gets at least
// floor(max_decode_batch / T) decode rows (all of its rows if fewer) in every
// step. Only KV blocks, which are handed out in the order above, can delay a
// tenant further (a job that gets none of them is refused, not delayed).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

namespace longctx {

enum class PlanWork { kIngest, kGenerate, kScore };

// A windowed session's step limits (mirrors InfiniWindow::StepCapacity and
// Resume; InfiniWindow::PrepareStep checks each piece again).
struct PlanWindow {
  int64_t chunk_len = 0;  // pieces never cross a multiple of it; 0: no boundary
  int64_t sink_tokens = 0;
  // An imported session's pending restore point: once its sequence holds
  // exactly the sinks, the sequence jumps to this length (the tokens between
  // are absent, in whole KV blocks). Until then pieces stop at the sinks.
  std::optional<int64_t> resume_to;
};

// The head job of one session, as the planner needs it.
struct PlanJob {
  PlanWork work = PlanWork::kIngest;
  uint64_t order = 0;       // arrival order, unique: lower is older
  uint64_t tenant = 0;      // the session's tenant (any id; equal ids: one tenant)
  bool decoding = false;    // a Generate past its prompt: one token per step
  int64_t length = 0;       // tokens in the session's KV sequence
  int64_t target = 0;       // the sequence length the job prefills up to
  int64_t held_blocks = 0;  // KV blocks of the sequence (held_blocks * block_size >= length)
  std::optional<PlanWindow> window;
  // The session could not be readied for the step (its restore point failed to
  // apply): refused where it is met, taking no budget.
  bool unready = false;
};

struct PlanLimits {
  int64_t prefill_budget = 512;
  int64_t prefill_budget_decoding = 512;
  int64_t max_decode_batch = 256;
  int64_t max_logit_rows = 128;
  int64_t block_size = 1;  // tokens per KV block, >= 1
  int64_t free_blocks = 0;
  size_t decode_cursor = 0;  // the previous plan's decode_cursor
};

// The logits a piece asks of the step.
enum class PieceLogits {
  kNone,
  kAll,     // a row per token (Score)
  kSample,  // the last token's, to sample from (decode rows, a prompt's last piece)
};

struct PlanPiece {
  size_t job = 0;     // index into the snapshot
  int64_t start = 0;  // sequence length before the piece (after a restore point applies)
  int64_t n = 0;      // tokens, >= 1
  PieceLogits logits = PieceLogits::kNone;
  bool decode = false;  // a decode row
};

enum class PlanRefusal {
  kKvFull,   // none of the `want` tokens fit the free KV blocks
  kEmpty,    // a windowed session's piece of `want` < 1 tokens
  kUnready,  // PlanJob::unready
};

struct PlanRefused {
  size_t job = 0;
  PlanRefusal why = PlanRefusal::kKvFull;
  int64_t want = 0;  // the tokens the piece would have taken
};

struct BatchPlan {
  std::vector<PlanPiece> pieces;     // decode rows first, then prefill pieces
  std::vector<PlanRefused> refused;  // in the order met
  // Windowed jobs whose restore point applies before the step (in the order
  // met), whether or not they then run.
  std::vector<size_t> resumes;
  size_t decode_cursor = 0;  // for the next step's PlanLimits
  int64_t tokens = 0;        // total tokens of the pieces
};

// Plans one step over `jobs`, the head job of each busy session. Jobs the plan
// neither runs nor refuses wait for a later step.
BatchPlan PlanBatch(std::span<const PlanJob> jobs, const PlanLimits& limits);

}  // namespace longctx
