// longctx-loadgen --mode=soak: N sessions doing mixed ingest / generate /
// score work for a fixed time, each session deleted and created again after
// a fixed number of operations (so the server's state stays bounded), while
// the server's resident memory is sampled from /proc/PID/status. Reports the
// operations by outcome (RESOURCE_EXHAUSTED, the intended answer under
// overload, apart from the errors) and the RSS over time.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "clients/client.h"

namespace longctx::client {

struct SoakOptions {
  int sessions = 64;
  absl::Duration duration = absl::Minutes(10);
  int64_t segment_bytes = 2000;    // one ingest operation
  int max_tokens = 8;              // one generate operation
  int64_t score_bytes = 200;       // one score operation
  int ops_per_session = 30;        // then the session is deleted and created again
  int server_pid = 0;              // sample this process's RSS; 0: none
  absl::Duration sample_every = absl::Seconds(10);
  double warmup_fraction = 0.2;  // RSS samples before this part of the run are warm-up
};

// Runs the soak against `options.address`; prints the tables. Returns the
// exit status: 1 if any call failed with anything but RESOURCE_EXHAUSTED.
int RunSoak(const SoakOptions& soak, const ClientOptions& options, const std::string& doc);

// The value below which a fraction q of `v` lies (linear interpolation).
double Percentile(std::vector<double> v, double q);

// The resident set size of process `pid` in bytes (VmRSS), or -1.
int64_t ReadRssBytes(int pid);

}  // namespace longctx::client
