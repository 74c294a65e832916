// Tokenizers against the ids Hugging Face transformers produced (tests/data/golden/tokenizers.json),
// plus the folder layouts, errors, batching, decoding and the `deltatune tokenize` command.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "deltatune/error.h"
#include "deltatune/tokenizer.h"
#include "tokenize/pretokenize.h"

namespace fs = std::filesystem;
using deltatune::Encoding;
using deltatune::IoError;
using deltatune::Tokenizer;
using nlohmann::json;

namespace {

fs::path model_dir(const std::string& name) { return fs::path(DELTATUNE_ASSETS) / "models" / name; }

const json& golden() {
  static const json data = [] {
    std::ifstream in(fs::path(DELTATUNE_TEST_DATA) / "golden" / "tokenizers.json");
    return json::parse(in);
  }();
  return data;
}

std::vector<int64_t> ids_of(const json& entry, const char* key = "ids") {
  return entry.at(key).get<std::vector<int64_t>>();
}

// A fresh folder under the system temp dir, removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    static int counter = 0;
    path_ = fs::temp_directory_path() /
            ("deltatune-tok-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }
  void copy(const fs::path& file) const {
    fs::copy_file(file, path_ / file.filename(), fs::copy_options::overwrite_existing);
    fs::permissions(path_ / file.filename(), fs::perms::owner_write, fs::perm_options::add);
  }
  void write(const std::string& name, const std::string& content) const {
    std::ofstream(path_ / name, std::ios::binary) << content;
  }

 private:
  fs::path path_;
};

// Every golden case of `key` through `tokenizer`; returns how many matched.
int check_golden(const Tokenizer& tokenizer, const std::string& key) {
  int matched = 0;
  for (const json& entry : golden().at(key)) {
    const std::string text = entry.at("text");
    Encoding encoding;
    if (entry.contains("text_pair")) {
      encoding = tokenizer.encode_pair(text, entry.at("text_pair").get<std::string>());
      EXPECT_EQ(encoding.type_ids, ids_of(entry, "token_type_ids")) << key << ": " << json(text).dump();
    } else {
      encoding = tokenizer.encode(text);
    }
    EXPECT_EQ(encoding.ids, ids_of(entry)) << key << ": " << json(text).dump();
    EXPECT_EQ(encoding.tokens.size(), encoding.ids.size());
    matched += encoding.ids == ids_of(entry) ? 1 : 0;
  }
  return matched;
}

struct CommandResult {
  int status = -1;
  std::string output;
};

CommandResult run_command(const std::string& arguments) {
  const std::string command = std::string("'") + DELTATUNE_BINARY + "' " + arguments + " 2>&1";
  CommandResult result;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return result;
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) result.output.append(buffer, n);
  const int status = ::pclose(pipe);
  result.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

std::vector<json> json_lines(const std::string& output) {
  std::vector<json> lines;
  std::istringstream in(output);
  std::string line;
  while (std::getline(in, line)) lines.push_back(json::parse(line));
  return lines;
}

}  // namespace

// --- golden ids from transformers ------------------------------------------------------------------

TEST(TokenizerGolden, Gpt2MiniByteLevelBpe) {
  const auto tokenizer = Tokenizer::load(model_dir("gpt2-mini"));
  EXPECT_EQ(tokenizer->kind(), "bpe");
  EXPECT_EQ(check_golden(*tokenizer, "gpt2-mini"), static_cast<int>(golden()["gpt2-mini"].size()));
}

TEST(TokenizerGolden, BertMiniWordPiece) {
  const auto tokenizer = Tokenizer::load(model_dir("bert-mini"));
  EXPECT_EQ(tokenizer->kind(), "wordpiece");
  EXPECT_EQ(check_golden(*tokenizer, "bert-mini"), static_cast<int>(golden()["bert-mini"].size()));
}

TEST(TokenizerGolden, BertMiniPairs) {
  const auto tokenizer = Tokenizer::load(model_dir("bert-mini"));
  EXPECT_EQ(check_golden(*tokenizer, "bert-mini:pairs"),
            static_cast<int>(golden()["bert-mini:pairs"].size()));
}

