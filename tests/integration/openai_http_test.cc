// The OpenAI-compatible HTTP door of the real longctxd, over real HTTP
// (libcurl): each route whole and streamed, usage, the session_id extension,
// errors in OpenAI's shape with their HTTP codes, bearer tokens and tenants,
// and a client that leaves mid-stream cancelling its generation.
#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/integration/daemon.h"
#include "tests/integration/helpers.h"

namespace longctx::testing {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;

constexpr char kAlice[] = "alice-http-token-00001";
constexpr char kBob[] = "bob-http-token-0000002";
constexpr char kReader[] = "reader-http-token-0003";

struct HttpReply {
  long status = 0;
  std::string body;
  std::vector<json> events;  // the data: lines of an event stream, but [DONE]
  bool done = false;         // the stream ended with data: [DONE]
};

struct Transfer {
  std::string body;
  size_t abort_after = 0;  // > 0: drop the connection once this many bytes came
};

size_t OnData(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  t->body.append(data, size * n);
  if (t->abort_after > 0 && t->body.size() >= t->abort_after) return 0;
  return size * n;
}

// One request; `body` empty: GET. Event streams are split into their events.
HttpReply Http(int port, const std::string& path, const std::string& body,
               const std::string& token = kAlice, std::vector<std::string> headers = {},
               size_t abort_after = 0) {
  CURL* curl = curl_easy_init();
  const std::string url = absl::StrCat("http://127.0.0.1:", port, path);
  curl_slist* list = nullptr;
  if (!token.empty()) headers.push_back(absl::StrCat("Authorization: Bearer ", token));
  headers.push_back("Content-Type: application/json");
  for (const std::string& h : headers) list = curl_slist_append(list, h.c_str());
  Transfer t;
  t.abort_after = abort_after;
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, list);
  if (!body.empty()) curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body.c_str());
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, OnData);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &t);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT, 300L);
  curl_easy_perform(curl);
  HttpReply r;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &r.status);
  curl_slist_free_all(list);
  curl_easy_cleanup(curl);
  r.body = std::move(t.body);
  for (absl::string_view line : absl::StrSplit(r.body, '\n')) {
    if (!absl::ConsumePrefix(&line, "data: ")) continue;
    if (line == "[DONE]") {
      r.done = true;
    } else {
      r.events.push_back(json::parse(line));
    }
  }
  return r;
}

json Chat(const std::string& question, int max_tokens, bool stream = false) {
  return {{"messages", {{{"role", "user"}, {"content", question}}}},
          {"max_tokens", max_tokens},
          {"temperature", 0},
          {"stream", stream}};
}

// The text of a streamed answer; checks the chunks' shape on the way.
std::string StreamedText(const HttpReply& r, const char* object) {
  std::string text;
  for (size_t i = 0; i < r.events.size(); ++i) {
    const json& e = r.events[i];
    EXPECT_EQ(e["object"], object) << e.dump();
    if (e["choices"].empty()) continue;  // the usage chunk
    const json& c = e["choices"][0];
    if (c.contains("delta")) {
      if (i == 0) {
        EXPECT_EQ(c["delta"]["role"], "assistant");
      }
      text += c["delta"]["content"].get<std::string>();
    } else {
      text += c["text"].get<std::string>();
    }
  }
  return text;
}

void ExpectError(const HttpReply& r, long status, const std::string& code,
                 const std::string& message_part) {
  EXPECT_EQ(r.status, status) << r.body;
  json e = json::parse(r.body, nullptr, false);
  ASSERT_TRUE(e.contains("error")) << r.body;
  EXPECT_EQ(e["error"]["code"], code) << r.body;
  EXPECT_TRUE(e["error"]["type"].is_string()) << r.body;
  EXPECT_THAT(e["error"]["message"].get<std::string>(), HasSubstr(message_part));
}

class OpenAiHttpTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (ModelPath().empty()) return;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    char dir[] = "/tmp/longctx-http-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    const std::string tokens = std::string(dir) + "/tokens";
    std::ofstream(tokens) << kAlice << " alice\n"
                          << kBob << " bob\n"
                          << kReader << " alice readonly\n";
    port_ = FreePort();
    auto d =
        Daemon::Start({"--auth_tokens_file=" + tokens, "--allow_insecure_tokens=true",
                       absl::StrCat("--http_listen=127.0.0.1:", port_), "--max_generate_tokens=64",
                       "--default_max_tokens=32", "--kv_cache_bytes=128MiB"});
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = d->release();
    ASSERT_TRUE(daemon_->WaitServing(absl::Minutes(5)).ok()) << daemon_->LogTail();
  }
  static void TearDownTestSuite() {
    delete daemon_;
    daemon_ = nullptr;
  }
  void SetUp() override {
    if (ModelPath().empty()) GTEST_SKIP() << "LONGCTX_MODEL is not set";
    ASSERT_NE(daemon_, nullptr);
  }
  double Metric(const std::string& key) {
    auto m = ScrapeMetrics(daemon_->metrics_port());
    if (!m.ok() || !m->contains(key)) return 0;
    return m->at(key);
  }
  // Waits for the live-session gauge to reach `n` (a run's transient session
  // is deleted just after its answer is written).
  void ExpectSessions(double n) {
    const absl::Time end = absl::Now() + absl::Seconds(10);
    while (Metric("longctx_sessions_active") != n && absl::Now() < end) {
      absl::SleepFor(absl::Milliseconds(50));
    }
    EXPECT_EQ(Metric("longctx_sessions_active"), n);
  }

  static inline Daemon* daemon_ = nullptr;
  static inline int port_ = 0;
};

TEST_F(OpenAiHttpTest, ModelsListsTheServedModel) {
  HttpReply r = Http(port_, "/v1/models", "");
  ASSERT_EQ(r.status, 200) << r.body;
  json j = json::parse(r.body);
  EXPECT_EQ(j["object"], "list");
  ASSERT_EQ(j["data"].size(), 1u);
  EXPECT_EQ(j["data"][0]["object"], "model");
  EXPECT_FALSE(j["data"][0]["id"].get<std::string>().empty());
}

TEST_F(OpenAiHttpTest, ChatCompletionWholeAndStreamedAgree) {
  const std::string body = Chat("What is the capital of France?", 12).dump();
  HttpReply whole = Http(port_, "/v1/chat/completions", body);
  ASSERT_EQ(whole.status, 200) << whole.body;
  json j = json::parse(whole.body);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  const std::string text = j["choices"][0]["message"]["content"];
  EXPECT_FALSE(text.empty());
  const json& usage = j["usage"];
  EXPECT_GT(usage["prompt_tokens"].get<int>(), 5);
  EXPECT_GE(usage["completion_tokens"].get<int>(), 1);
  EXPECT_LE(usage["completion_tokens"].get<int>(), 12);
  EXPECT_EQ(usage["total_tokens"],
            usage["prompt_tokens"].get<int>() + usage["completion_tokens"].get<int>());

  json streamed = Chat("What is the capital of France?", 12, /*stream=*/true);
  streamed["stream_options"] = {{"include_usage", true}};
  HttpReply s = Http(port_, "/v1/chat/completions", streamed.dump());
  ASSERT_EQ(s.status, 200) << s.body;
  EXPECT_TRUE(s.done);
  ASSERT_GE(s.events.size(), 3u);
  EXPECT_EQ(StreamedText(s, "chat.completion.chunk"), text);  // greedy: the same answer
  const json& last = s.events.back();
  EXPECT_TRUE(last["choices"].empty());
  EXPECT_EQ(last["usage"], usage);
  EXPECT_EQ(s.events[s.events.size() - 2]["choices"][0]["finish_reason"],
            j["choices"][0]["finish_reason"]);
  ExpectSessions(0);  // transient sessions are gone
}

TEST_F(OpenAiHttpTest, CompletionsWholeAndStreamed) {
  json body = {{"prompt", "Once upon a time"}, {"max_tokens", 8}, {"temperature", 0}};
  HttpReply whole = Http(port_, "/v1/completions", body.dump());
  ASSERT_EQ(whole.status, 200) << whole.body;
  json j = json::parse(whole.body);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["usage"]["completion_tokens"], 8);
  body["stream"] = true;
  HttpReply s = Http(port_, "/v1/completions", body.dump());
  ASSERT_EQ(s.status, 200) << s.body;
  EXPECT_TRUE(s.done);
  EXPECT_EQ(StreamedText(s, "text_completion"), j["choices"][0]["text"].get<std::string>());
  // A stop string ends the answer before it.
  body = {{"prompt", "1, 2, 3, 4,"}, {"max_tokens", 16}, {"temperature", 0}, {"stop", "7"}};
  HttpReply stop = Http(port_, "/v1/completions", body.dump());
  ASSERT_EQ(stop.status, 200) << stop.body;
  j = json::parse(stop.body);
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  EXPECT_THAT(j["choices"][0]["text"].get<std::string>(), ::testing::Not(HasSubstr("7")));
}

