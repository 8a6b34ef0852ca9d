// Keys and values of the session store (engine/store/session_store.h): pure
// encoding, so that it can be tested without a database.
//
// Values (little-endian) end with an XXH3 checksum over the key and the value
// before it, so a value moved under another key is caught as well as flipped
// bits. Decoders never trust a length they have not checked.
//
// Thread safety: pure functions.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/store/session_store.h"

namespace longctx::store {

inline constexpr absl::string_view kMetaPrefix = "m/";
inline constexpr absl::string_view kLogPrefix = "l/";
inline constexpr absl::string_view kUsedPrefix = "u/";

std::string MetaKey(absl::string_view id);
std::string UsedKey(absl::string_view id);
// 8 bytes of microseconds since the epoch; InfinitePast when malformed.
std::string EncodeTime(absl::Time t);
absl::Time DecodeTime(absl::string_view value);
// The first key of `id`'s log and the first key past it.
std::string LogBegin(absl::string_view id);
std::string LogEnd(absl::string_view id);
std::string LogKey(absl::string_view id, int64_t rec);
// The session id of a log key; empty when `key` is not one.
std::string LogKeyId(absl::string_view key);

std::string EncodeMeta(absl::string_view key, const std::string& tenant, absl::Time create_time,
                       const std::string& base);
// Fills tenant, create_time and base. DATA_LOSS when damaged.
absl::Status DecodeMeta(absl::string_view key, absl::string_view value, StoredSession* out);

std::string EncodeRecord(absl::string_view key, const StoredRecord& record);
// DATA_LOSS when damaged; `record.rec` comes from the key.
absl::StatusOr<StoredRecord> DecodeRecord(absl::string_view key, absl::string_view value);

}  // namespace longctx::store