TEST(TokenizerGolden, LlamaMiniSentencePiece) {
  const auto tokenizer = Tokenizer::load(model_dir("llama-mini"));
  EXPECT_EQ(tokenizer->kind(), "sentencepiece");
  EXPECT_EQ(check_golden(*tokenizer, "llama-mini"), static_cast<int>(golden()["llama-mini"].size()));
}

TEST(TokenizerGolden, SpecialTokenIds) {
  const auto bert = Tokenizer::load(model_dir("bert-mini"));
  EXPECT_EQ(bert->pad_id(), 0);
  EXPECT_EQ(bert->unk_id(), 1);
  EXPECT_EQ(bert->cls_id(), 2);
  EXPECT_EQ(bert->sep_id(), 3);
  EXPECT_EQ(bert->mask_id(), 4);
  EXPECT_EQ(bert->bos_id(), -1);
  EXPECT_EQ(bert->model_max_length(), 512);
  EXPECT_EQ(bert->vocab_size(), 8192);
  EXPECT_EQ(bert->num_special_tokens(false), 2);
  EXPECT_EQ(bert->num_special_tokens(true), 3);

  const auto gpt2 = Tokenizer::load(model_dir("gpt2-mini"));
  EXPECT_EQ(gpt2->eos_id(), 0);
  EXPECT_EQ(gpt2->bos_id(), 0);
  EXPECT_EQ(gpt2->pad_id(), -1);
  EXPECT_EQ(gpt2->vocab_size(), 8192);
  EXPECT_EQ(gpt2->num_special_tokens(false), 0);
  EXPECT_EQ(gpt2->token_to_id("<|endoftext|>"), 0);
  EXPECT_EQ(gpt2->id_to_token(0), "<|endoftext|>");

  const auto llama = Tokenizer::load(model_dir("llama-mini"));
  EXPECT_EQ(llama->bos_id(), 1);
  EXPECT_EQ(llama->eos_id(), 2);
  EXPECT_EQ(llama->unk_id(), 0);
  EXPECT_EQ(llama->vocab_size(), 8000);
  EXPECT_EQ(llama->model_max_length(), -1);  // HF's 1e30 "no limit"
  EXPECT_EQ(llama->num_special_tokens(false), 1);
  EXPECT_EQ(llama->token_to_id("<s>"), 1);
  EXPECT_EQ(llama->token_to_id("no such piece"), -1);
}

TEST(TokenizerGolden, NoSpecialTokens) {
  const auto bert = Tokenizer::load(model_dir("bert-mini"));
  const std::vector<int64_t> with = ids_of(golden()["bert-mini"][0]);
  EXPECT_EQ(bert->encode(golden()["bert-mini"][0]["text"].get<std::string>(), false).ids,
            std::vector<int64_t>(with.begin() + 1, with.end() - 1));
  const auto llama = Tokenizer::load(model_dir("llama-mini"));
  const std::vector<int64_t> llama_ids = ids_of(golden()["llama-mini"][0]);
  EXPECT_EQ(llama->encode(golden()["llama-mini"][0]["text"].get<std::string>(), false).ids,
            std::vector<int64_t>(llama_ids.begin() + 1, llama_ids.end()));
}

// --- folder layouts ----------------------------------------------------------------------------------

TEST(TokenizerLoad, VocabJsonAndMergesGiveTheSameIdsAsTokenizerJson) {
  TempDir dir;
  for (const char* name : {"vocab.json", "merges.txt", "tokenizer_config.json"})
    dir.copy(model_dir("gpt2-mini") / name);
  const auto tokenizer = Tokenizer::load(dir.path());
  EXPECT_EQ(tokenizer->kind(), "bpe");
  EXPECT_EQ(check_golden(*tokenizer, "gpt2-mini"), static_cast<int>(golden()["gpt2-mini"].size()));
}

