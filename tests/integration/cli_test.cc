// The `longctx` command-line client against the real server: the commands a
// user types, run as the real binary, with their exit codes and output.
#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <regex>
#include <string>

#include "absl/strings/str_cat.h"
#include "clients/client.h"
#include "gtest/gtest.h"
#include "tests/integration/daemon.h"
#include "tests/integration/helpers.h"

namespace longctx::testing {
namespace {

struct CliResult {
  int exit_code = -1;
  std::string out;  // stdout and stderr together
};

// Runs `longctx --server=ADDRESS ARGS` through the shell.
CliResult RunCli(const Daemon& daemon, const std::string& args) {
  const std::string cmd =
      absl::StrCat(LONGCTX_CLI_PATH, " --server=", daemon.address(), " ", args, " 2>&1");
  CliResult r;
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) r.out.append(buf, n);
  const int status = pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

using CliTest = SharedDaemonTest;

TEST_F(CliTest, CreateIngestAskScoreListDelete) {
  Daemon* daemon = daemon_;

  // No --id: the server picks one that names its replica, the session's home.
  CliResult create = RunCli(*daemon, "create --label=suite=cli");
  ASSERT_EQ(create.exit_code, 0) << create.out;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(create.out, m, std::regex("[a-z0-9-]+\\.s-[0-9a-f]{32}")))
      << create.out;
  const std::string id = m.str();

  const std::string doc = ::testing::TempDir() + "/cli_doc.txt";
  {
    std::ofstream f(doc);
    for (int i = 0; i < 40; ++i)
      f << "Paragraph " << i << ": the lighthouse keeper counts ships.\n\n";
  }
  CliResult ingest = RunCli(*daemon, absl::StrCat("ingest ", id, " ", doc, " --segment-bytes=256"));
  ASSERT_EQ(ingest.exit_code, 0) << ingest.out;

  auto session = GetSession(daemon->Stub().get(), id);
  ASSERT_TRUE(session.ok()) << session.status();
  EXPECT_GT(session->tokens(), 300);
  EXPECT_GT(session->next_seq(), 1);

  CliResult ask =
      RunCli(*daemon, absl::StrCat("ask ", id, " 'What does the keeper count?' --max-tokens=8",
                                   " --repetition-penalty=1.2"));
  ASSERT_EQ(ask.exit_code, 0) << ask.out;
  EXPECT_FALSE(ask.out.empty());

  CliResult score = RunCli(*daemon, absl::StrCat("score ", id, " 'ships'"));
  ASSERT_EQ(score.exit_code, 0) << score.out;
  EXPECT_NE(score.out.find("perplexity"), std::string::npos) << score.out;

  CliResult list = RunCli(*daemon, "list --label=suite=cli");
  ASSERT_EQ(list.exit_code, 0) << list.out;
  EXPECT_NE(list.out.find(id), std::string::npos) << list.out;

  // The question was rolled back: the session holds the document only.
  auto after = GetSession(daemon->Stub().get(), id);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->tokens(), session->tokens());

  CliResult del = RunCli(*daemon, absl::StrCat("delete ", id));
  ASSERT_EQ(del.exit_code, 0) << del.out;
  CliResult gone = RunCli(*daemon, absl::StrCat("get ", id));
  EXPECT_NE(gone.exit_code, 0) << gone.out;
  EXPECT_NE(gone.out.find("NOT_FOUND"), std::string::npos) << gone.out;
}

// `ingest --first-seq=1` of the same file continues where the session stands:
// segments below its next_seq are skipped, the rest are sent once; without
// --first-seq the file is appended.
TEST_F(CliTest, IngestFromTheFirstSeqSkipsWhatTheSessionHolds) {
  Daemon* daemon = daemon_;
  auto stub = daemon->Stub();
  v1::CreateSessionRequest raw;
  raw.set_prompt_format(v1::PROMPT_FORMAT_RAW);
  auto session = CreateSession(stub.get(), raw);
  ASSERT_TRUE(session.ok()) << session.status();
  const std::string id = session->id();
  const std::string doc = ::testing::TempDir() + "/cli_resume.txt";
  std::string text;
  for (int i = 0; i < 6; ++i)
    absl::StrAppend(&text, "Part ", i, " of the lighthouse keeper's long log.\n\n");
  {
    std::ofstream f(doc);
    f << text;
  }
  // An earlier run that stopped after two of the file's segments (the CLI
  // cuts at paragraphs: 64 bytes hold one part each).
  const std::vector<std::string> parts = client::SplitSegments(text, 64);
  ASSERT_EQ(parts.size(), 6u);
  ASSERT_TRUE(IngestTexts(stub.get(), id, {parts[0], parts[1]}).ok());

  CliResult resume =
      RunCli(*daemon, absl::StrCat("ingest ", id, " ", doc, " --segment-bytes=64 --first-seq=1"));
  ASSERT_EQ(resume.exit_code, 0) << resume.out;
  EXPECT_NE(resume.out.find("4 segments"), std::string::npos) << resume.out;
  EXPECT_NE(resume.out.find("2 already in the session"), std::string::npos) << resume.out;
  auto whole = GetSession(stub.get(), id);
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ(whole->segments(), 6);
  EXPECT_EQ(whole->next_seq(), 7);

  // Again: nothing left to send, nothing applied twice.
  CliResult again =
      RunCli(*daemon, absl::StrCat("ingest ", id, " ", doc, " --segment-bytes=64 --first-seq=1"));
  ASSERT_EQ(again.exit_code, 0) << again.out;
  auto same = GetSession(stub.get(), id);
  ASSERT_TRUE(same.ok()) << same.status();
  EXPECT_EQ(same->tokens(), whole->tokens());
  EXPECT_EQ(same->segments(), 6);

  // Without --first-seq the file is appended after what the session holds.
  CliResult append = RunCli(*daemon, absl::StrCat("ingest ", id, " ", doc, " --segment-bytes=64"));
  ASSERT_EQ(append.exit_code, 0) << append.out;
  auto appended = GetSession(stub.get(), id);
  ASSERT_TRUE(appended.ok()) << appended.status();
  EXPECT_EQ(appended->segments(), 12);
  EXPECT_EQ(appended->next_seq(), 13);
  ASSERT_TRUE(DeleteSession(stub.get(), id).ok());
}

TEST_F(CliTest, BadArgumentsFailWithUsageOrStatus) {
  Daemon* daemon = daemon_;
  CliResult unknown = RunCli(*daemon, "frobnicate");
  EXPECT_NE(unknown.exit_code, 0);
  EXPECT_NE(unknown.out.find("usage"), std::string::npos) << unknown.out;
  CliResult bad_id = RunCli(*daemon, "create --id='bad id!'");
  EXPECT_NE(bad_id.exit_code, 0);
  EXPECT_NE(bad_id.out.find("session_id"), std::string::npos) << bad_id.out;
  ExpectStillServing(daemon);
}

}  // namespace
}  // namespace longctx::testing
