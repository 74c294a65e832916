// Datasets: JSONL/CSV/TSV parsing, label maps, errors naming file:line, task folders, few-shot
// sampling, tokenization and batching.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "deltatune/data.h"
#include "deltatune/error.h"
#include "deltatune/tokenizer.h"
#include "temp_dir.h"

namespace fs = std::filesystem;
using namespace deltatune;

namespace {

fs::path temp_dir(const std::string& name) { return test_support::temp_dir("data_" + name); }

fs::path write(const fs::path& file, const std::string& content) {
  std::ofstream(file, std::ios::binary) << content;
  return file;
}

// The IoError's message, or "" when none is thrown.
std::string read_error(const fs::path& file, const data::Fields& fields = {}) {
  try {
    data::read_examples(file, fields);
  } catch (const IoError& e) {
    return e.what();
  }
  return "";
}

const Tokenizer& bert_tokenizer() {
  static auto tok = Tokenizer::load(fs::path(DELTATUNE_ASSETS) / "models" / "bert-mini");
  return *tok;
}

}  // namespace

TEST(Data, ReadsJsonlWithPairsAndLabels) {
  fs::path dir = temp_dir("jsonl");
  fs::path f = write(dir / "a.jsonl",
                     "{\"text\": \"good film\", \"label\": \"pos\"}\r\n"
                     "\n"
                     "{\"text\": \"bank\", \"text_pair\": \"river side\", \"label\": 1, \"extra\": [1]}\n"
                     "{\"text\": \"x\", \"text_pair\": null, \"label\": \"neg\"}");
  auto ex = data::read_examples(f);
  ASSERT_EQ(ex.size(), 3u);
  EXPECT_EQ(ex[0].text, "good film");
  EXPECT_FALSE(ex[0].text_pair.has_value());
  EXPECT_EQ(*ex[0].label, "pos");
  EXPECT_EQ(ex[0].origin, f.string() + ":1");
  EXPECT_EQ(*ex[1].text_pair, "river side");
  EXPECT_EQ(*ex[1].label, "1");  // integers keep their digits
  EXPECT_EQ(ex[1].origin, f.string() + ":3");
  EXPECT_FALSE(ex[2].text_pair.has_value());
}

TEST(Data, CustomFieldNames) {
  fs::path dir = temp_dir("fields");
  fs::path f = write(dir / "a.jsonl", "{\"sentence\": \"hi\", \"y\": \"a\"}\n");
  auto ex = data::read_examples(f, {.text = "sentence", .text_pair = "other", .label = "y"});
  ASSERT_EQ(ex.size(), 1u);
  EXPECT_EQ(ex[0].text, "hi");
  EXPECT_EQ(*ex[0].label, "a");
}

TEST(Data, ReadsCsvWithQuotingAndTsv) {
  fs::path dir = temp_dir("csv");
  fs::path csv = write(dir / "a.csv",
                       "\xEF\xBB\xBFtext,label,text_pair\n"
                       "\"hello, world\",pos,\"she said \"\"hi\"\"\"\n"
                       "\"two\nlines\",neg,b\r\n"
                       "plain,pos,c\n");
  auto ex = data::read_examples(csv);
  ASSERT_EQ(ex.size(), 3u);
  EXPECT_EQ(ex[0].text, "hello, world");
  EXPECT_EQ(*ex[0].text_pair, "she said \"hi\"");
  EXPECT_EQ(ex[1].text, "two\nlines");
  EXPECT_EQ(ex[1].origin, csv.string() + ":3");
  EXPECT_EQ(ex[2].origin, csv.string() + ":5");  // the quoted newline counts as a line
  EXPECT_EQ(*ex[2].label, "pos");

  fs::path tsv = write(dir / "a.tsv", "label\ttext\n1\tit's \"fine\"\n0\tbad\n");
  auto t = data::read_examples(tsv);
  ASSERT_EQ(t.size(), 2u);
  EXPECT_EQ(t[0].text, "it's \"fine\"");  // TSV has no quoting
  EXPECT_EQ(*t[1].label, "0");
}

