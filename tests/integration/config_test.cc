// longctxd's configuration: defaults, precedence (file < environment < flags)
// and validation in one place, each error naming the setting.
#include "server/config.h"

#include <cstdlib>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace longctx::server {
namespace {

using ::testing::HasSubstr;

class ConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // The suite's own environment must not leak in.
    for (const char* v : {"LONGCTX_MODEL", "LONGCTX_CONFIG", "LONGCTX_PREFILL_BUDGET",
                          "LONGCTX_KV_CACHE_BYTES", "LONGCTX_LOG_FORMAT"}) {
      if (const char* old = std::getenv(v)) saved_.emplace_back(v, old);
      unsetenv(v);
    }
  }
  void TearDown() override {
    for (const char* v : {"LONGCTX_MODEL", "LONGCTX_CONFIG", "LONGCTX_PREFILL_BUDGET",
                          "LONGCTX_KV_CACHE_BYTES", "LONGCTX_LOG_FORMAT"}) {
      unsetenv(v);
    }
    for (const auto& [k, v] : saved_) setenv(k.c_str(), v.c_str(), 1);
  }
  absl::StatusOr<ServerConfig> Load(std::vector<std::string> args) {
    args.insert(args.begin(), "longctxd");
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    return LoadServerConfig(static_cast<int>(argv.size()), argv.data());
  }
  std::string WriteYaml(const std::string& text) {
    const std::string path = ::testing::TempDir() + "/longctxd_test.yaml";
    std::ofstream(path) << text;
    return path;
  }
  std::vector<std::pair<std::string, std::string>> saved_;
};

TEST_F(ConfigTest, DefaultsNeedOnlyAModel) {
  EXPECT_THAT(Load({}).status().message(), HasSubstr("model: required"));
  auto c = Load({"--model=/m.gguf"});
  ASSERT_TRUE(c.ok()) << c.status();
  // Nobody authenticates: loopback only.
  EXPECT_EQ(c->listen, "127.0.0.1:50051");
  EXPECT_EQ(c->metrics_listen, "127.0.0.1:9090");
  EXPECT_EQ(c->prefill_budget, 0);  // automatic: 512 on CPU, 8192 on GPU
  EXPECT_EQ(c->session_ttl, absl::Hours(1));
}