TEST(TokenizerLoad, VocabJsonAndMergesWithoutConfig) {
  TempDir dir;
  for (const char* name : {"vocab.json", "merges.txt"}) dir.copy(model_dir("gpt2-mini") / name);
  const auto tokenizer = Tokenizer::load(dir.path());
  EXPECT_EQ(check_golden(*tokenizer, "gpt2-mini"), static_cast<int>(golden()["gpt2-mini"].size()));
  EXPECT_EQ(tokenizer->eos_id(), 0);
}

TEST(TokenizerLoad, VocabTxtOnlyFolder) {
  TempDir dir;
  dir.copy(model_dir("bert-mini") / "vocab.txt");
  const auto tokenizer = Tokenizer::load(dir.path());  // BertTokenizer's defaults: uncased, [CLS]/[SEP]
  EXPECT_EQ(tokenizer->kind(), "wordpiece");
  EXPECT_EQ(check_golden(*tokenizer, "bert-mini"), static_cast<int>(golden()["bert-mini"].size()));
  EXPECT_EQ(check_golden(*tokenizer, "bert-mini:pairs"),
            static_cast<int>(golden()["bert-mini:pairs"].size()));
  EXPECT_EQ(tokenizer->pad_id(), 0);
}

TEST(TokenizerLoad, CasedConfigKeepsCaseAndAccents) {
  TempDir dir;
  dir.copy(model_dir("bert-mini") / "vocab.txt");
  dir.write("tokenizer_config.json", R"({"do_lower_case": false})");
  // The vocabulary is uncased: kept capitals make "Hello" unknown.
  EXPECT_EQ(Tokenizer::load(dir.path())->encode("Hello", false).tokens, std::vector<std::string>{"[UNK]"});
  EXPECT_EQ(Tokenizer::load(model_dir("bert-mini"))->encode("Hello Café", false).tokens,
            (std::vector<std::string>{"hell", "##o", "ca", "##fe"}));
  // Lowercasing without stripping accents keeps "é", which the vocabulary lacks.
  dir.write("tokenizer_config.json", R"({"do_lower_case": true, "strip_accents": false})");
  EXPECT_EQ(Tokenizer::load(dir.path())->encode("Hello Café", false).tokens,
            (std::vector<std::string>{"hell", "##o", "[UNK]"}));
}

// A small Llama 3 style tokenizer.json: the Llama 3 split regex, ignore_merges, [a, b] merges, and a
// template that adds <|begin_of_text|>.
json llama3_style_tokenizer() {
  // GPT-2's byte-to-character table, for the 256 single-byte tokens.
  std::vector<std::string> byte_chars;
  int shifted = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    const int c = printable ? b : shifted++;
    std::string utf8;
    if (c < 0x80) {
      utf8 += static_cast<char>(c);
    } else {
      utf8 += static_cast<char>(0xC0 | (c >> 6));
      utf8 += static_cast<char>(0x80 | (c & 0x3F));
    }
    byte_chars.push_back(utf8);
  }
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_chars[b]] = b;
  int next = 256;
  for (const char* token : {"He", "Hello", "Ġworld", "123", "45"}) vocab[token] = next++;
  const std::string pattern =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  return json{
      {"added_tokens",
       {{{"id", 300}, {"content", "<|begin_of_text|>"}, {"special", true}, {"normalized", false}}}},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"}, {"pattern", {{"Regex", pattern}}}, {"behavior", "Isolated"}, {"invert", false}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single",
         {{{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 0}}}},
          {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
        {"pair",
         {{{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 0}}}},
          {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
          {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
        {"special_tokens",
         {{"<|begin_of_text|>",
           {{"id", "<|begin_of_text|>"}, {"ids", {300}}, {"tokens", {"<|begin_of_text|>"}}}}}}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model",
       {{"type", "BPE"},
        {"ignore_merges", true},
        {"vocab", vocab},
        {"merges", json::array({json::array({"H", "e"})})}}}};
}

