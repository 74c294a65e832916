// `deltatune tokenize`: the ids and tokens a model's tokenizer gives, one JSON object per text:
//   deltatune tokenize --model DIR --text "Hello world"         -> {"ids": [...], "tokens": [...]}
//   deltatune tokenize --model DIR --input texts.txt             (one text per line)
//   deltatune tokenize --model DIR --input data.jsonl            (objects with "text", optional "text_pair")
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "command.h"
#include "deltatune/error.h"
#include "deltatune/tokenizer.h"

namespace {

using deltatune::Encoding;
using deltatune::IoError;
using deltatune::Tokenizer;
using nlohmann::json;

struct Options {
  std::string model;
  std::string text;
  std::string input;
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
    json object;
    try {
      object = json::parse(line);
    } catch (const json::parse_error& e) {
      throw IoError(where + ": invalid JSON: " + e.what());
    }
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

void run(const Options& options, bool has_pair) {
  const std::unique_ptr<Tokenizer> tokenizer = Tokenizer::load(options.model);
  const bool special = !options.no_special_tokens;
  std::vector<Item> items;
  if (options.input.empty()) {
    items.push_back({options.text, has_pair ? std::optional(options.pair) : std::nullopt});
  } else {
    if (has_pair)
      throw deltatune::cli::ExitError{"--pair goes with --text; in a .jsonl --input use \"text_pair\""};
    items = read_items(options.input);
  }
  for (const Item& item : items) {
    print(item.pair ? tokenizer->encode_pair(item.text, *item.pair, special)
                    : tokenizer->encode(item.text, special));
  }
}

void setup(CLI::App& app) {
  auto options = std::make_shared<Options>();
  app.add_option("--model", options->model, "Model folder with the tokenizer files")->required();
  auto* text = app.add_option("--text", options->text, "The text to tokenize");
  auto* input =
      app.add_option("--input", options->input, "A file of texts: one per line, or .jsonl with \"text\"");
  text->excludes(input);
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
