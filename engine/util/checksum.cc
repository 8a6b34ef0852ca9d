#include "engine/util/checksum.h"

#include <xxhash.h>

namespace longctx {

uint64_t Checksum64(absl::string_view bytes) { return XXH3_64bits(bytes.data(), bytes.size()); }

uint64_t Fnv1a64(absl::string_view bytes, uint64_t seed) {
  uint64_t h = seed;
  for (unsigned char c : bytes) h = (h ^ c) * 1099511628211ull;
  return h;
}

}  // namespace longctx