TEST(TokenizerLoad, Llama3StyleTokenizerJson) {
  TempDir dir;
  dir.write("tokenizer.json", llama3_style_tokenizer().dump());
  dir.write("tokenizer_config.json", R"({"bos_token": "<|begin_of_text|>"})");
  const auto tokenizer = Tokenizer::load(dir.path());
  EXPECT_EQ(tokenizer->kind(), "bpe");
  EXPECT_EQ(tokenizer->bos_id(), 300);
  // Numbers split in threes, whole-vocabulary words skip the merges, "Hex" merges only "He".
  const Encoding e = tokenizer->encode("Hello world12345 Hex");
  EXPECT_EQ(e.tokens,
            (std::vector<std::string>{"<|begin_of_text|>", "Hello", "Ġworld", "123", "45", "Ġ", "He", "x"}));
  EXPECT_EQ(tokenizer->decode(e.ids), "Hello world12345 Hex");
  EXPECT_EQ(tokenizer->encode_pair("a", "b").type_ids, (std::vector<int64_t>{0, 0, 1}));

  json unsupported = llama3_style_tokenizer();
  unsupported["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\w+";
  dir.write("tokenizer.json", unsupported.dump());
  EXPECT_THROW(Tokenizer::load(dir.path()), IoError);
}

// Qwen2's regex is Llama 3's with one digit a piece (\p{N} for \p{N}{1,3}); both are recognised by
// the pattern exactly as tokenizer.json writes it.
TEST(TokenizerSplit, Qwen2SplitsDigitsOneByOneWhereLlama3TakesThree) {
  using deltatune::tokenize::SplitRegex;
  const std::string qwen2 =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  ASSERT_EQ(deltatune::tokenize::find_split_regex(qwen2), SplitRegex::Qwen2);
  EXPECT_EQ(deltatune::tokenize::split_regex_pattern(SplitRegex::Qwen2), qwen2);
  const std::u32string text = U"ab 12345 I'LL x\n\ny";
  EXPECT_EQ(deltatune::tokenize::split_with_regex(text, SplitRegex::Qwen2),
            (std::vector<std::u32string>{U"ab", U" ", U"1", U"2", U"3", U"4", U"5", U" I", U"'LL", U" x",
                                         U"\n\n", U"y"}));
  EXPECT_EQ(deltatune::tokenize::split_with_regex(text, SplitRegex::Llama3),
            (std::vector<std::u32string>{U"ab", U" ", U"123", U"45", U" I", U"'LL", U" x", U"\n\n", U"y"}));
}

TEST(TokenizerLoad, EmptyFolderNamesTheFolderAndTheFilesLookedFor) {
  TempDir dir;
  try {
    Tokenizer::load(dir.path());
    FAIL() << "expected IoError";
  } catch (const IoError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(dir.path().string()), std::string::npos) << message;
    for (const char* file : {"tokenizer.json", "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model"}) {
      EXPECT_NE(message.find(file), std::string::npos) << message;
    }
  }
}

TEST(TokenizerLoad, FolderWithoutTokenizerFiles) {
  TempDir dir;
  dir.copy(model_dir("bert-mini") / "config.json");
  EXPECT_THROW(Tokenizer::load(dir.path()), IoError);
  EXPECT_THROW(Tokenizer::load(dir.path() / "missing"), IoError);
}

TEST(TokenizerLoad, MalformedFilesNameTheFile) {
  const auto expect_error_naming = [](const fs::path& dir, const std::string& file) {
    try {
      Tokenizer::load(dir);
      ADD_FAILURE() << "expected IoError for " << file;
    } catch (const IoError& e) {
      EXPECT_NE(std::string(e.what()).find(file), std::string::npos) << e.what();
    }
  };
  {
    TempDir dir;
    dir.write("tokenizer.json", "{\"model\": {\"type\": \"WordPiece\", \"vocab\": ");
    expect_error_naming(dir.path(), "tokenizer.json");
  }
  {
    TempDir dir;
    dir.write("tokenizer.json", R"({"model": {"type": "WordPiece", "vocab": [1, 2]}})");
    expect_error_naming(dir.path(), "tokenizer.json");
  }
  {
    TempDir dir;
    dir.copy(model_dir("gpt2-mini") / "vocab.json");
    dir.write("merges.txt", "#version: 0.2\nĠ t\nthis line has three\n");
    expect_error_naming(dir.path(), "merges.txt");
  }
  {
    TempDir dir;
    dir.write("vocab.json", "[1, 2, 3]");
    dir.write("merges.txt", "");
    expect_error_naming(dir.path(), "vocab.json");
  }
  {
    TempDir dir;
    dir.copy(model_dir("bert-mini") / "vocab.txt");
    dir.write("tokenizer_config.json", "{not json");
    expect_error_naming(dir.path(), "tokenizer_config.json");
  }
  {
    TempDir dir;
    dir.write("tokenizer.model", "this is not a protobuf");
    expect_error_naming(dir.path(), "tokenizer.model");
  }
}