TEST(Data, ErrorsNameFileAndLine) {
  fs::path dir = temp_dir("errors");
  auto expect_error = [&](const std::string& name, const std::string& content, const std::string& where,
                          const std::string& what) {
    fs::path f = write(dir / name, content);
    std::string msg = read_error(f);
    EXPECT_NE(msg.find(f.string() + where), std::string::npos) << name << ": " << msg;
    EXPECT_NE(msg.find(what), std::string::npos) << name << ": " << msg;
  };
  expect_error("missing_text.jsonl", "{\"text\": \"a\", \"label\": 0}\n{\"label\": 1}\n",
               ":2:", "missing field 'text'");
  expect_error("missing_label.jsonl", "{\"text\": \"a\"}\n", ":1:", "missing field 'label'");
  expect_error("malformed.jsonl", "{\"text\": \"a\", \"label\": 0}\n\n{\"text\": \"b\", \n",
               ":3:", "not valid JSON");
  // nlohmann reports a number beyond double's range as out_of_range, not parse_error (found by fuzzing).
  expect_error("huge_number.jsonl", "{\"text\": \"a\", \"label\": 1e400}\n", ":1:", "not valid JSON");
  expect_error("not_object.jsonl", "[1, 2]\n", ":1:", "expected a JSON object");
  expect_error("float_label.jsonl", "{\"text\": \"a\", \"label\": 0.5}\n", ":1:", "string or an integer");
  expect_error("text_type.jsonl", "{\"text\": 3, \"label\": 0}\n", ":1:", "must be a string");
  expect_error("empty.jsonl", "", ":", "no examples");
  expect_error("blank.jsonl", "\n  \n", ":", "no examples");
  expect_error("columns.csv", "text,label\na,1\nb,1,extra\n", ":3:", "3 columns but the header has 2");
  expect_error("no_column.csv", "sentence,label\na,1\n", ":1:", "no column 'text'");
  expect_error("quote.csv", "text,label\n\"open,1\nb,2\n", ":2:", "never closed");
  expect_error("data.xml", "<a/>", ":", "unknown data format");
  EXPECT_NE(read_error(dir / "absent.jsonl").find("does not exist"), std::string::npos);
}

TEST(Data, LabelMapsStringsSortedAndIntegersAsIds) {
  fs::path dir = temp_dir("labels");
  auto strings = data::read_examples(write(dir / "s.jsonl",
                                           "{\"text\": \"a\", \"label\": \"neutral\"}\n"
                                           "{\"text\": \"b\", \"label\": \"bad\"}\n"
                                           "{\"text\": \"c\", \"label\": \"good\"}\n"
                                           "{\"text\": \"d\", \"label\": \"bad\"}\n"));
  data::LabelMap map = data::LabelMap::from_examples(strings);
  EXPECT_EQ(map.names(), (std::vector<std::string>{"bad", "good", "neutral"}));
  EXPECT_FALSE(map.integer_labels());
  EXPECT_EQ(strings[0].label_id, 2);
  EXPECT_EQ(strings[3].label_id, 0);

  auto ints = data::read_examples(
      write(dir / "i.jsonl", "{\"text\": \"a\", \"label\": 2}\n{\"text\": \"b\", \"label\": \"0\"}\n"));
  data::LabelMap imap = data::LabelMap::from_examples(ints);
  EXPECT_TRUE(imap.integer_labels());
  EXPECT_EQ(imap.size(), 3);  // ids 0..2, id 1 unused but kept so ids stay the labels' values
  EXPECT_EQ(ints[0].label_id, 2);
  EXPECT_EQ(ints[1].label_id, 0);

  // Round trip through labels.json.
  map.save(dir / "labels.json");
  data::LabelMap loaded = data::LabelMap::load(dir / "labels.json");
  EXPECT_EQ(loaded.names(), map.names());
  EXPECT_EQ(*loaded.find("good"), 1);
  EXPECT_FALSE(loaded.find("great").has_value());
}

