// Engine::Export and Engine::Import: a session as a self-describing byte
// string (engine/session/session_codec.h) and back.
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
  snap.applied_seq = info.next_seq - 1;
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
  SessionEngineState::Resume resume;
  resume.evicted_end = static_cast<int>(snap.evicted_end);
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

}  // namespace

ModelFingerprint Engine::Fingerprint() const { return FingerprintOf(info_.model, tokenizer_); }

void Engine::Export(const std::string& tenant, const std::string& id,
                    std::function<void(absl::StatusOr<std::string>)> done) {
  auto found = Lookup(tenant, id);
  if (!found.ok()) return done(found.status());
  std::shared_ptr<Session> session = *found;
  const absl::Time start = absl::Now();
  session->BeginUse();
  ReadJob job;
  job.session = session;
  job.fn = [this, session, start, done = std::move(done)](absl::Status st,
                                                          const SessionEngineState* state) {
    session->EndUse(manager_.Now());
    if (!st.ok()) return done(st);
    SessionSnapshot snap = Snapshot(*session, *state);
    snap.model = Fingerprint();
    std::string bytes = EncodeSessionSnapshot(snap);
    stats_.export_seconds.Observe(absl::ToDoubleSeconds(absl::Now() - start));
    done(std::move(bytes));
  };
  scheduler_->SubmitRead(std::move(job));
}

void Engine::Import(const std::string& tenant, ImportInput input,
                    std::function<void(absl::StatusOr<SessionInfo>)> done) {
  const absl::Time start = absl::Now();
  auto snap = DecodeSessionSnapshot(input.data);
  if (!snap.ok()) return done(snap.status());
  RestoreSnapshot(tenant, input.id, *std::move(snap), input.labels, /*recovered=*/false,
                  [this, start, done = std::move(done)](absl::StatusOr<SessionInfo> info) {
                    if (info.ok()) {
                      stats_.import_seconds.Observe(absl::ToDoubleSeconds(absl::Now() - start));
                    }
                    done(std::move(info));
                  });
}

void Engine::RestoreSnapshot(const std::string& tenant, const std::string& id,
                             SessionSnapshot snapshot,
                             const std::map<std::string, std::string>& labels, bool recovered,
                             std::function<void(absl::StatusOr<SessionInfo>)> done) {
  auto snap = &snapshot;
  if (!(snap->model == Fingerprint())) {
    return done(absl::FailedPreconditionError(
        absl::StrCat("the session was exported from model '", snap->model.name,
                     "', which is not the model this server serves ('", info_.model.name, "')")));
  }
  SessionSettings settings = snap->settings;
  if (!labels.empty()) settings.labels = labels;
  // The exported settings must be valid here too (limits may differ).
  auto resolved =
      ResolveSession(SessionRequest::FromSettings(settings, options_.max_ttl), session_context());
  if (!resolved.ok()) return done(resolved.status());
  if (static_cast<int64_t>(snap->tokens.size()) > resolved->max_tokens) {
    return done(absl::ResourceExhaustedError(absl::StrCat("the session holds ", snap->tokens.size(),
                                                          " tokens, over this server's ",
                                                          "limit of ", resolved->max_tokens)));
  }
  // A recovered session without a restore point replays its whole log.
  auto resume = recovered && snap->evicted_end == 0 && snap->memory.empty()
                    ? absl::StatusOr<std::optional<SessionEngineState::Resume>>(std::nullopt)
                    : ResumePoint(*snap, *resolved);
  if (!resume.ok()) return done(resume.status());
  for (int32_t t : snap->tokens) {
    if (t < 0 || t >= tokenizer_.vocab_size()) {
      return done(absl::InvalidArgumentError("session data holds a token outside the vocabulary"));
    }
  }
  const SessionSnapshot& restore = *snap;
  auto prepare = [&restore, &resume](Session& s) {
    s.RestoreIngestState(restore.applied_seq, restore.segments, restore.ingested_tokens);
    s.set_user_turn_start(restore.user_turn_start);
    // No job has reached the engine for this new session yet: queuing the
    // first one publishes this to the engine thread.
    if (*resume) s.engine_state().resume = std::move(*resume);
  };
  StartOptions options;
  options.recovered = recovered;
  if (store_) {
    // The session's durable base: what it starts from here.
    snap->settings = *resolved;
    options.base = EncodeSessionSnapshot(*snap);
  }
  StartSession(tenant, id, std::move(*resolved), std::move(snap->tokens), prepare,
               std::move(options), std::move(done));
}

}  // namespace longctx