// --- batching ----------------------------------------------------------------------------------------

TEST(TokenizerBatch, PadsToTheLongestRow) {
  const auto bert = Tokenizer::load(model_dir("bert-mini"));
  const std::vector<std::string> texts = {"a short one", "The quick brown fox jumps over the lazy dog.", ""};
  const auto batch = bert->encode_batch(texts, nullptr, 0, true);
  ASSERT_EQ(batch.input_ids.size(), 3u);
  const std::vector<int64_t> longest = ids_of(golden()["bert-mini"][0]);
  EXPECT_EQ(batch.input_ids[1], longest);
  for (size_t i = 0; i < 3; ++i) {
    ASSERT_EQ(batch.input_ids[i].size(), longest.size());
    ASSERT_EQ(batch.attention_mask[i].size(), longest.size());
    ASSERT_EQ(batch.token_type_ids[i].size(), longest.size());
  }
  const std::vector<int64_t> empty_row = {2, 3};
  EXPECT_EQ(std::vector<int64_t>(batch.input_ids[2].begin(), batch.input_ids[2].begin() + 2), empty_row);
  EXPECT_EQ(batch.attention_mask[2][1], 1);
  EXPECT_EQ(batch.attention_mask[2][2], 0);
  EXPECT_EQ(batch.input_ids[2].back(), bert->pad_id());

  const auto unpadded = bert->encode_batch(texts, nullptr, 0, false);
  EXPECT_EQ(unpadded.input_ids[2], empty_row);
}

TEST(TokenizerBatch, TruncatesToMaxLengthKeepingSpecialTokens) {
  const auto bert = Tokenizer::load(model_dir("bert-mini"));
  const std::vector<std::string> texts = {golden()["bert-mini"][0]["text"], "hi"};
  const auto batch = bert->encode_batch(texts, nullptr, 6, true);
  const std::vector<int64_t> full = ids_of(golden()["bert-mini"][0]);
  const std::vector<int64_t> expected = {full[0], full[1], full[2], full[3], full[4], 3};
  EXPECT_EQ(batch.input_ids[0], expected);
  EXPECT_EQ(batch.input_ids[1].size(), 6u);
  EXPECT_EQ((std::vector<int64_t>{1, 1, 1, 0, 0, 0}), batch.attention_mask[1]);
}

TEST(TokenizerBatch, PairsAreTruncatedLongestFirst) {
  const auto bert = Tokenizer::load(model_dir("bert-mini"));
  const std::vector<std::string> a = {"one two three four five six seven eight nine ten", "yes"};
  const std::vector<std::string> b = {"alpha", "one two three four five six seven eight nine ten"};
  const auto batch = bert->encode_batch(a, &b, 10, false);
  // 10 - 3 special = 7: the short text is kept whole, the long one gets the rest.
  const Encoding full_a = bert->encode(a[0], false);
  const Encoding alpha = bert->encode("alpha", false);
  ASSERT_LT(alpha.size(), 4u);
  std::vector<int64_t> expected = {2};
  expected.insert(expected.end(), full_a.ids.begin(), full_a.ids.begin() + (7 - alpha.size()));
  expected.push_back(3);
  expected.insert(expected.end(), alpha.ids.begin(), alpha.ids.end());
  expected.push_back(3);
  EXPECT_EQ(batch.input_ids[0].size(), 10u);
  EXPECT_EQ(batch.input_ids[0], expected);
  EXPECT_EQ(batch.token_type_ids[1], (std::vector<int64_t>{0, 0, 0, 1, 1, 1, 1, 1, 1, 1}));

  // Both longer than half the room: each gets half.
  const std::vector<std::string> long_b = {a[0]};
  const auto halves = bert->encode_batch({a[0]}, &long_b, 9, false);  // room 6: 3 + 3
  EXPECT_EQ(halves.input_ids[0].size(), 9u);
  EXPECT_EQ(halves.token_type_ids[0], (std::vector<int64_t>{0, 0, 0, 0, 0, 1, 1, 1, 1}));
}

