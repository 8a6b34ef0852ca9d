// Log lines of longctxd through spdlog: human-readable text or one JSON object
// per line, each carrying the request and session ids it concerns.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "spdlog/spdlog.h"

namespace longctx::server {

// Sets up the default logger (stderr). REQUIRES: format "text" or "json".
absl::Status InitLogging(const std::string& format, const std::string& level);

// Key/value pairs attached to a log line ("request_id", "session_id", ...).
using LogFields = std::vector<std::pair<std::string, std::string>>;

// Logs `message` with `fields`: in text as `message key=value ...`, in JSON as
// extra members of the line's object.
void Log(spdlog::level::level_enum level, const std::string& message, const LogFields& fields = {});

}  // namespace longctx::server
