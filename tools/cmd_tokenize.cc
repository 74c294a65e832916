// `deltatune tokenize`: the ids and tokens a model's tokenizer gives, one JSON object per text:
//   deltatune tokenize --model DIR --text "Hello world"         -> {"ids": [...], "tokens": [...]}
//   deltatune tokenize --model DIR --input texts.txt             (one text per line)
//   deltatune tokenize --model DIR --input data.jsonl            (objects with "text", optional "text_pair")
//   deltatune tokenize --model DIR --text A --text B --output ids.json
//       writes {"input_ids": [[...], ...], "attention_mask": [[...], ...]} (rows padded on the right; plus
//       "token_type_ids" for pairs): the file `deltatune forward --input` reads.
#include <algorithm>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "command.h"
#include "deltatune/error.h"
#include "deltatune/json_file.h"
#include "deltatune/tokenizer.h"
#include "train/files.h"

namespace {

using deltatune::Encoding;
using deltatune::IoError;
using deltatune::Tokenizer;
using nlohmann::json;

struct Options {
  std::string model;
  std::vector<std::string> texts;
  std::string input;
  std::string output;
  std::string pair;
  bool no_special_tokens = false;
};

struct Item {
  std::string text;
  std::optional<std::string> pair;
};

// Written with Python's json.dumps spacing ({"ids": [1, 2], ...}) so the lines read like HF's tools'.
void print(const Encoding& encoding) {
  std::string line = "{\"ids\": [";
  for (size_t i = 0; i < encoding.ids.size(); ++i)
    line += (i > 0 ? ", " : "") + std::to_string(encoding.ids[i]);
  line += "], \"tokens\": [";
  for (size_t i = 0; i < encoding.tokens.size(); ++i) {
    line +=
        (i > 0 ? ", " : "") + json(encoding.tokens[i]).dump(-1, ' ', false, json::error_handler_t::replace);
  }
  std::cout << line << "]}\n";
}

// One text per line, or one JSON object per line for a .jsonl file.
std::vector<Item> read_items(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(path + ": cannot open file");
  const bool jsonl = path.ends_with(".jsonl");
  std::vector<Item> items;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!jsonl) {
      items.push_back({line, std::nullopt});
      continue;
    }
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(number);
    const json object = deltatune::parse_json(line, where);
    if (!object.is_object() || !object.contains("text") || !object["text"].is_string()) {
      throw IoError(where + ": expected an object with a string \"text\"");
    }
    Item item{object["text"].get<std::string>(), std::nullopt};
    if (object.contains("text_pair") && !object["text_pair"].is_null()) {
      if (!object["text_pair"].is_string()) throw IoError(where + ": \"text_pair\" is not a string");
      item.pair = object["text_pair"].get<std::string>();
    }
    items.push_back(std::move(item));
  }
  return items;
}

// The batch `forward --input` reads: rows padded on the right to the longest, as Tokenizer::encode_batch
// pads (pad token, else end-of-sequence, else 0), with the mask marking the real tokens.
json forward_input(const std::vector<Encoding>& encodings, const Tokenizer& tokenizer, bool pairs) {
  const int64_t pad = tokenizer.pad_id() >= 0 ? tokenizer.pad_id() : std::max<int64_t>(tokenizer.eos_id(), 0);
  size_t longest = 0;
  for (const Encoding& e : encodings) longest = std::max(longest, e.size());
  json ids = json::array(), mask = json::array(), types = json::array();
  for (const Encoding& e : encodings) {
    const size_t padding = longest - e.size();
    std::vector<int64_t> row = e.ids, ones(e.size(), 1), type_row = e.type_ids;
    row.insert(row.end(), padding, pad);
    ones.insert(ones.end(), padding, 0);
    type_row.insert(type_row.end(), padding, 0);
    ids.push_back(row);
    mask.push_back(ones);
    types.push_back(type_row);
  }
  json batch = {{"input_ids", ids}, {"attention_mask", mask}};
  if (pairs) batch["token_type_ids"] = types;
  return batch;
}

void run(const Options& options, bool has_pair) {
  const bool special = !options.no_special_tokens;
  std::vector<Item> items;
  if (has_pair && (options.texts.size() != 1 || !options.input.empty()))
    throw deltatune::cli::ExitError{"--pair goes with one --text; in a .jsonl --input use \"text_pair\""};
  if (!options.input.empty()) items = read_items(options.input);
  for (const std::string& text : options.texts)
    items.push_back({text, has_pair ? std::optional(options.pair) : std::nullopt});
  const std::unique_ptr<Tokenizer> tokenizer = Tokenizer::load(options.model);
  std::vector<Encoding> encodings;
  bool pairs = false;
  for (const Item& item : items) {
    encodings.push_back(item.pair ? tokenizer->encode_pair(item.text, *item.pair, special)
                                  : tokenizer->encode(item.text, special));
    pairs = pairs || item.pair.has_value();
  }
  if (options.output.empty()) {
    for (const Encoding& encoding : encodings) print(encoding);
    return;
  }
  if (encodings.empty()) throw deltatune::cli::ExitError{options.input + ": no texts to write"};
  deltatune::train_detail::write_file_atomic(options.output,
                                             forward_input(encodings, *tokenizer, pairs).dump() + "\n");
}

void setup(CLI::App& app) {
  auto options = std::make_shared<Options>();
  app.add_option("--model", options->model, "Model folder with the tokenizer files")->required();
  auto* text = app.add_option("--text", options->texts, "A text to tokenize (repeatable)");
  auto* input =
      app.add_option("--input", options->input, "A file of texts: one per line, or .jsonl with \"text\"");
  app.add_option("--output,--out", options->output,
                 "Write one padded batch as JSON {\"input_ids\", \"attention_mask\"} for `forward --input`");
  auto* pair = app.add_option("--pair", options->pair, "A second text, encoded as a pair with --text");
  app.add_flag("--no-special-tokens", options->no_special_tokens, "Do not add [CLS]/[SEP], BOS or EOS");
  app.callback([options, text, input, pair] {
    if (text->count() == 0 && input->count() == 0) {
      throw deltatune::cli::ExitError{"tokenize: give --text STR or --input FILE"};
    }
    run(*options, pair->count() > 0);
  });
}

deltatune::cli::Register reg("tokenize", "Tokenize text with a model's tokenizer (one JSON object per text)",
                             setup);

}  // namespace
