#include "engine/session/session_codec.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "openssl/crypto.h"
#include "openssl/evp.h"
#include "openssl/hmac.h"

namespace longctx {
namespace {

constexpr char kMagic[8] = {'L', 'C', 'T', 'X', 'S', 'E', 'S', 'S'};
// Version 2 added the Infini window's restore point and memory; version 3
// changed the checksum from FNV-1a to XXH3; version 4 is version 3 signed
// (an HMAC-SHA256 before the checksum).
constexpr uint32_t kVersion = 4;
constexpr uint32_t kUnsignedVersion = 3;
constexpr size_t kMacBytes = 32;
constexpr size_t kHeaderBytes = sizeof(kMagic) + sizeof(uint32_t);
// More tokens than any blob could hold (2^40 × 4 bytes): no size overflows.
constexpr uint64_t kMaxTokens = uint64_t{1} << 40;
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
  // Whether a read failed for want of bytes.
  bool truncated() const { return truncated_; }

 private:
  absl::Status Truncated(const char* what) {
    truncated_ = true;
    return absl::InvalidArgumentError(absl::StrCat("session data is truncated in ", what));
  }
  absl::string_view in_;
  size_t pos_ = 0;
  bool truncated_ = false;
};

#define CODEC_TRY(expr)                                \
  do {                                                 \
    if (absl::Status _s = (expr); !_s.ok()) return _s; \
  } while (0)

// The checksum a blob of `version` ends with.
uint64_t ChecksumOf(uint32_t version, absl::string_view body) {
  return version >= 3 ? Checksum64(body) : Fnv1a64(body);
}

// What follows the token log: the signature (version 4) and the checksum.
size_t TrailerBytes(uint32_t version) {
  return (version >= 4 ? kMacBytes : 0) + sizeof(uint64_t);
}

std::string Mac(absl::string_view key, absl::string_view body) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(body.data()), body.size(), out, &n);
  return std::string(reinterpret_cast<const char*>(out), n);
}

// With a key, only a version 4 blob whose signature verifies under it.
absl::Status CheckSignature(absl::string_view key, uint32_t version, absl::string_view body,
                            absl::string_view mac) {
  if (key.empty()) return absl::OkStatus();  // trusted input
  if (version < 4) {
    return absl::PermissionDeniedError(
        "session data is not signed; this server imports only sessions signed with its "
        "session_export_key");
  }
  const std::string want = Mac(key, body);
  if (want.size() != mac.size() || CRYPTO_memcmp(want.data(), mac.data(), mac.size()) != 0) {
    return absl::PermissionDeniedError(
        "session data signature does not verify under this server's session_export_key "
        "(altered, or exported by a server with another key)");
  }
  return absl::OkStatus();
}

// The counters must describe the log: each applied segment holds at least one
// ingested token and every ingested token is in the log.
absl::Status CheckCounters(const SessionSnapshot& s) {
  const int64_t n = static_cast<int64_t>(s.tokens.size());
  auto bad = [](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat("session data: inconsistent counters: ", what));
  };
  if (s.applied_seq < 0 || s.segments < 0 || s.ingested_tokens < 0 || s.user_turn_start < 0 ||
      s.evicted_end < 0) {
    return bad("a negative counter");
  }
  if (s.applied_seq > s.segments) {
    return bad(absl::StrCat("applied seq ", s.applied_seq, " is over the ", s.segments,
                            " segments applied"));
  }
  if (s.segments > s.ingested_tokens) {
    return bad(absl::StrCat(s.segments, " segments hold only ", s.ingested_tokens, " tokens"));
  }
  if (s.ingested_tokens > n) {
    return bad(absl::StrCat(s.ingested_tokens, " ingested tokens in a log of ", n));
  }
  if (s.user_turn_start > n) {
    return bad(absl::StrCat("user turn start ", s.user_turn_start, " past the log's ", n));
  }
  if (s.evicted_end > n) {
    return bad(absl::StrCat("evicted end ", s.evicted_end, " past the log's ", n));
  }
  return absl::OkStatus();
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

