// Tokenizer tests: golden ids from Hugging Face `tokenizers` and `sentencepiece`
// (tools/gen_tokenizer_golden.py), round trips, streaming detokenization,
// special tokens and rejection of malformed vocabularies.
#include "engine/tokenizer/tokenizer.h"

#include <chrono>
#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "engine/tokenizer/byte_level.h"
#include "engine/tokenizer/pre_tokenizer.h"
#include "engine/tokenizer/stream_decoder.h"
#include "engine/tokenizer/unicode.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/tokenizer_test_util.h"

namespace longctx {
namespace {

using nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Whether `s` is well-formed UTF-8.
bool IsUtf8(const std::string& s) {
  for (size_t pos = 0; pos < s.size();) {
    const Utf8Prefix p = CheckUtf8Prefix(absl::string_view(s).substr(pos));
    if (p.kind != Utf8Prefix::kValid) return false;
    pos += p.length;
  }
  return true;
}

std::string Printable(const std::string& s) { return absl::CEscape(s); }

// The default model's tokenizer with pre-tokenizer `pre`; skips without the model.
class ModelTokenizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (testing::ModelVocab() == nullptr) {
      GTEST_SKIP() << "LONGCTX_MODEL not set: default model unavailable";
    }
  }
  const Tokenizer& Get(const std::string& pre = "smollm") {
    static std::map<std::string, std::unique_ptr<Tokenizer>> cache;
    auto& slot = cache[pre];
    if (!slot) {
      VocabData v = *testing::ModelVocab();
      v.pre = pre;
      auto t = Tokenizer::Create(v);
      EXPECT_TRUE(t.ok()) << t.status();
      slot = std::make_unique<Tokenizer>(*std::move(t));
    }
    return *slot;
  }
};

TEST_F(ModelTokenizerTest, MatchesHuggingFaceGoldens) {
  auto golden = testing::ReadFixture("smollm_golden.json");
  ASSERT_TRUE(golden.ok()) << golden.status();
  int checked = 0;
  for (const json& c : golden->at("cases")) {
    const std::string pre = c.at("pre").get<std::string>();
    const std::string name = c.at("name").get<std::string>();
    const Tokenizer& tok = Get(pre);
    const std::string text = c.at("text").get<std::string>();
    const std::vector<int32_t> want = c.at("ids").get<std::vector<int32_t>>();
    EXPECT_EQ(tok.Encode(text, /*parse_special=*/true), want)
        << pre << "/" << name << ": " << Printable(text);
    // Text with bytes the vocabulary lacks does not come back whole.
    if (!c.value("lossy", false)) {
      EXPECT_EQ(tok.Decode(want), text) << pre << "/" << name;
    }
    ++checked;
  }
  EXPECT_GE(checked, 100);
}

TEST_F(ModelTokenizerTest, VocabularyFacts) {
  const Tokenizer& tok = Get();
  EXPECT_EQ(tok.kind(), Tokenizer::Kind::kByteLevelBpe);
  EXPECT_EQ(tok.vocab_size(), 49152);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_FALSE(tok.add_bos());
  EXPECT_EQ(tok.SpecialTokenId("<|im_start|>"), 1);
  EXPECT_EQ(tok.SpecialTokenId("<|im_end|>"), 2);
  EXPECT_EQ(tok.SpecialTokenId("<|endoftext|>"), 0);
  EXPECT_EQ(tok.SpecialTokenId("hello"), -1);
  EXPECT_TRUE(tok.IsEog(2));
  EXPECT_TRUE(tok.IsEog(0));
  EXPECT_FALSE(tok.IsEog(1));
  EXPECT_FALSE(tok.IsEog(tok.PieceToId("Hello")));
  EXPECT_EQ(tok.TokenPiece(tok.PieceToId("Ġworld")), "Ġworld");
  EXPECT_EQ(tok.TokenBytes(tok.PieceToId("Ġworld")), " world");
  EXPECT_EQ(tok.TokenBytes(tok.PieceToId("Ċ")), "\n");
}

