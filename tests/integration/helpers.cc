#include "tests/integration/helpers.h"

#include "absl/strings/str_cat.h"
#include "clients/client.h"
#include "gtest/gtest.h"

namespace longctx::testing {

using client::FromGrpc;

absl::StatusOr<v1::Session> CreateSession(v1::LongContext::Stub* stub,
                                          v1::CreateSessionRequest req) {
  grpc::ClientContext ctx;
  v1::Session s;
  if (auto st = FromGrpc(stub->CreateSession(&ctx, req, &s)); !st.ok()) return st;
  return s;
}

absl::StatusOr<v1::Session> GetSession(v1::LongContext::Stub* stub, const std::string& id) {
  grpc::ClientContext ctx;
  v1::GetSessionRequest req;
  req.set_session_id(id);
  v1::Session s;
  if (auto st = FromGrpc(stub->GetSession(&ctx, req, &s)); !st.ok()) return st;
  return s;
}

absl::Status DeleteSession(v1::LongContext::Stub* stub, const std::string& id) {
  grpc::ClientContext ctx;
  v1::DeleteSessionRequest req;
  req.set_session_id(id);
  google::protobuf::Empty e;
  return FromGrpc(stub->DeleteSession(&ctx, req, &e));
}

v1::IngestRequest Segment(int64_t seq, std::string text, const std::string& session_id) {
  v1::IngestRequest r;
  r.set_session_id(session_id);
  r.mutable_segment()->set_seq(seq);
  r.mutable_segment()->set_text(std::move(text));
  return r;
}

IngestOutcome Ingest(v1::LongContext::Stub* stub, const std::vector<v1::IngestRequest>& requests) {
  grpc::ClientContext ctx;
  auto stream = stub->Ingest(&ctx);
  for (const auto& r : requests) {
    if (!stream->Write(r)) break;
  }
  stream->WritesDone();
  IngestOutcome out;
  v1::IngestResponse ack;
  while (stream->Read(&ack)) out.acks.push_back(ack);
  out.status = stream->Finish();
  return out;
}

absl::StatusOr<int64_t> IngestTexts(v1::LongContext::Stub* stub, const std::string& session_id,
                                    const std::vector<std::string>& texts, int64_t first_seq) {
  std::vector<v1::IngestRequest> reqs;
  for (size_t i = 0; i < texts.size(); ++i) {
    reqs.push_back(
        Segment(first_seq + static_cast<int64_t>(i), texts[i], i == 0 ? session_id : ""));
  }
  IngestOutcome out = Ingest(stub, reqs);
  if (!out.status.ok()) return FromGrpc(out.status);
  if (out.acks.size() != texts.size()) {
    return absl::InternalError(
        absl::StrCat(out.acks.size(), " acks for ", texts.size(), " segments"));
  }
  return out.acks.back().session_tokens();
}

GenerateOutcome Generate(v1::LongContext::Stub* stub, const v1::GenerateRequest& req,
                         absl::Duration timeout,
                         const std::function<void(grpc::ClientContext*)>& after_first_chunk) {
  grpc::ClientContext ctx;
  if (timeout > absl::ZeroDuration()) ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  auto reader = stub->Generate(&ctx, req);
  GenerateOutcome out;
  v1::GenerateResponse msg;
  while (reader->Read(&msg)) {
    if (msg.has_chunk()) {
      out.text += msg.chunk().text();
      out.ids.insert(out.ids.end(), msg.chunk().token_ids().begin(), msg.chunk().token_ids().end());
      if (out.chunks++ == 0 && after_first_chunk) after_first_chunk(&ctx);
    } else if (msg.has_complete()) {
      out.complete = msg.complete();
    }
  }
  out.status = reader->Finish();
  return out;
}

absl::StatusOr<v1::ScoreResponse> Score(v1::LongContext::Stub* stub, const std::string& id,
                                        const std::string& text, bool per_token) {
  grpc::ClientContext ctx;
  v1::ScoreRequest req;
  req.set_session_id(id);
  req.set_text(text);
  req.set_per_token(per_token);
  v1::ScoreResponse resp;
  if (auto st = FromGrpc(stub->Score(&ctx, req, &resp)); !st.ok()) return st;
  return resp;
}

absl::StatusOr<std::string> Export(v1::LongContext::Stub* stub, const std::string& id) {
  return client::ExportSession(stub, client::ClientOptions(), id);
}

v1::CreateSessionRequest WindowedSession(v1::OverflowPolicy policy, int64_t window, int sinks,
                                         int chunk_len) {
  v1::CreateSessionRequest c;
  c.set_prompt_format(v1::PROMPT_FORMAT_RAW);
  c.mutable_attention()->set_mode(v1::ATTENTION_MODE_DCA);
  c.mutable_attention()->set_chunk_size(2 * chunk_len);
  c.mutable_attention()->set_local_window(chunk_len);
  c.mutable_memory()->set_window_tokens(window);
  c.mutable_memory()->set_sink_tokens(sinks);
  c.mutable_memory()->set_overflow(policy);
  return c;
}

std::vector<std::string> Paragraphs(int n) {
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) {
    out.push_back(absl::StrCat("Paragraph ", i,
                               ". The river keeper counted the boats that passed under the old "
                               "stone bridge, wrote the number in a green ledger, and walked "
                               "back along the towpath while the lamps came on one by one. "));
  }
  return out;
}

void ExpectStillServing(Daemon* daemon) {
  auto stub = daemon->Stub();
  v1::CreateSessionRequest req;
  req.set_prompt_format(v1::PROMPT_FORMAT_RAW);
  auto s = CreateSession(stub.get(), req);
  ASSERT_TRUE(s.ok()) << s.status() << "\n" << daemon->LogTail();
  ASSERT_TRUE(IngestTexts(stub.get(), s->id(), {"The cat sat on the mat."}).ok());
  v1::GenerateRequest g;
  g.set_session_id(s->id());
  g.set_max_tokens(2);
  const GenerateOutcome out = Generate(stub.get(), g);
  EXPECT_TRUE(out.status.ok()) << out.status.error_message();
  EXPECT_TRUE(out.complete.has_value());
  auto score = Score(stub.get(), s->id(), " It purred.");
  EXPECT_TRUE(score.ok()) << score.status();
  EXPECT_TRUE(DeleteSession(stub.get(), s->id()).ok());
}

}  // namespace longctx::testing