TEST(Data, UnknownLabelAtEvalTimeIsAnError) {
  fs::path dir = temp_dir("unknown");
  auto train = data::read_examples(write(
      dir / "train.jsonl", "{\"text\": \"a\", \"label\": \"pos\"}\n{\"text\": \"b\", \"label\": \"neg\"}\n"));
  data::LabelMap map = data::LabelMap::from_examples(train);
  fs::path test_file = write(
      dir / "test.jsonl", "{\"text\": \"a\", \"label\": \"pos\"}\n{\"text\": \"c\", \"label\": \"meh\"}\n");
  auto test = data::read_examples(test_file);
  try {
    data::assign_labels(test, map);
    FAIL() << "expected an IoError";
  } catch (const IoError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(test_file.string() + ":2: unknown label 'meh'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("neg, pos"), std::string::npos) << msg;
  }
}

TEST(Data, TaskFolderWithOptionalSplits) {
  fs::path dir = temp_dir("task");
  write(dir / "train.jsonl", "{\"text\": \"a\", \"label\": 0}\n{\"text\": \"b\", \"label\": 1}\n");
  write(dir / "test.csv", "text,label\nc,1\n");
  data::Task task = data::load_task(dir);
  EXPECT_EQ(task.train.size(), 2u);
  EXPECT_TRUE(task.dev.empty());
  EXPECT_EQ(task.test.size(), 1u);
  fs::path empty = temp_dir("task_empty");
  EXPECT_THROW(data::load_task(empty), IoError);
  EXPECT_THROW(data::load_task(empty / "nope"), IoError);
}

TEST(Data, FewShotIsDeterministicAndDisjoint) {
  std::vector<data::Example> train;
  for (int i = 0; i < 1500; ++i)
    train.push_back({.text = "t" + std::to_string(i), .label = std::string("0")});
  auto a = data::few_shot(train, 16, 7), b = data::few_shot(train, 16, 7), c = data::few_shot(train, 16, 8);
  ASSERT_EQ(a.train.size(), 16u);
  EXPECT_EQ(a.dev.size(), 1000u);  // min(1000, rest)
  std::set<std::string> seen;
  for (size_t i = 0; i < a.train.size(); ++i) {
    EXPECT_EQ(a.train[i].text, b.train[i].text);
    seen.insert(a.train[i].text);
  }
  for (const auto& ex : a.dev) EXPECT_TRUE(seen.insert(ex.text).second) << "dev overlaps train: " << ex.text;
  bool differs = false;
  for (size_t i = 0; i < a.train.size(); ++i) differs = differs || a.train[i].text != c.train[i].text;
  EXPECT_TRUE(differs);
  EXPECT_EQ(data::few_shot(std::vector<data::Example>(train.begin(), train.begin() + 40), 16, 1).dev.size(),
            24u);
  EXPECT_THROW(data::few_shot(train, 0, 1), ConfigError);
  EXPECT_THROW(data::few_shot(train, 1500, 1), ConfigError);
}

TEST(Batching, PadsRightWithMaskAndTruncates) {
  std::vector<data::Example> ex = {
      {.text = "hello", .label_id = 1},
      {.text = "a much longer sentence than the first one is", .label_id = 0},
      {.text = "bank", .text_pair = std::string("the side of a river"), .label_id = 1}};
  const Tokenizer& tok = bert_tokenizer();
  data::EncodedDataset enc = data::encode(ex, tok, 8);
  ASSERT_EQ(enc.size(), 3u);
  const size_t short_len = tok.encode("hello").size();
  ASSERT_LT(short_len, 8u);
  EXPECT_EQ(enc.examples[0].ids, tok.encode("hello").ids);
  EXPECT_EQ(enc.examples[1].ids.size(), 8u);  // cut to max_length
  EXPECT_EQ(enc.examples[1].ids.back(), tok.sep_id());
  EXPECT_EQ(enc.examples[2].type_ids.back(), 1);  // the pair's second segment
  EXPECT_EQ(enc.truncated, 2);

  const int64_t pad = data::padding_id(tok);
  data::Batcher batcher(enc, {.batch_size = 3}, pad);
  data::Batch b = batcher.make_batch({0, 1, 2});
  EXPECT_EQ(b.input_ids.shape(), (Shape{3, 8}));
  auto ids = b.input_ids.to_ints(), mask = b.attention_mask.to_ints();
  for (size_t t = 0; t < 8; ++t) {
    EXPECT_EQ(mask[t], t < short_len ? 1 : 0);
    if (t >= short_len) EXPECT_EQ(ids[t], pad);
    EXPECT_EQ(mask[8 + t], 1);
  }
  EXPECT_EQ(b.labels.to_ints(), (std::vector<int64_t>{1, 0, 1}));
  EXPECT_EQ(b.num_tokens, int64_t(short_len) + 8 + 8);
}

TEST(Batching, ShufflesPerEpochDeterministically) {
  std::vector<data::Example> ex;
  for (int i = 0; i < 50; ++i)
    ex.push_back({.text = std::string(size_t(1 + i % 7), 'a') + " b", .label_id = i % 2});
  data::EncodedDataset enc = data::encode(ex, bert_tokenizer(), 32);
  data::Batcher batcher(enc, {.batch_size = 8, .shuffle = true, .seed = 3}, 0);
  EXPECT_EQ(batcher.batches_per_epoch(), 7);
  auto e0 = batcher.epoch_order(0), e0_again = batcher.epoch_order(0), e1 = batcher.epoch_order(1);
  EXPECT_EQ(e0, e0_again);
  EXPECT_NE(e0, e1);
  std::multiset<size_t> all;
  for (auto& b : e1) all.insert(b.begin(), b.end());
  EXPECT_EQ(all.size(), 50u);
  EXPECT_EQ(std::set<size_t>(all.begin(), all.end()).size(), 50u);  // each example exactly once
  EXPECT_EQ(e1.back().size(), 2u);                                  // the last batch keeps the remainder

  // Length bucketing pads less, and still covers every example once.
  data::Batcher bucketed(enc, {.batch_size = 8, .shuffle = true, .seed = 3, .bucket_by_length = true}, 0);
  auto padding = [&](const data::Batcher& bt) {
    int64_t padded = 0;
    for (auto& idx : bt.epoch_order(0)) {
      data::Batch b = bt.make_batch(idx);
      padded += b.input_ids.numel() - b.num_tokens;
    }
    return padded;
  };
  EXPECT_LT(padding(bucketed), padding(batcher));
}