TEST(TokenizerBatch, PadsWithEosWhenThereIsNoPadToken) {
  const auto gpt2 = Tokenizer::load(model_dir("gpt2-mini"));
  const auto batch = gpt2->encode_batch({"hello there friend", "hi"}, nullptr, 0, true);
  EXPECT_EQ(batch.input_ids[0].size(), batch.input_ids[1].size());
  EXPECT_EQ(batch.input_ids[1].back(), gpt2->eos_id());
  EXPECT_EQ(batch.attention_mask[1].back(), 0);
}

TEST(TokenizerBatch, MismatchedPairsAreRejected) {
  const auto bert = Tokenizer::load(model_dir("bert-mini"));
  const std::vector<std::string> pairs = {"x"};
  EXPECT_THROW(bert->encode_batch({"a", "b"}, &pairs, 0, true), deltatune::ConfigError);
}

// --- decoding ----------------------------------------------------------------------------------------

TEST(TokenizerDecode, RoundTripsPlainText) {
  const std::string text = "The quick brown fox jumps over the lazy dog. It's 3.14, isn't it?";
  for (const char* name : {"gpt2-mini", "llama-mini"}) {
    const auto tokenizer = Tokenizer::load(model_dir(name));
    EXPECT_EQ(tokenizer->decode(tokenizer->encode(text).ids), text) << name;
  }
  const auto gpt2 = Tokenizer::load(model_dir("gpt2-mini"));
  const std::string spaced = "  two  spaces\tand\na newline ";
  EXPECT_EQ(gpt2->decode(gpt2->encode(spaced).ids), spaced);
}

TEST(TokenizerDecode, ByteLevelRestoresUtf8) {
  const auto gpt2 = Tokenizer::load(model_dir("gpt2-mini"));
  for (const json& entry : golden()["gpt2-mini"]) {
    const std::string text = entry["text"];
    EXPECT_EQ(gpt2->decode(ids_of(entry), /*skip_special_tokens=*/false), text);
  }
}

TEST(TokenizerDecode, SpecialTokensAreSkippedOrKept) {
  const auto gpt2 = Tokenizer::load(model_dir("gpt2-mini"));
  const auto ids = gpt2->encode("hi<|endoftext|>").ids;
  EXPECT_EQ(gpt2->decode(ids, true), "hi");
  EXPECT_EQ(gpt2->decode(ids, false), "hi<|endoftext|>");

  const auto llama = Tokenizer::load(model_dir("llama-mini"));
  const auto llama_ids = llama->encode("Hello world").ids;
  EXPECT_EQ(llama->decode(llama_ids, true), "Hello world");
}

TEST(TokenizerDecode, WordPieceJoinsPieces) {
  const auto bert = Tokenizer::load(model_dir("bert-mini"));
  const std::string text = "hello, world. supercalifragilistic, really?";
  EXPECT_EQ(bert->decode(bert->encode(text).ids), text);
  // Like HF's decoder, the apostrophe of a split contraction keeps its spaces.
  EXPECT_EQ(bert->decode(bert->encode("isn't it").ids), "isn ' t it");
  EXPECT_EQ(bert->decode(bert->encode("Hello World").ids, false), "[CLS] hello world [SEP]");
}

// --- the command line ---------------------------------------------------------------------------------

