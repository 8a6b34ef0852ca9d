#include "server/logging.h"

#include <atomic>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "spdlog/sinks/stdout_sinks.h"

namespace longctx::server {
namespace {

std::atomic<bool> g_json{false};

void AppendJsonString(std::string* out, const std::string& s) {
  out->push_back('"');
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        *out += "\\\"";
        break;
      case '\\':
        *out += "\\\\";
        break;
      case '\n':
        *out += "\\n";
        break;
      case '\r':
        *out += "\\r";
        break;
      case '\t':
        *out += "\\t";
        break;
      default:
        if (c < 0x20) {
          absl::StrAppendFormat(out, "\\u%04x", c);
        } else {
          out->push_back(static_cast<char>(c));
        }
    }
  }
  out->push_back('"');
}

bool NeedsQuotes(const std::string& v) {
  if (v.empty()) return true;
  for (char c : v) {
    if (c == ' ' || c == '"' || c == '=' || static_cast<unsigned char>(c) < 0x20) return true;
  }
  return false;
}

}  // namespace

absl::Status InitLogging(const std::string& format, const std::string& level) {
  if (format != "text" && format != "json") {
    return absl::InvalidArgumentError("log_format must be text or json");
  }
  auto logger = spdlog::stderr_logger_mt("longctxd");
  spdlog::set_default_logger(logger);
  g_json = format == "json";
  if (g_json) {
    // The JSON object is built by Log(); the pattern only adds time and level.
    spdlog::set_pattern(R"({"ts":"%Y-%m-%dT%H:%M:%S.%fZ","level":"%l",%v})",
                        spdlog::pattern_time_type::utc);
  } else {
    spdlog::set_pattern("%Y-%m-%d %H:%M:%S.%e %^%L%$ %v");
  }
  spdlog::set_level(spdlog::level::from_str(level));
  return absl::OkStatus();
}

void Log(spdlog::level::level_enum level, const std::string& message, const LogFields& fields) {
  if (!spdlog::should_log(level)) return;
  std::string line;
  if (g_json) {
    line = "\"msg\":";
    AppendJsonString(&line, message);
    for (const auto& [k, v] : fields) {
      line.push_back(',');
      AppendJsonString(&line, k);
      line.push_back(':');
      AppendJsonString(&line, v);
    }
  } else {
    line = message;
    for (const auto& [k, v] : fields) {
      absl::StrAppend(&line, " ", k, "=");
      if (NeedsQuotes(v)) {
        AppendJsonString(&line, v);
      } else {
        line += v;
      }
    }
  }
  spdlog::log(level, "{}", line);
}

}  // namespace longctx::server
