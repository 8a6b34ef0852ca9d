#include "engine/session/session_codec.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace longctx {
namespace {

constexpr char kMagic[8] = {'L', 'C', 'T', 'X', 'S', 'E', 'S', 'S'};
// Version 2 added the Infini window's restore point and memory; version 3
// changed the checksum from FNV-1a to XXH3.
constexpr uint32_t kVersion = 3;
constexpr uint32_t kMaxString = 1 << 20;
// An Infini memory: n_layers × n_kv_heads × (D² + D) × 4 bytes.
constexpr uint32_t kMaxMemory = 1u << 30;
constexpr uint32_t kMaxLabels = 1024;

class Writer {
 public:
  template <typename T>
  void Put(T v) {
    char b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));
    out_.append(b, sizeof(T));
  }
  void PutString(const std::string& s) {
    Put<uint32_t>(static_cast<uint32_t>(s.size()));
    out_ += s;
  }
  std::string& out() { return out_; }

 private:
  std::string out_;
};

class Reader {
 public:
  explicit Reader(absl::string_view in) : in_(in) {}
  template <typename T>
  absl::Status Get(const char* what, T* v) {
    if (in_.size() - pos_ < sizeof(T)) return Truncated(what);
    std::memcpy(v, in_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return absl::OkStatus();
  }
  absl::Status GetString(const char* what, std::string* s, uint32_t max = kMaxString) {
    uint32_t n = 0;
    if (absl::Status st = Get(what, &n); !st.ok()) return st;
    if (n > max) {
      return absl::InvalidArgumentError(
          absl::StrCat("session data: ", what, " length ", n, " is over ", max));
    }
    if (in_.size() - pos_ < n) return Truncated(what);
    s->assign(in_.data() + pos_, n);
    pos_ += n;
    return absl::OkStatus();
  }
  size_t pos() const { return pos_; }
  size_t left() const { return in_.size() - pos_; }

 private:
  static absl::Status Truncated(const char* what) {
    return absl::InvalidArgumentError(absl::StrCat("session data is truncated in ", what));
  }
  absl::string_view in_;
  size_t pos_ = 0;
};

#define CODEC_TRY(expr)                                \
  do {                                                 \
    if (absl::Status _s = (expr); !_s.ok()) return _s; \
  } while (0)

// The checksum a blob of `version` ends with.
uint64_t ChecksumOf(uint32_t version, absl::string_view body) {
  return version >= 3 ? Checksum64(body) : Fnv1a64(body);
}

absl::Status ReadFingerprint(Reader& r, ModelFingerprint* m) {
  CODEC_TRY(r.GetString("model name", &m->name));
  CODEC_TRY(r.Get("model", &m->vocab_size));
  CODEC_TRY(r.Get("model", &m->n_layers));
  CODEC_TRY(r.Get("model", &m->d_model));
  CODEC_TRY(r.Get("model", &m->vocab_hash));
  return absl::OkStatus();
}

absl::Status ReadSettings(Reader& r, SessionSettings* st) {
  uint32_t n_labels = 0;
  CODEC_TRY(r.Get("labels", &n_labels));
  if (n_labels > kMaxLabels) {
    return absl::InvalidArgumentError(absl::StrCat("session data: ", n_labels, " labels"));
  }
  for (uint32_t i = 0; i < n_labels; ++i) {
    std::string k, v;
    CODEC_TRY(r.GetString("label", &k));
    CODEC_TRY(r.GetString("label", &v));
    st->labels[k] = v;
  }
  int64_t ttl_ms = 0;
  CODEC_TRY(r.Get("ttl", &ttl_ms));
  st->ttl = absl::Milliseconds(ttl_ms);
  uint8_t flag = 0;
  CODEC_TRY(r.Get("attention", &flag));
  st->attention.mode = flag != 0 ? DcaMode::kDca : DcaMode::kRope;
  CODEC_TRY(r.Get("attention", &st->attention.pretrain_len));
  CODEC_TRY(r.Get("attention", &st->attention.chunk_size));
  CODEC_TRY(r.Get("attention", &st->attention.local_window));
  CODEC_TRY(r.Get("attention", &flag));
  st->attention.length_temperature = flag != 0;
  CODEC_TRY(r.Get("attention", &flag));
  st->attention.compose_rope_scaling = flag != 0;
  CODEC_TRY(r.Get("prompt format", &flag));
  if (flag > static_cast<uint8_t>(PromptFormat::kRaw)) {
    return absl::InvalidArgumentError("session data: unknown prompt format");
  }
  st->prompt_format = static_cast<PromptFormat>(flag);
  CODEC_TRY(r.GetString("system prompt", &st->system_prompt));
  CODEC_TRY(r.Get("window", &st->window_tokens));
  CODEC_TRY(r.Get("sinks", &st->sink_tokens));
  CODEC_TRY(r.Get("overflow", &flag));
  if (flag > static_cast<uint8_t>(OverflowPolicy::kSlide)) {
    return absl::InvalidArgumentError("session data: unknown overflow policy");
  }
  st->overflow = static_cast<OverflowPolicy>(flag);
  return absl::OkStatus();
}

// The counters, the Infini restore point (version 2 on) and the token log,
// which must fill the rest of the body exactly.
absl::Status ReadProgress(Reader& r, uint32_t version, SessionSnapshot* s) {
  CODEC_TRY(r.Get("counters", &s->applied_seq));
  CODEC_TRY(r.Get("counters", &s->segments));
  CODEC_TRY(r.Get("counters", &s->ingested_tokens));
  CODEC_TRY(r.Get("counters", &s->user_turn_start));
  if (version >= 2) {
    CODEC_TRY(r.Get("evicted end", &s->evicted_end));
    CODEC_TRY(r.GetString("infini memory", &s->memory, kMaxMemory));
  }
  uint64_t n_tokens = 0;
  CODEC_TRY(r.Get("token count", &n_tokens));
  if (n_tokens != r.left() / sizeof(int32_t) || r.left() % sizeof(int32_t) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("session data: token count ", n_tokens,
                                                   " does not match the ", r.left(),
                                                   " bytes that follow"));
  }
  s->tokens.resize(n_tokens);
  for (auto& t : s->tokens) CODEC_TRY(r.Get("tokens", &t));
  if (s->applied_seq < 0 || s->segments < 0 || s->ingested_tokens < 0 || s->user_turn_start < 0 ||
      s->user_turn_start > static_cast<int64_t>(n_tokens) || s->evicted_end < 0 ||
      s->evicted_end > static_cast<int64_t>(n_tokens)) {
    return absl::InvalidArgumentError("session data: negative or inconsistent counters");
  }
  return absl::OkStatus();
}

}  // namespace

