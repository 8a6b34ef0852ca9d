// Engine::Export and Engine::Import: a session as a self-describing byte
// string (engine/session/session_codec.h) and back.
#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "engine/engine.h"
#include "engine/session/session_codec.h"
#include "engine/util/status_macros.h"

namespace longctx {
namespace {

ModelFingerprint FingerprintOf(const ModelConfig& config, const Tokenizer& tok) {
  ModelFingerprint f;
  f.name = config.name;
  f.vocab_size = tok.vocab_size();
  f.n_layers = config.n_layers;
  f.d_model = config.d_model;
  uint64_t h = Fnv1a64("");
  for (int32_t id = 0; id < tok.vocab_size(); ++id) {
    h = Fnv1a64(tok.TokenPiece(id), h);
    h = Fnv1a64(absl::string_view("\0", 1), h);
  }
  f.vocab_hash = h;
  return f;
}

SessionSnapshot Snapshot(const Session& session, const SessionEngineState& state) {
  SessionSnapshot snap;
  snap.settings = session.settings();
  const SessionInfo info = session.Info();
  // next_seq also counts segments claimed and queued behind this read; the
  // applied ones are as many as the segments (seqs run from 1 without gaps).
  snap.applied_seq = std::min(info.next_seq - 1, info.segments);
  snap.segments = info.segments;
  snap.ingested_tokens = info.ingested_tokens;
  snap.user_turn_start = session.user_turn_start();
  snap.tokens = state.log;
  if (state.resume) {
    // Rebuilt after a rollback, not yet re-prefilled: its restore point.
    snap.evicted_end = state.resume->evicted_end;
    if (state.resume->memory) snap.memory = state.resume->memory->Serialize();
  } else if (state.window) {
    snap.evicted_end = state.window->evicted_end();
    if (const InfiniMemory* m = state.window->memory()) snap.memory = m->Serialize();
  }
  return snap;
}

// The Infini window's restore point of an imported session with `settings`
// (nullopt for a REJECT session); the engine checks it against the model.
absl::StatusOr<std::optional<SessionEngineState::Resume>> ResumePoint(
    const SessionSnapshot& snap, const SessionSettings& settings) {
  if (!settings.windowed()) {
    if (snap.evicted_end != 0 || !snap.memory.empty()) {
      return absl::InvalidArgumentError("session data: an Infini window state in a REJECT session");
    }
    return std::nullopt;
  }
  // Evictions move in whole chunks past the sinks (InfiniWindow::Resume).
  const int64_t sinks = settings.sink_tokens;
  const int64_t chunk = settings.attention.mode == DcaMode::kDca ? settings.attention.chunk_len() : 0;
  const int64_t end = snap.evicted_end == 0 ? sinks : snap.evicted_end;
  if (end < sinks || end > std::numeric_limits<int>::max() ||
      (end != sinks && (chunk <= 0 || end % chunk != 0))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "session data: evicted end ", snap.evicted_end, " is not a chunk boundary past the ",
        sinks, " sink tokens"));
  }
  SessionEngineState::Resume resume;
  resume.evicted_end = static_cast<int>(end);
  const bool compress = settings.overflow == OverflowPolicy::kCompress;
  if (compress != !snap.memory.empty()) {
    return absl::InvalidArgumentError(
        compress ? "session data: a COMPRESS session without its Infini memory"
                 : "session data: an Infini memory in a session that keeps none");
  }
  if (compress) {
    auto memory = InfiniMemory::Deserialize(snap.memory);
    if (!memory.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("session data: Infini memory: ", memory.status().message()));
    }
    resume.memory = *std::move(memory);
  }
  return resume;
}

// Encodes a copy of a session's state off the engine thread, unless the
// caller gave up meanwhile.
void EncodeOffThread(SessionSnapshot snap, const std::string& key, HostMemoryCharge& charge,
                     const std::shared_ptr<WorkHandle>& handle, absl::Time deadline,
                     const std::function<void(absl::StatusOr<std::string>)>& done) {
  if (handle->cancelled()) return done(absl::CancelledError("cancelled by the client"));
  if (absl::Now() > deadline) return done(absl::DeadlineExceededError("export deadline exceeded"));
  std::string bytes = EncodeSessionSnapshot(snap, key);
  snap = SessionSnapshot();
  charge.Reset();
  done(std::move(bytes));
}

}  // namespace

ModelFingerprint Engine::Fingerprint() const { return FingerprintOf(info_.model, tokenizer_); }