TEST_F(ModelTokenizerTest, SpecialTokensParsedOnlyWhenAsked) {
  const Tokenizer& tok = Get();
  const std::string text = "<|im_start|>user\nhi<|im_end|>";
  const std::vector<int32_t> parsed = tok.Encode(text, /*parse_special=*/true);
  ASSERT_GE(parsed.size(), 3u);
  EXPECT_EQ(parsed.front(), 1);
  EXPECT_EQ(parsed.back(), 2);
  const std::vector<int32_t> plain = tok.Encode(text, /*parse_special=*/false);
  for (const int32_t id : plain) EXPECT_FALSE(tok.IsControl(id)) << id;
  EXPECT_GT(plain.size(), parsed.size());
  EXPECT_EQ(tok.Decode(plain), text);
  // Decoding can drop control tokens.
  EXPECT_EQ(tok.Decode(parsed, /*skip_special=*/true), "user\nhi");
}

TEST_F(ModelTokenizerTest, BooksRoundTripQuickly) {
  for (const char* book : {"anna_karenina.txt", "crime_and_punishment.txt"}) {
    const char* dir = std::getenv("LONGCTX_BOOKS_DIR");
    const std::string books =
        dir != nullptr ? dir : absl::StrCat(LONGCTX_SOURCE_DIR, "/../shared/data/books");
    auto text = testing::ReadFile(absl::StrCat(books, "/", book));
    if (!text.ok()) GTEST_SKIP() << "books not found (LONGCTX_BOOKS_DIR): " << text.status();
    const std::string mb = text->substr(0, 1 << 20);
    const auto t0 = std::chrono::steady_clock::now();
    const std::vector<int32_t> ids = Get().Encode(mb, /*parse_special=*/true);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("[ info ] %s: 1 MiB -> %zu tokens in %.3f s\n", book, ids.size(), s);
    EXPECT_EQ(Get().Decode(ids), mb);
    // Far above the expected ~0.2 s; catches only super-linear behaviour.
    EXPECT_LT(s, 20.0);
  }
}

TEST_F(ModelTokenizerTest, LongWordsStayLinear) {
  // One pre-token of 200k bytes: the heap-driven merge loop must not go quadratic.
  std::string word(200000, 'x');
  std::vector<int32_t> ids = Get().Encode(word, false);
  EXPECT_LT(ids.size(), word.size());
  EXPECT_EQ(Get().Decode(ids), word);
  std::string spaces(100000, ' ');
  ids = Get().Encode(spaces, false);
  EXPECT_EQ(Get().Decode(ids), spaces);
}

TEST_F(ModelTokenizerTest, IllFormedUtf8IsEncodedByteForByte) {
  const std::string text = "ok \x80\xbf broken \xe2\x82 and \xed\xa0\x80 end \xf0\x9f";
  const std::vector<int32_t> ids = Get().Encode(text, true);
  std::string bytes;
  for (const int32_t id : ids) bytes += Get().TokenBytes(id);
  EXPECT_EQ(bytes, text);
  const std::string decoded = Get().Decode(ids);
  EXPECT_TRUE(IsUtf8(decoded));
  EXPECT_EQ(decoded, "ok \uFFFD\uFFFD broken \uFFFD and \uFFFD\uFFFD\uFFFD end \uFFFD");
  // 0xFF has no token in this vocabulary: dropped, never the unknown token
  // (here <|endoftext|>, which would end the text).
  EXPECT_EQ(Get().Encode("a\xff", true), Get().Encode("a", true));
}

TEST_F(ModelTokenizerTest, RandomBytesNeverLoseTokenizableBytes) {
  const Tokenizer& tok = Get();
  std::mt19937 rng(99);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_int_distribution<int> len(0, 64);
  for (int trial = 0; trial < 300; ++trial) {
    std::string text(len(rng), '\0');
    // Bias towards ASCII, spaces and digits so every splitter path is taken.
    for (char& c : text) {
      const int r = byte(rng);
      c = static_cast<char>(r < 64 ? " 0123456789\n\t'<|>abcXYZ"[r % 24] : r);
    }
    std::string kept;
    for (const char c : text) {
      if (tok.Encode(std::string(1, c), false).size() == 1) kept.push_back(c);
    }
    std::string bytes;
    for (const int32_t id : tok.Encode(text, false)) bytes += tok.TokenBytes(id);
    EXPECT_EQ(bytes, kept) << Printable(text);
  }
}

