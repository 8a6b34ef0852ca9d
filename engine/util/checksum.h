// 64-bit hashes of byte strings: the checksum that exported formats end with,
// and FNV-1a, which formats written before it used.
//
// Thread safety: pure functions.
#pragma once

#include <cstdint>

#include "absl/strings/string_view.h"

namespace longctx {

// The checksum of persisted and exported bytes: XXH3-64 with seed 0 (xxHash),
// stable across hosts and versions of the library.
uint64_t Checksum64(absl::string_view bytes);

// 64-bit FNV-1a; pass a previous result as `seed` to hash in pieces. It is
// the checksum of session data before version 3 and of Infini memory before
// version 2 (both still read), and the vocabulary hash of a session's model
// fingerprint. The default seed is not FNV's offset basis (it lacks the last
// digit); the hashes stored in those formats were computed with it.
uint64_t Fnv1a64(absl::string_view bytes, uint64_t seed = 1469598103934665603ull);

}  // namespace longctx