std::shared_ptr<WorkHandle> Engine::Export(const std::string& tenant, const std::string& id,
                                           absl::Time deadline,
                                           std::function<void(absl::StatusOr<std::string>)> done) {
  auto found = Lookup(tenant, id);
  if (!found.ok()) {
    done(found.status());
    return nullptr;
  }
  std::shared_ptr<Session> session = *found;
  const absl::Time start = absl::Now();
  auto handle = std::make_shared<WorkHandle>();
  session->BeginUse();
  ReadJob job;
  job.session = session;
  job.deadline = deadline;
  job.handle = handle;
  job.fn = [this, session, start, handle, deadline, done = std::move(done)](
               absl::Status st, const SessionEngineState* state) {
    session->EndUse(manager_.Now());
    if (!st.ok()) return done(st);
    SessionSnapshot snap = Snapshot(*session, *state);
    // The copy and the bytes encoded from it: twice the log and the memory.
    // (shared: std::function needs a copyable task)
    auto charge = std::make_shared<HostMemoryCharge>(&stats_.host_memory, HostMemoryKind::kExport);
    const int64_t bytes =
        static_cast<int64_t>(snap.tokens.size() * sizeof(int32_t) + snap.memory.size());
    if (absl::Status s = charge->TryGrow(2 * bytes, "exporting the session"); !s.ok()) {
      return done(s);
    }
    scheduler_->PostBackground([this, snap = std::move(snap), charge, handle, deadline, start,
                                done]() mutable {
      // Here, off the engine thread: the fingerprint hashes the whole vocabulary.
      snap.model = Fingerprint();
      EncodeOffThread(std::move(snap), options_.session_export_key, *charge, handle, deadline,
                      [&](absl::StatusOr<std::string> bytes) {
                        if (bytes.ok()) {
                          stats_.export_seconds.Observe(absl::ToDoubleSeconds(absl::Now() - start));
                        }
                        done(std::move(bytes));
                      });
    });
  };
  scheduler_->SubmitRead(std::move(job));
  return handle;
}

// The decoded blob checked against this server: its model, its settings
// under this server's limits, its token ids.
absl::StatusOr<SessionSettings> Engine::CheckImport(
    const SessionSnapshot& snap, const std::map<std::string, std::string>& labels) const {
  if (!(snap.model == Fingerprint())) {
    return absl::FailedPreconditionError(
        absl::StrCat("the session was exported from model '", snap.model.name,
                     "', which is not the model this server serves ('", info_.model.name, "')"));
  }
  SessionSettings settings = snap.settings;
  if (!labels.empty()) settings.labels = labels;
  // The exported settings must be valid here too (limits may differ).
  ASSIGN_OR_RETURN(SessionSettings resolved,
                   ResolveSession(SessionRequest::FromSettings(settings, options_.max_ttl),
                                  session_context()));
  if (static_cast<int64_t>(snap.tokens.size()) > resolved.max_tokens) {
    return absl::ResourceExhaustedError(absl::StrCat("the session holds ", snap.tokens.size(),
                                                     " tokens, over this server's ",
                                                     "limit of ", resolved.max_tokens));
  }
  for (int32_t t : snap.tokens) {
    if (t < 0 || t >= tokenizer_.vocab_size()) {
      return absl::InvalidArgumentError("session data holds a token outside the vocabulary");
    }
  }
  return resolved;
}

std::shared_ptr<WorkHandle> Engine::Import(const std::string& tenant, ImportInput input,
                                           std::function<void(absl::StatusOr<SessionInfo>)> done) {
  const absl::Time start = absl::Now();
  auto snap = DecodeSessionSnapshot(input.data, options_.session_export_key);
  if (!snap.ok()) {
    done(snap.status());
    return nullptr;
  }
  input.data.clear();
  input.data.shrink_to_fit();
  auto handle = std::make_shared<WorkHandle>();
  RestoreSnapshot(
      tenant, input.id, *std::move(snap), input.labels, /*recovered=*/false, handle,
      [this, start, tenant, handle, done = std::move(done)](absl::StatusOr<SessionInfo> info) {
        // A cancel that came too late to stop the prefill: undo the import.
        if (info.ok() && handle->cancelled()) {
          if (auto gone = manager_.Delete(tenant, info->id); gone.ok()) {
            scheduler_->Release(*std::move(gone));
            ForgetStored(info->id, /*wait=*/false).IgnoreError();
          }
          info = absl::CancelledError("cancelled by the client");
        }
        if (info.ok()) stats_.import_seconds.Observe(absl::ToDoubleSeconds(absl::Now() - start));
        done(std::move(info));
      });
  return handle;
}

void Engine::RestoreSnapshot(const std::string& tenant, const std::string& id,
                             SessionSnapshot snap, const std::map<std::string, std::string>& labels,
                             bool recovered, std::shared_ptr<WorkHandle> handle,
                             std::function<void(absl::StatusOr<SessionInfo>)> done) {
  auto resolved = CheckImport(snap, labels);
  if (!resolved.ok()) return done(resolved.status());
  // A recovered session without a restore point replays its whole log.
  auto resume = recovered && snap.evicted_end == 0 && snap.memory.empty()
                    ? absl::StatusOr<std::optional<SessionEngineState::Resume>>(std::nullopt)
                    : ResumePoint(snap, *resolved);
  if (!resume.ok()) return done(resume.status());
  const SessionSnapshot& restore = snap;
  auto prepare = [&restore, &resume](Session& s) {
    s.RestoreIngestState(restore.applied_seq, restore.segments, restore.ingested_tokens);
    s.set_user_turn_start(restore.user_turn_start);
    // No job has reached the engine for this new session yet: queuing the
    // first one publishes this to the engine thread.
    if (*resume) s.engine_state().resume = std::move(*resume);
  };
  StartOptions options;
  options.recovered = recovered;
  options.handle = std::move(handle);
  if (store_) {
    // The session's durable base: what it starts from here.
    snap.settings = *resolved;
    options.base = EncodeSessionSnapshot(snap);
  }
  StartSession(tenant, id, *resolved, std::move(snap.tokens), prepare, std::move(options),
               std::move(done));
}

}  // namespace longctx