// Everything before the token log, through its count: the fingerprint, the
// settings, the counters and the Infini restore point (version 2 on).
absl::Status ReadHeader(Reader& r, uint32_t version, SessionSnapshot* s, uint64_t* n_tokens) {
  CODEC_TRY(ReadFingerprint(r, &s->model));
  CODEC_TRY(ReadSettings(r, &s->settings));
  CODEC_TRY(r.Get("counters", &s->applied_seq));
  CODEC_TRY(r.Get("counters", &s->segments));
  CODEC_TRY(r.Get("counters", &s->ingested_tokens));
  CODEC_TRY(r.Get("counters", &s->user_turn_start));
  if (version >= 2) {
    CODEC_TRY(r.Get("evicted end", &s->evicted_end));
    CODEC_TRY(r.GetString("infini memory", &s->memory, kMaxMemory));
  }
  CODEC_TRY(r.Get("token count", n_tokens));
  if (*n_tokens > kMaxTokens) {
    return absl::InvalidArgumentError(absl::StrCat("session data: token count ", *n_tokens));
  }
  return absl::OkStatus();
}

// The header, then the token log, which must fill the rest of the body
// exactly.
absl::Status ReadProgress(Reader& r, uint32_t version, SessionSnapshot* s) {
  uint64_t n_tokens = 0;
  CODEC_TRY(ReadHeader(r, version, s, &n_tokens));
  if (n_tokens != r.left() / sizeof(int32_t) || r.left() % sizeof(int32_t) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("session data: token count ", n_tokens,
                                                   " does not match the ", r.left(),
                                                   " bytes that follow"));
  }
  s->tokens.resize(n_tokens);
  for (auto& t : s->tokens) CODEC_TRY(r.Get("tokens", &t));
  return CheckCounters(*s);
}

// The magic and a version this code reads.
absl::StatusOr<uint32_t> ReadVersion(absl::string_view data) {
  if (data.size() < kHeaderBytes || std::memcmp(data.data(), kMagic, sizeof(kMagic)) != 0) {
    return absl::InvalidArgumentError("session data does not start with a longctx session header");
  }
  uint32_t version = 0;
  std::memcpy(&version, data.data() + sizeof(kMagic), sizeof(version));
  if (version < 1 || version > kVersion) {
    return absl::InvalidArgumentError(absl::StrCat(
        "session data version ", version, " is not supported (this server reads ", kVersion, ")"));
  }
  return version;
}

}  // namespace

std::string EncodeSessionSnapshot(const SessionSnapshot& s, absl::string_view key) {
  Writer w;
  w.out().append(kMagic, sizeof(kMagic));
  w.Put<uint32_t>(key.empty() ? kUnsignedVersion : kVersion);
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
  if (!key.empty()) w.out() += Mac(key, w.out());
  w.Put<uint64_t>(Checksum64(w.out()));
  return std::move(w.out());
}

absl::StatusOr<SessionSnapshot> DecodeSessionSnapshot(absl::string_view data,
                                                      absl::string_view key) {
  absl::StatusOr<uint32_t> version = ReadVersion(data);
  if (!version.ok()) return version.status();
  const size_t trailer = TrailerBytes(*version);
  if (data.size() < kHeaderBytes + trailer) {
    return absl::InvalidArgumentError("session data is truncated in its trailer");
  }
  const size_t summed = data.size() - sizeof(uint64_t);
  uint64_t want = 0;
  std::memcpy(&want, data.data() + summed, sizeof(want));
  if (ChecksumOf(*version, data.substr(0, summed)) != want) {
    return absl::InvalidArgumentError("session data is corrupt (checksum mismatch)");
  }
  const absl::string_view body = data.substr(0, data.size() - trailer);
  CODEC_TRY(CheckSignature(key, *version, body, data.substr(body.size(), trailer - 8)));
  Reader r(body.substr(kHeaderBytes));
  SessionSnapshot s;
  CODEC_TRY(ReadProgress(r, *version, &s));
  return s;
}

absl::StatusOr<std::optional<uint64_t>> SessionSnapshotSize(absl::string_view prefix) {
  if (prefix.size() < kHeaderBytes) return std::optional<uint64_t>();
  absl::StatusOr<uint32_t> version = ReadVersion(prefix);
  if (!version.ok()) return version.status();
  Reader r(prefix.substr(kHeaderBytes));
  SessionSnapshot s;
  uint64_t n_tokens = 0;
  if (absl::Status st = ReadHeader(r, *version, &s, &n_tokens); !st.ok()) {
    if (r.truncated()) return std::optional<uint64_t>();
    return st;
  }
  return std::optional<uint64_t>(kHeaderBytes + r.pos() + n_tokens * sizeof(int32_t) +
                                 TrailerBytes(*version));
}

}  // namespace longctx