TEST_F(ConfigTest, FlagsBeatEnvironmentWhichBeatsTheFile) {
  const std::string yaml = WriteYaml(
      "model: /from/file.gguf\nprefill_budget: 128\nkv_cache_bytes: 1GiB\ndrain_grace: 10s\n");
  setenv("LONGCTX_PREFILL_BUDGET", "256", 1);
  setenv("LONGCTX_KV_CACHE_BYTES", "3GiB", 1);
  auto c = Load({"--config=" + yaml, "--kv-cache-bytes", "512MiB"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->model, "/from/file.gguf");
  EXPECT_EQ(c->drain_grace, absl::Seconds(10));      // file
  EXPECT_EQ(c->prefill_budget, 256);                 // environment over file
  EXPECT_EQ(c->kv_cache_bytes, int64_t{512} << 20);  // flag over environment
  setenv("LONGCTX_CONFIG", yaml.c_str(), 1);
  auto via_env = Load({});
  ASSERT_TRUE(via_env.ok()) << via_env.status();
  EXPECT_EQ(via_env->model, "/from/file.gguf");
}

TEST_F(ConfigTest, ErrorsNameTheSetting) {
  EXPECT_THAT(Load({"--model=m", "--no_such_flag=1"}).status().message(),
              HasSubstr("no_such_flag"));
  EXPECT_THAT(Load({"--model=m", "--drain_grace=soon"}).status().message(),
              HasSubstr("drain_grace"));
  EXPECT_THAT(Load({"--model=m", "--kv_cache_bytes=lots"}).status().message(),
              HasSubstr("kv_cache_bytes"));
  EXPECT_THAT(Load({"--model=m", "--prefill_budget=-1"}).status().message(),
              HasSubstr("prefill_budget"));
  EXPECT_THAT(Load({"--model=m", "--default_max_tokens=9000"}).status().message(),
              HasSubstr("default_max_tokens"));
  EXPECT_THAT(Load({"--model=m", "--tls_cert=/c.pem"}).status().message(), HasSubstr("tls_key"));
  EXPECT_THAT(Load({"--model=m", "--listen=nowhere"}).status().message(), HasSubstr("listen"));
  EXPECT_THAT(Load({"--model=m", "--log_format=xml"}).status().message(), HasSubstr("log_format"));
  EXPECT_THAT(Load({"--config=" + WriteYaml("model: m\nmystery: 1\n")}).status().message(),
              HasSubstr("mystery"));
  EXPECT_THAT(Load({"--config=" + WriteYaml("model: [a, b]\n")}).status().message(),
              HasSubstr("single value"));
  setenv("LONGCTX_LOG_FORMAT", "xml", 1);
  EXPECT_THAT(Load({"--model=m"}).status().message(), HasSubstr("log_format"));
}

TEST_F(ConfigTest, SecurityDefaultsRefuseOpenAccessAndPlaintextTokens) {
  // Beyond loopback without authentication: refused unless allowed.
  auto open = Load({"--model=m", "--listen=0.0.0.0:50051"});
  EXPECT_THAT(open.status().message(), HasSubstr("allow_unauthenticated_remote"));
  auto allowed =
      Load({"--model=m", "--listen=0.0.0.0:50051", "--allow_unauthenticated_remote=true"});
  ASSERT_TRUE(allowed.ok()) << allowed.status();
  EXPECT_EQ(allowed->metrics_listen, "0.0.0.0:9090");
  auto auto_open = Load({"--model=m", "--allow_unauthenticated_remote=true"});
  ASSERT_TRUE(auto_open.ok());
  EXPECT_EQ(auto_open->listen, "0.0.0.0:50051");
  // Bearer tokens in plaintext: refused unless allowed; with them "auto"
  // listens on every interface.
  EXPECT_THAT(Load({"--model=m", "--auth_tokens_file=/t"}).status().message(),
              HasSubstr("allow_insecure_tokens"));
  auto tokens = Load({"--model=m", "--auth_tokens_file=/t", "--allow_insecure_tokens=true"});
  ASSERT_TRUE(tokens.ok());
  EXPECT_EQ(tokens->listen, "0.0.0.0:50051");
  auto tls = Load({"--model=m", "--auth_tokens_file=/t", "--tls_cert=/c", "--tls_key=/k"});
  EXPECT_TRUE(tls.ok()) << tls.status();
  EXPECT_THAT(Load({"--model=m", "--tls_client_tenants_file=/f"}).status().message(),
              HasSubstr("tls_client_ca"));
  EXPECT_THAT(Load({"--model=m", "--stream_idle_timeout=1ms"}).status().message(),
              HasSubstr("stream_idle_timeout"));
  EXPECT_THAT(Load({"--model=m", "--max_streams_per_tenant=0"}).status().message(),
              HasSubstr("max_streams_per_tenant"));
  EXPECT_THAT(Load({"--model=m", "--reflection=maybe"}).status().message(),
              HasSubstr("reflection"));
  // Keepalive and connection limits have defaults.
  ServerConfig d;
  EXPECT_EQ(d.keepalive_time, absl::Minutes(1));
  EXPECT_EQ(d.keepalive_min_ping_interval, absl::Seconds(10));
  EXPECT_EQ(d.max_connection_age, absl::Hours(2));
  EXPECT_EQ(d.stream_idle_timeout, absl::Minutes(5));
}

TEST_F(ConfigTest, HelpListsEverySetting) {
  auto help = Load({"--help"});
  ASSERT_EQ(help.status().code(), absl::StatusCode::kCancelled);
  for (const char* name :
       {"--model", "--kv_cache_bytes", "--max_concurrent_streams", "--drain_grace",
        "--auth_tokens_file", "--tls_client_ca", "--metrics_listen", "--max_streams_per_tenant",
        "--max_inflight_per_tenant", "--stream_idle_timeout", "--keepalive_time",
        "--max_connection_age", "--allow_insecure_tokens", "--allow_unauthenticated_remote",
        "--tls_client_tenants_file", "--reflection"}) {
    EXPECT_THAT(help.status().message(), HasSubstr(name));
  }
}

TEST_F(ConfigTest, DescribeHidesNothingButSecretsAndParsesSizes) {
  auto c = Load({"--model=m", "--auth_tokens_file=/etc/tokens", "--allow_insecure_tokens=true"});
  ASSERT_TRUE(c.ok()) << c.status();
  const auto lines = c->Describe();
  EXPECT_THAT(lines, ::testing::Contains("auth_tokens_file=/etc/tokens"));
  EXPECT_THAT(lines, ::testing::Contains("max_session_tokens=131072"));
  EXPECT_EQ(*ParseByteSize("64KiB"), 64 << 10);
  EXPECT_EQ(*ParseByteSize(" 2GiB "), int64_t{2} << 30);
  EXPECT_EQ(*ParseByteSize("123"), 123);
  EXPECT_FALSE(ParseByteSize("-1").ok());
  EXPECT_FALSE(ParseByteSize("1PB").ok());
  EXPECT_FALSE(ParseByteSize("99999999999TiB").ok());
}

}  // namespace
}  // namespace longctx::server
