// libFuzzer target for the session codec and import: arbitrary bytes go
// through DecodeSessionSnapshot and, as an ImportSession's data, through
// Engine::Import on the tiny model (tests/fuzz/fuzz_engine.h), whose sessions
// are exported again and deleted. A decoded snapshot must re-encode to bytes
// that decode to the same encoding (the codec is its own inverse).
//
// The first byte picks how the rest is used: odd, the trailing 8 bytes are
// replaced by the XXH3 checksum of what precedes them, so that mutations
// reach the fields behind the integrity check instead of stopping at it.
//
// Seeds: with LONGCTX_FUZZ_WRITE_SEEDS=DIR the target writes real exported
// sessions (RAW, CHAT, SLIDE and COMPRESS, with and without tokens) into DIR
// and exits; scripts/fuzz.sh does that before each run, so the seeds follow
// the current format.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "engine/session/session_codec.h"
#include "engine/util/checksum.h"
#include "tests/fuzz/fuzz_engine.h"

namespace longctx::fuzz {
namespace {

constexpr char kTenant[] = "fuzz";

void CheckRoundTrip(absl::string_view data) {
  auto decoded = DecodeSessionSnapshot(data);
  if (!decoded.ok()) return;
  const std::string once = EncodeSessionSnapshot(*decoded);
  auto again = DecodeSessionSnapshot(once);
  if (!again.ok()) {
    std::fprintf(stderr, "re-encoded snapshot does not decode: %s\n",
                 again.status().ToString().c_str());
    std::abort();
  }
  if (EncodeSessionSnapshot(*again) != once) {
    std::fprintf(stderr, "snapshot encoding is not stable\n");
    std::abort();
  }
}

void ImportAndExport(Engine& engine, std::string data) {
  Result<absl::StatusOr<SessionInfo>> imported;
  engine.Import(kTenant, ImportInput{.id = "", .labels = {}, .data = std::move(data)},
                [&](absl::StatusOr<SessionInfo> info) { imported.Set(std::move(info)); });
  auto info = imported.Take();
  if (info.ok()) {
    Result<absl::StatusOr<std::string>> exported;
    engine.Export(kTenant, info->id, absl::InfiniteFuture(),
                  [&](absl::StatusOr<std::string> blob) { exported.Set(std::move(blob)); });
    auto blob = exported.Take();
    // What the server exports it must read back.
    if (!blob.ok() || !DecodeSessionSnapshot(*blob).ok()) {
      std::fprintf(stderr, "an imported session does not export: %s\n",
                   blob.ok() ? "decode failed" : blob.status().ToString().c_str());
      std::abort();
    }
  }
  DeleteAll(engine, kTenant);
}

// --------------------------------------------------------------- seeds

// A session made with `request`, fed `text`, exported.
std::string ExportedSession(Engine& engine, SessionRequest request, const std::string& text) {
  Result<absl::StatusOr<SessionInfo>> created;
  engine.CreateSession(kTenant, request,
                       [&](absl::StatusOr<SessionInfo> info) { created.Set(std::move(info)); });
  auto info = created.Take();
  if (!info.ok()) {
    std::fprintf(stderr, "session_fuzz: no seed: %s\n", info.status().ToString().c_str());
    return "";
  }
  if (!text.empty()) {
    auto session = engine.FindSession(kTenant, info->id);
    Result<absl::StatusOr<IngestAck>> ack;
    SegmentInput segment{.seq = 1, .text = text};
    engine.Ingest(*session, segment,
                  [&](absl::StatusOr<IngestAck> a) { ack.Set(std::move(a)); });
    (void)ack.Take();
  }
  Result<absl::StatusOr<std::string>> exported;
  engine.Export(kTenant, info->id, absl::InfiniteFuture(),
                [&](absl::StatusOr<std::string> blob) { exported.Set(std::move(blob)); });
  auto blob = exported.Take();
  (void)engine.DeleteSession(kTenant, info->id);
  return blob.ok() ? *blob : "";
}

void WriteSeeds(const std::string& dir) {
  Engine& engine = TinyEngine();
  std::filesystem::create_directories(dir);
  std::string text;
  for (int i = 0; i < 40; ++i) absl::StrAppend(&text, "the quick brown fox ", i, " ");
  std::vector<std::pair<std::string, SessionRequest>> kinds;
  kinds.emplace_back("raw", SessionRequest{.prompt_format = PromptFormat::kRaw});
  kinds.emplace_back("default", SessionRequest{.labels = {{"k", "v"}}});
  kinds.emplace_back("slide", SessionRequest{.window_tokens = 320,
                                             .sink_tokens = 16,
                                             .overflow = OverflowPolicy::kSlide,
                                             .prompt_format = PromptFormat::kRaw});
  kinds.emplace_back("compress", SessionRequest{.window_tokens = 320,
                                                .sink_tokens = 16,
                                                .overflow = OverflowPolicy::kCompress,
                                                .prompt_format = PromptFormat::kRaw});
  int written = 0;
  for (const auto& [name, request] : kinds) {
    for (const std::string& t : {std::string(), text}) {
      const std::string blob = ExportedSession(engine, request, t);
      if (blob.empty()) continue;
      std::ofstream(absl::StrCat(dir, "/", name, t.empty() ? "_empty" : "_text", ".bin"),
                    std::ios::binary)
          << '\0' << blob;  // the flag byte: the checksum as exported
      ++written;
    }
  }
  std::fprintf(stderr, "session_fuzz: wrote %d seeds to %s\n", written, dir.c_str());
  std::exit(written > 0 ? 0 : 1);
}

}  // namespace
}  // namespace longctx::fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = std::getenv("LONGCTX_FUZZ_WRITE_SEEDS")) longctx::fuzz::WriteSeeds(dir);
  (void)longctx::fuzz::TinyEngine();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::string bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  if ((data[0] & 1) != 0 && bytes.size() >= 8) {
    const uint64_t sum =
        longctx::Checksum64(absl::string_view(bytes).substr(0, bytes.size() - 8));
    for (int i = 0; i < 8; ++i) {
      bytes[bytes.size() - 8 + i] = static_cast<char>((sum >> (8 * i)) & 0xff);
    }
  }
  longctx::fuzz::CheckRoundTrip(bytes);
  longctx::fuzz::ImportAndExport(longctx::fuzz::TinyEngine(), std::move(bytes));
  return 0;
}
