// The byte format of an exported session (docs/design.md §5 Export/Import): what a
// replica needs to rebuild the session exactly, for the same model.
//
// Layout (little-endian): magic "LCTXSESS", u32 version, the model
// fingerprint, the settings, the ingest counters, the Infini window's restore
// point and memory (version 2), the token log, then (version 4, signed
// exports only) a 32-byte HMAC-SHA256 of everything before it under the
// server's session_export_key, and last a 64-bit checksum of everything
// before it: XXH3 from version 3, FNV-1a before (versions 1 and 2 are still
// read). Decoding is bounded by the input size and never trusts a count it
// has not checked: counters must be consistent with the log (applied seq <=
// segments <= ingested tokens <= log length; user turn and evicted end within
// the log).
//
// Integrity: the checksum catches corruption, not tampering. With a key,
// exports are signed and only blobs whose signature verifies under that key
// are decoded (PERMISSION_DENIED otherwise, unsigned blobs included). Without
// a key every version is read and a signature is not checked: blobs are then
// trusted input.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/session/session_settings.h"
#include "engine/util/checksum.h"  // Fnv1a64, the vocabulary hash

namespace longctx {

// Identifies the model a session's tokens belong to.
struct ModelFingerprint {
  std::string name;
  int32_t vocab_size = 0;
  int32_t n_layers = 0;
  int32_t d_model = 0;
  uint64_t vocab_hash = 0;  // FNV-1a over the vocabulary's pieces
  bool operator==(const ModelFingerprint&) const = default;
};

struct SessionSnapshot {
  ModelFingerprint model;
  SessionSettings settings;
  int64_t applied_seq = 0;
  int64_t segments = 0;
  int64_t ingested_tokens = 0;
  int64_t user_turn_start = 0;
  // Compress and slide sessions: tokens [sink_tokens, evicted_end) left the
  // window; `memory` is the compressive memory (InfiniMemory::Serialize),
  // empty under slide. Import restores both and re-prefills from evicted_end.
  int64_t evicted_end = 0;
  std::string memory;
  std::vector<int32_t> tokens;
};

// Version 3 without a key; version 4, signed, with one.
std::string EncodeSessionSnapshot(const SessionSnapshot& snapshot, absl::string_view key = {});
// INVALID_ARGUMENT naming what is wrong: bad magic, unknown version, a
// truncated or oversized field, a checksum mismatch, inconsistent counters;
// PERMISSION_DENIED when `key` is set and the blob is not signed with it.
absl::StatusOr<SessionSnapshot> DecodeSessionSnapshot(absl::string_view data,
                                                      absl::string_view key = {});

// The size of the whole blob that `prefix` begins, as its header declares it
// (everything before the token log, the count of tokens included, must be in
// `prefix`); nullopt while more bytes are needed. Lets a receiver refuse an
// oversized blob before the rest arrives. INVALID_ARGUMENT for a header that
// no valid blob has.
absl::StatusOr<std::optional<uint64_t>> SessionSnapshotSize(absl::string_view prefix);

}  // namespace longctx