TEST(TokenizeCommand, PrintsIdsAndTokensForText) {
  const CommandResult result = run_command("tokenize --model '" + model_dir("bert-mini").string() +
                                           "' --text 'The quick brown fox jumps over the lazy dog.'");
  ASSERT_EQ(result.status, 0) << result.output;
  const auto lines = json_lines(result.output);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0]["ids"].get<std::vector<int64_t>>(), ids_of(golden()["bert-mini"][0]));
  EXPECT_EQ(lines[0]["tokens"][0], "[CLS]");
  EXPECT_TRUE(result.output.starts_with("{\"ids\": [2, 141, ")) << result.output;
}

TEST(TokenizeCommand, ReadsTextAndJsonlFiles) {
  TempDir dir;
  std::string plain, jsonl;
  for (const json& entry : golden()["gpt2-mini"]) {
    const std::string text = entry["text"];
    if (text.find_first_of("\r\n") != std::string::npos) continue;  // not representable one per line
    plain += text + "\n";
    jsonl += json{{"text", text}, {"label", 1}}.dump() + "\n";
  }
  dir.write("texts.txt", plain);
  dir.write("texts.jsonl", jsonl);
  for (const char* file : {"texts.txt", "texts.jsonl"}) {
    const CommandResult result = run_command("tokenize --model '" + model_dir("gpt2-mini").string() +
                                             "' --input '" + (dir.path() / file).string() + "'");
    ASSERT_EQ(result.status, 0) << result.output;
    const auto lines = json_lines(result.output);
    size_t line = 0;
    for (const json& entry : golden()["gpt2-mini"]) {
      if (entry["text"].get<std::string>().find_first_of("\r\n") != std::string::npos) continue;
      ASSERT_LT(line, lines.size());
      EXPECT_EQ(lines[line++]["ids"].get<std::vector<int64_t>>(), ids_of(entry))
          << file << ": " << entry["text"];
    }
    EXPECT_EQ(line, lines.size());
  }
}

TEST(TokenizeCommand, PairsAndNoSpecialTokens) {
  const std::string model = "'" + model_dir("bert-mini").string() + "'";
  const CommandResult pair =
      run_command("tokenize --model " + model + " --text 'UPPER lower' --pair 'MiXeD'");
  ASSERT_EQ(pair.status, 0) << pair.output;
  const auto bert = Tokenizer::load(model_dir("bert-mini"));
  EXPECT_EQ(json_lines(pair.output).at(0)["ids"].get<std::vector<int64_t>>(),
            bert->encode_pair("UPPER lower", "MiXeD").ids);

  const CommandResult bare = run_command("tokenize --model " + model + " --text 'hello' --no-special-tokens");
  ASSERT_EQ(bare.status, 0) << bare.output;
  EXPECT_EQ(json_lines(bare.output).at(0)["ids"].get<std::vector<int64_t>>(),
            bert->encode("hello", false).ids);
}

TEST(TokenizeCommand, BadInputExitsWithOneLine) {
  TempDir dir;
  const CommandResult missing = run_command("tokenize --model '" + dir.path().string() + "' --text hi");
  EXPECT_EQ(missing.status, 2);
  EXPECT_NE(missing.output.find("no tokenizer found"), std::string::npos) << missing.output;
  EXPECT_EQ(std::count(missing.output.begin(), missing.output.end(), '\n'), 1) << missing.output;

  dir.write("bad.jsonl", "{\"text\": \"ok\"}\n{\"label\": 1}\n");
  const CommandResult bad = run_command("tokenize --model '" + model_dir("gpt2-mini").string() +
                                        "' --input '" + (dir.path() / "bad.jsonl").string() + "'");
  EXPECT_EQ(bad.status, 2);
  EXPECT_NE(bad.output.find("bad.jsonl:2"), std::string::npos) << bad.output;

  const CommandResult no_text = run_command("tokenize --model '" + model_dir("gpt2-mini").string() + "'");
  EXPECT_EQ(no_text.status, 2) << no_text.output;
}