// Feeds `ids` through a StreamDecoder; checks every delta is UTF-8 and returns the
// concatenation.
std::string Stream(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip_special) {
  StreamDecoder d(&tok, skip_special);
  std::string all;
  for (const int32_t id : ids) {
    const std::string delta = d.Feed(id);
    EXPECT_TRUE(IsUtf8(delta)) << Printable(delta);
    EXPECT_LE(d.pending_bytes(), 3u);
    all += delta;
  }
  const std::string tail = d.Flush();
  EXPECT_TRUE(IsUtf8(tail)) << Printable(tail);
  EXPECT_EQ(d.pending_bytes(), 0u);
  return all + tail;
}

TEST_F(ModelTokenizerTest, StreamingEqualsWholeDecode) {
  const Tokenizer& tok = Get();
  auto golden = testing::ReadFixture("smollm_golden.json");
  ASSERT_TRUE(golden.ok()) << golden.status();
  for (const json& c : golden->at("cases")) {
    const std::string name = c.at("name").get<std::string>();
    const std::vector<int32_t> ids = c.at("ids").get<std::vector<int32_t>>();
    EXPECT_EQ(Stream(tok, ids, false), tok.Decode(ids)) << name;
    EXPECT_EQ(Stream(tok, ids, true), tok.Decode(ids, true)) << name;
  }
}

TEST_F(ModelTokenizerTest, StreamingHoldsBackSplitCharacters) {
  const Tokenizer& tok = Get();
  // U+1F600 is four bytes; the vocabulary spells it with more than one token.
  const std::vector<int32_t> ids = tok.Encode("a😀", false);
  ASSERT_GE(ids.size(), 3u);
  StreamDecoder d(&tok);
  EXPECT_EQ(d.Feed(ids[0]), "a");
  std::string got;
  for (size_t i = 1; i + 1 < ids.size(); ++i) {
    got += d.Feed(ids[i]);
    EXPECT_GT(d.pending_bytes(), 0u);
  }
  EXPECT_EQ(got, "");
  EXPECT_EQ(d.Feed(ids.back()), "😀");
  EXPECT_EQ(d.Flush(), "");
  // A truncated character at the end comes out as one replacement character.
  StreamDecoder cut(&tok);
  EXPECT_EQ(cut.Feed(ids[1]), "");
  EXPECT_EQ(cut.Flush(), "\xEF\xBF\xBD");
}

TEST_F(ModelTokenizerTest, StreamingRandomIdsIsValidUtf8AndMatchesDecode) {
  const Tokenizer& tok = Get();
  std::mt19937 rng(1234);
  // Mostly single-byte tokens (ids of the byte alphabet) so that UTF-8
  // sequences get split and broken in every way, plus arbitrary tokens.
  std::vector<int32_t> byte_tokens;
  for (int b = 0; b < 256; ++b) {
    std::string one(1, static_cast<char>(b));
    const std::vector<int32_t> ids = tok.Encode(one, false);
    ASSERT_LE(ids.size(), 1u) << b;  // empty for the few bytes without a token
    if (!ids.empty()) byte_tokens.push_back(ids[0]);
  }
  ASSERT_GT(byte_tokens.size(), 200u);
  std::uniform_int_distribution<int32_t> any(0, tok.vocab_size() - 1);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_int_distribution<int> len(0, 40);
  for (int trial = 0; trial < 500; ++trial) {
    std::vector<int32_t> ids(len(rng));
    for (int32_t& id : ids) {
      id = (rng() % 3 == 0) ? any(rng) : byte_tokens[byte(rng) % byte_tokens.size()];
    }
    const std::string whole = tok.Decode(ids);
    EXPECT_TRUE(IsUtf8(whole));
    EXPECT_EQ(Stream(tok, ids, false), whole) << "trial " << trial;
  }
}

// --- Pre-tokenizers -------------------------------------------------------------

std::vector<std::string> Split(PreTokenizerKind kind, absl::string_view text) {
  std::vector<TextSpan> spans;
  PreTokenize(kind, text, &spans);
  std::vector<std::string> out;
  for (const TextSpan& s : spans) out.emplace_back(text.substr(s.begin, s.end - s.begin));
  return out;
}

TEST(PreTokenizerTest, Gpt2Pattern) {
  EXPECT_THAT(Split(PreTokenizerKind::kGpt2, "Hello world's  end 123!"),
              ElementsAre("Hello", " world", "'s", " ", " end", " 123", "!"));
  EXPECT_THAT(Split(PreTokenizerKind::kGpt2, "a\n\nb\tc   "),
              ElementsAre("a", "\n", "\n", "b", "\t", "c", "   "));
}

