#include "server/logging.h"

#include <atomic>

#include "absl/strings/str_cat.h"
#include "google/protobuf/stubs/logging.h"
#include "grpc/support/log.h"
#include "nlohmann/json.hpp"
#include "spdlog/sinks/stdout_sinks.h"

namespace longctx::server {
namespace {

std::atomic<bool> g_json{false};

// A JSON string literal of `s`; invalid UTF-8 becomes U+FFFD, so a line
// stays valid JSON whatever bytes a field carries.
std::string JsonString(const std::string& s) {
  return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// The members of the line's object after "ts" and "level" (which the spdlog
// pattern writes, with the braces): "msg", then the fields in order (a
// repeated key keeps its first place and takes the last value).
std::string JsonMembers(const std::string& message, const LogFields& fields) {
  nlohmann::ordered_json line;
  line["msg"] = message;
  for (const auto& [k, v] : fields) line[k] = v;
  const std::string object = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return object.substr(1, object.size() - 2);
}

bool NeedsQuotes(const std::string& v) {
  if (v.empty()) return true;
  for (char c : v) {
    if (c == ' ' || c == '"' || c == '=' || static_cast<unsigned char>(c) < 0x20) return true;
  }
  return false;
}

// libprotobuf's and gRPC's own messages (a request that failed to parse,
// transport trouble) in the configured format rather than raw on stderr.
void ProtobufLog(google::protobuf::LogLevel level, const char* file, int line,
                 const std::string& message) {
  using google::protobuf::LogLevel;
  const spdlog::level::level_enum l = level == LogLevel::LOGLEVEL_INFO      ? spdlog::level::debug
                                      : level == LogLevel::LOGLEVEL_WARNING ? spdlog::level::warn
                                                                            : spdlog::level::err;
  Log(l, "libprotobuf", {{"source", absl::StrCat(file, ":", line)}, {"detail", message}});
}

void GrpcLog(gpr_log_func_args* args) {
  const spdlog::level::level_enum l = args->severity == GPR_LOG_SEVERITY_ERROR ? spdlog::level::err
                                      : args->severity == GPR_LOG_SEVERITY_INFO
                                          ? spdlog::level::info
                                          : spdlog::level::debug;
  Log(l, "grpc",
      {{"source", absl::StrCat(args->file, ":", args->line)}, {"detail", args->message}});
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
  google::protobuf::SetLogHandler(&ProtobufLog);
  gpr_set_log_function(&GrpcLog);
  return absl::OkStatus();
}

void Log(spdlog::level::level_enum level, const std::string& message, const LogFields& fields) {
  if (!spdlog::should_log(level)) return;
  std::string line;
  if (g_json) {
    line = JsonMembers(message, fields);
  } else {
    line = message;
    for (const auto& [k, v] : fields) {
      absl::StrAppend(&line, " ", k, "=", NeedsQuotes(v) ? JsonString(v) : v);
    }
  }
  spdlog::log(level, "{}", line);
}

}  // namespace longctx::server