TEST_F(OpenAiHttpTest, SessionIdAnswersOverAnIngestedSession) {
  auto stub = daemon_->Stub();
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", absl::StrCat("Bearer ", kAlice));
    v1::CreateSessionRequest req;
    req.set_session_id("http-doc");
    v1::Session s;
    ASSERT_TRUE(stub->CreateSession(&ctx, req, &s).ok());
  }
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", absl::StrCat("Bearer ", kAlice));
    auto stream = stub->Ingest(&ctx);
    ASSERT_TRUE(stream->Write(
        Segment(1, "The secret password of the castle is 'blue heron'.", "http-doc")));
    stream->WritesDone();
    v1::IngestResponse ack;
    while (stream->Read(&ack)) {
    }
    ASSERT_TRUE(stream->Finish().ok());
  }
  json body = Chat("What is the secret password?", 16);
  body["session_id"] = "http-doc";
  HttpReply r = Http(port_, "/v1/chat/completions", body.dump());
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_FALSE(json::parse(r.body)["choices"][0]["message"]["content"].get<std::string>().empty());
  // The header form, by a reader of the same tenant; another tenant sees nothing.
  body.erase("session_id");
  r = Http(port_, "/v1/chat/completions", body.dump(), kReader, {"x-session-id: http-doc"});
  EXPECT_EQ(r.status, 200) << r.body;
  r = Http(port_, "/v1/chat/completions", body.dump(), kBob, {"x-session-id: http-doc"});
  ExpectError(r, 404, "not_found", "http-doc");
  // The session is still there, unchanged by the questions (nothing persisted).
  ExpectSessions(1);
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", absl::StrCat("Bearer ", kAlice));
  v1::DeleteSessionRequest del;
  del.set_session_id("http-doc");
  google::protobuf::Empty empty;
  EXPECT_TRUE(stub->DeleteSession(&ctx, del, &empty).ok());
}

TEST_F(OpenAiHttpTest, ErrorsHaveOpenAiShapeAndHttpCodes) {
  const std::string chat = "/v1/chat/completions";
  ExpectError(Http(port_, chat, "{not json"), 400, "invalid_argument", "JSON");
  json body = Chat("hi", 4);
  body["n"] = 2;
  ExpectError(Http(port_, chat, body.dump()), 400, "invalid_argument", "n: only 1");
  body = Chat("hi", 1000);
  ExpectError(Http(port_, chat, body.dump()), 400, "invalid_argument", "max_generate_tokens");
  body = Chat("hi", 4);
  body["temperature"] = -1;
  ExpectError(Http(port_, chat, body.dump()), 400, "invalid_argument", "temperature");
  body = Chat("hi", 4);
  body["model"] = "no-such-model";
  ExpectError(Http(port_, chat, body.dump()), 404, "not_found", "no-such-model");
  body = Chat("hi", 4);
  body["session_id"] = "no-such-session";
  ExpectError(Http(port_, chat, body.dump()), 404, "not_found", "no-such-session");
  body["stream"] = true;  // refused before any event: still an HTTP code
  ExpectError(Http(port_, chat, body.dump()), 404, "not_found", "no-such-session");
  ExpectError(Http(port_, "/v1/nothing", ""), 404, "not_found", "no route");
  const double bad =
      Metric("longctx_http_requests_total{code=\"400\",route=\"/v1/chat/completions\"}");
  EXPECT_GE(bad, 3);
}

TEST_F(OpenAiHttpTest, BearerTokensAndPermissions) {
  ExpectError(Http(port_, "/v1/models", "", ""), 401, "unauthenticated", "Bearer");
  ExpectError(Http(port_, "/v1/models", "", "not-a-known-token-at-all"), 401, "unauthenticated",
              "unknown bearer token");
  // A read-only token may not create the transient session a plain completion needs.
  ExpectError(Http(port_, "/v1/chat/completions", Chat("hi", 4).dump(), kReader), 403,
              "permission_denied", "read-only");
}

TEST_F(OpenAiHttpTest, ClientLeavingMidStreamCancelsTheGeneration) {
  const std::string key =
      "longctx_http_requests_total{code=\"499\",route=\"/v1/chat/completions\"}";
  const double before = Metric(key);
  json body = Chat("Write a very long story about a dragon.", 64, /*stream=*/true);
  body["temperature"] = 1;
  body["seed"] = 7;
  body["stop"] = json::array();  // no stop strings
  HttpReply r = Http(port_, "/v1/chat/completions", body.dump(), kAlice, {}, /*abort_after=*/1);
  EXPECT_EQ(r.status, 200);
  const absl::Time end = absl::Now() + absl::Seconds(30);
  while (Metric(key) == before && absl::Now() < end) absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(Metric(key), before + 1) << daemon_->LogTail();
  ExpectSessions(0);
}

}  // namespace
}  // namespace longctx::testing