std::string EncodeSessionSnapshot(const SessionSnapshot& s) {
  Writer w;
  w.out().append(kMagic, sizeof(kMagic));
  w.Put<uint32_t>(kVersion);
  w.PutString(s.model.name);
  w.Put<int32_t>(s.model.vocab_size);
  w.Put<int32_t>(s.model.n_layers);
  w.Put<int32_t>(s.model.d_model);
  w.Put<uint64_t>(s.model.vocab_hash);

  const SessionSettings& st = s.settings;
  w.Put<uint32_t>(static_cast<uint32_t>(st.labels.size()));
  for (const auto& [k, v] : st.labels) {
    w.PutString(k);
    w.PutString(v);
  }
  w.Put<int64_t>(absl::ToInt64Milliseconds(st.ttl));
  w.Put<uint8_t>(st.attention.mode == DcaMode::kDca ? 1 : 0);
  w.Put<int32_t>(st.attention.pretrain_len);
  w.Put<int32_t>(st.attention.chunk_size);
  w.Put<int32_t>(st.attention.local_window);
  w.Put<uint8_t>(st.attention.length_temperature ? 1 : 0);
  w.Put<uint8_t>(st.attention.compose_rope_scaling ? 1 : 0);
  w.Put<uint8_t>(static_cast<uint8_t>(st.prompt_format));
  w.PutString(st.system_prompt);
  w.Put<int64_t>(st.window_tokens);
  w.Put<int32_t>(st.sink_tokens);
  w.Put<uint8_t>(static_cast<uint8_t>(st.overflow));

  w.Put<int64_t>(s.applied_seq);
  w.Put<int64_t>(s.segments);
  w.Put<int64_t>(s.ingested_tokens);
  w.Put<int64_t>(s.user_turn_start);
  w.Put<int64_t>(s.evicted_end);
  w.PutString(s.memory);
  w.Put<uint64_t>(s.tokens.size());
  for (int32_t t : s.tokens) w.Put<int32_t>(t);
  w.Put<uint64_t>(Checksum64(w.out()));
  return std::move(w.out());
}

absl::StatusOr<SessionSnapshot> DecodeSessionSnapshot(absl::string_view data) {
  if (data.size() < sizeof(kMagic) + sizeof(uint64_t) ||
      std::memcmp(data.data(), kMagic, sizeof(kMagic)) != 0) {
    return absl::InvalidArgumentError("session data does not start with a longctx session header");
  }
  const absl::string_view body = data.substr(0, data.size() - sizeof(uint64_t));
  Reader r(body.substr(sizeof(kMagic)));
  // The version picks the checksum, so it is read first.
  uint32_t version = 0;
  CODEC_TRY(r.Get("version", &version));
  if (version < 1 || version > kVersion) {
    return absl::InvalidArgumentError(absl::StrCat(
        "session data version ", version, " is not supported (this server reads ", kVersion, ")"));
  }
  uint64_t want = 0;
  std::memcpy(&want, data.data() + body.size(), sizeof(want));
  if (ChecksumOf(version, body) != want) {
    return absl::InvalidArgumentError("session data is corrupt (checksum mismatch)");
  }
  SessionSnapshot s;
  CODEC_TRY(ReadFingerprint(r, &s.model));
  CODEC_TRY(ReadSettings(r, &s.settings));
  CODEC_TRY(ReadProgress(r, version, &s));
  return s;
}

}  // namespace longctx
