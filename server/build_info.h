// What longctxd reports about its own build (GetServerInfo, the build_info
// metric, the startup log line).
#pragma once

#include <string>

namespace longctx::server {

struct BuildInfo {
  std::string version;
  std::string git_commit;
  std::string build_type;
};

}  // namespace longctx::server