TEST(PreTokenizerTest, SmollmIsolatesDigits) {
  EXPECT_THAT(Split(PreTokenizerKind::kSmollm, "x 123  4y"),
              ElementsAre("x", " ", "1", "2", "3", "  ", "4", "y"));
}

TEST(PreTokenizerTest, Llama3AndQwen2Patterns) {
  EXPECT_THAT(Split(PreTokenizerKind::kLlama3, "I'M (hello) 12345\n\n  x"),
              ElementsAre("I", "'M", " (", "hello", ")", " ", "123", "45", "\n\n", " ", " x"));
  EXPECT_THAT(Split(PreTokenizerKind::kQwen2, "ab 123"), ElementsAre("ab", " ", "1", "2", "3"));
  EXPECT_THAT(Split(PreTokenizerKind::kLlama3, "x:\n\n\ty"), ElementsAre("x", ":\n\n", "\ty"));
}

TEST(PreTokenizerTest, NamesAndAliases) {
  EXPECT_EQ(*PreTokenizerFromName("smollm"), PreTokenizerKind::kSmollm);
  EXPECT_EQ(*PreTokenizerFromName("llama-bpe"), PreTokenizerKind::kLlama3);
  EXPECT_EQ(*PreTokenizerFromName("qwen2"), PreTokenizerKind::kQwen2);
  EXPECT_EQ(*PreTokenizerFromName("gpt2"), PreTokenizerKind::kGpt2);
  EXPECT_EQ(PreTokenizerFromName("default").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(UnicodeTest, CodepointClasses) {
  EXPECT_EQ(ClassifyCodepoint('a'), CharClass::kLetter);
  EXPECT_EQ(ClassifyCodepoint(0xE9), CharClass::kLetter);    // é
  EXPECT_EQ(ClassifyCodepoint(0x4E2D), CharClass::kLetter);  // 中
  EXPECT_EQ(ClassifyCodepoint(0x0663), CharClass::kNumber);  // Arabic-Indic three
  EXPECT_EQ(ClassifyCodepoint(0x00B2), CharClass::kNumber);  // superscript two
  EXPECT_EQ(ClassifyCodepoint(0x2167), CharClass::kNumber);  // Roman numeral eight
  EXPECT_EQ(ClassifyCodepoint(0x00A0), CharClass::kWhitespace);
  EXPECT_EQ(ClassifyCodepoint(0x3000), CharClass::kWhitespace);
  EXPECT_EQ(ClassifyCodepoint(0x2028), CharClass::kWhitespace);
  EXPECT_EQ(ClassifyCodepoint(0x0085), CharClass::kWhitespace);
  EXPECT_EQ(ClassifyCodepoint(0x200B), CharClass::kOther);   // zero width space is Cf
  EXPECT_EQ(ClassifyCodepoint(0x1F600), CharClass::kOther);  // emoji
  EXPECT_EQ(ClassifyCodepoint('_'), CharClass::kOther);
  EXPECT_EQ(ClassifyCodepoint(0x10FFFF), CharClass::kOther);
}

// --- SentencePiece BPE ----------------------------------------------------------

VocabData SpmVocab(const json& fixture) {
  VocabData v;
  v.model = "llama";
  v.pre = "default";
  v.tokens = fixture.at("tokens").get<std::vector<std::string>>();
  for (const json& s : fixture.at("scores")) v.scores.push_back(s.get<float>());
  for (const json& t : fixture.at("types")) v.types.push_back(static_cast<TokenType>(t.get<int>()));
  v.bos_id = fixture.at("bos").get<int32_t>();
  v.eos_id = fixture.at("eos").get<int32_t>();
  v.unk_id = fixture.at("unk").get<int32_t>();
  v.add_bos = true;
  v.add_space_prefix = true;
  return v;
}

TEST(SentencePieceTest, MatchesSentencePieceGoldens) {
  auto fixture = testing::ReadFixture("spm_golden.json");
  ASSERT_TRUE(fixture.ok()) << fixture.status();
  auto tok = Tokenizer::Create(SpmVocab(*fixture));
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(tok->kind(), Tokenizer::Kind::kSentencePieceBpe);
  EXPECT_TRUE(tok->add_bos());
  int checked = 0;
  for (const json& c : fixture->at("cases")) {
    const std::string name = c.at("name").get<std::string>();
    const std::string text = c.at("text").get<std::string>();
    const std::vector<int32_t> want = c.at("ids").get<std::vector<int32_t>>();
    EXPECT_EQ(tok->Encode(text, /*parse_special=*/false), want) << name;
    EXPECT_EQ(tok->Decode(want), text) << name;
    EXPECT_EQ(Stream(*tok, want, false), text) << name;
    ++checked;
  }
  EXPECT_GE(checked, 9);
  // With BOS in front the text decodes the same, BOS shown or skipped.
  std::vector<int32_t> ids = {tok->bos_id()};
  const std::vector<int32_t> hello = tok->Encode("hello there", false);
  ids.insert(ids.end(), hello.begin(), hello.end());
  EXPECT_EQ(tok->Decode(ids, /*skip_special=*/true), "hello there");
  EXPECT_EQ(tok->Decode(ids), "<s>hello there");
}

// A tiny vocabulary where scores, not order, decide the merges.
VocabData TinySpm(bool with_bytes) {
  VocabData v;
  v.model = "llama";
  const std::vector<std::pair<std::string, float>> pieces = {{"<unk>", 0},
                                                             {"<s>", 0},
                                                             {"</s>", 0},
                                                             {"\xE2\x96\x81", -10},
                                                             {"a", -10},
                                                             {"b", -10},
                                                             {"c", -10},
                                                             {"ab", -3},
                                                             {"bc", -1},
                                                             {"abc", -2},
                                                             {"\xE2\x96\x81"
                                                              "a",
                                                              -0.5f}};
  for (const auto& [p, s] : pieces) {
    v.tokens.push_back(p);
    v.scores.push_back(s);
    v.types.push_back(TokenType::kNormal);
  }
  v.types[0] = TokenType::kUnknown;
  v.types[1] = v.types[2] = TokenType::kControl;
  if (with_bytes) {
    for (int b = 0; b < 256; ++b) {
      v.tokens.push_back(absl::StrCat("<0x", absl::Hex(b, absl::kZeroPad2), ">"));
      for (char& ch : v.tokens.back()) ch = static_cast<char>(std::toupper(ch));
      v.tokens.back()[1] = '0';
      v.tokens.back()[2] = 'x';
      v.scores.push_back(0);
      v.types.push_back(TokenType::kByte);
    }
  }
  v.unk_id = 0;
  v.bos_id = 1;
  v.eos_id = 2;
  return v;
}

TEST(SentencePieceTest, ScoresDecideMergeOrder) {
  auto tok = Tokenizer::Create(TinySpm(false));
  ASSERT_TRUE(tok.ok()) << tok.status();
  // "bc" (-1) beats "ab" (-3); then "a"+"bc" forms "abc".
  EXPECT_THAT(tok->Encode("abc", false), ElementsAre(9));
  // "abab": both "ab" merge; no "abab" piece.
  EXPECT_THAT(tok->Encode("abab", false), ElementsAre(7, 7));
  // Spaces become U+2581 and merge by score: "▁a" (-0.5) before anything else.
  EXPECT_THAT(tok->Encode("a a", false), ElementsAre(4, 10));
  // A character missing from the vocabulary, without byte tokens: unknown.
  EXPECT_THAT(tok->Encode("aéb", false), ElementsAre(4, 0, 5));
}

TEST(SentencePieceTest, ByteFallbackAndSpacePrefix) {
  VocabData v = TinySpm(true);
  v.add_space_prefix = true;
  auto tok = Tokenizer::Create(v);
  ASSERT_TRUE(tok.ok()) << tok.status();
  const int32_t c3 = tok->PieceToId("<0xC3>");
  const int32_t a9 = tok->PieceToId("<0xA9>");
  ASSERT_GE(c3, 0);
  EXPECT_THAT(tok->Encode("aé", false), ElementsAre(10, c3, a9));
  EXPECT_EQ(tok->Decode(tok->Encode("aé", false)), "aé");
  EXPECT_EQ(tok->Decode(tok->Encode("  ab é", false)), "  ab é");
  // Control tokens in text only with parse_special; no prefix after them.
  EXPECT_THAT(tok->Encode("<s>a", true), ElementsAre(1, 4));
  EXPECT_EQ(tok->Decode(tok->Encode("<s>a", true)), "<s>a");
}

// --- Rejection of malformed vocabularies ---------------------------------------

VocabData TinyByteLevel() {
  VocabData v;
  v.model = "gpt2";
  v.pre = "gpt2";
  for (int b = 0; b < 256; ++b)
    v.tokens.push_back(BytesToPiece(std::string(1, static_cast<char>(b))));
  v.tokens.push_back("ab");
  v.merges = {"a b"};
  return v;
}

absl::Status CreateStatus(const VocabData& v) { return Tokenizer::Create(v).status(); }

TEST(TokenizerErrorsTest, RejectsMalformedVocabularies) {
  VocabData v;
  EXPECT_THAT(CreateStatus(v).message(), HasSubstr("empty"));

  v = TinyByteLevel();
  ASSERT_TRUE(CreateStatus(v).ok());

  v = TinyByteLevel();
  v.merges = {"a zz"};
  EXPECT_THAT(CreateStatus(v).message(), HasSubstr("not in the vocabulary"));
  v.merges = {"a c"};  // "ac" itself is missing
  EXPECT_THAT(CreateStatus(v).message(), HasSubstr("'ac'"));
  v.merges = {"ab"};
  EXPECT_THAT(CreateStatus(v).message(), HasSubstr("not two pieces"));

  v = TinyByteLevel();
  v.scores = {1.0f};
  EXPECT_THAT(CreateStatus(v).message(), HasSubstr("scores"));
  v = TinyByteLevel();
  v.types = {TokenType::kNormal};
  EXPECT_THAT(CreateStatus(v).message(), HasSubstr("token types"));
  v = TinyByteLevel();
  v.types.assign(v.tokens.size(), TokenType::kNormal);
  v.types[3] = static_cast<TokenType>(17);
  EXPECT_THAT(CreateStatus(v).message(), HasSubstr("unknown token type"));
  v = TinyByteLevel();
  v.eos_id = static_cast<int32_t>(v.tokens.size());
  EXPECT_THAT(CreateStatus(v).message(), HasSubstr("eos id"));
  v = TinyByteLevel();
  v.model = "bert";
  EXPECT_THAT(CreateStatus(v).message(), HasSubstr("unsupported tokenizer model"));
  v = TinyByteLevel();
  v.pre = "mystery";
  EXPECT_THAT(CreateStatus(v).message(), HasSubstr("unsupported byte-level BPE pre-tokenizer"));

  v = TinyByteLevel();
  v.tokens.push_back("a");
  v.tokens.push_back("<|ctl|>");
  v.types.assign(v.tokens.size(), TokenType::kNormal);
  v.types.back() = TokenType::kControl;
  v.bos_id = static_cast<int32_t>(v.tokens.size() - 1);
  ASSERT_TRUE(CreateStatus(v).ok());  // a duplicate piece keeps its first id
  EXPECT_EQ(Tokenizer::Create(v)->PieceToId("a"), 'a');

  v = TinySpm(true);
  v.scores.clear();
  EXPECT_THAT(CreateStatus(v).message(), HasSubstr("no token scores"));
  v = TinySpm(true);
  v.tokens[20] = "<0xZZ>";
  EXPECT_THAT(CreateStatus(v).message(), HasSubstr("not of the form <0xNN>"));
  v = TinySpm(false);
  v.unk_id = -1;
  EXPECT_THAT(CreateStatus(v).message(), HasSubstr("neither all 256"));
  for (const absl::Status& s : {CreateStatus(VocabData{}), CreateStatus(v)}) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(TokenizerErrorsTest, OutOfRangeIdsAreSkippedInDecode) {
  auto tok = Tokenizer::Create(TinyByteLevel());
  ASSERT_TRUE(tok.ok()) << tok.status();
  const std::vector<int32_t> ids = {-5, tok->PieceToId("ab"), 1 << 30};
  EXPECT_EQ(tok->Decode(ids), "ab");
  StreamDecoder d(&*tok);
  EXPECT_EQ(d.Feed(-1), "");
  EXPECT_EQ(d.Feed(tok->PieceToId("ab")), "ab");
}

}  // namespace
}  // namespace longctx
