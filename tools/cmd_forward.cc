// deltatune forward --model DIR [--delta DIR] --input FILE.json --output FILE.safetensors
// FILE.json: {"input_ids": [[...], ...], "attention_mask": [[...], ...]} (mask optional), as
// `deltatune tokenize --output FILE.json` writes it (any name but .jsonl/.csv/.tsv is read so). Or texts,
// tokenized with the model's tokenizer and padded into one batch: --text STR (repeatable) and/or --input
// FILE.jsonl|.csv|.tsv ("text", optional "text_pair"). Writes float32 `logits` and `last_hidden_state`.
// --mixed-delta NAME=DIR (repeated) instead of --delta: each row uses the delta its "deltas" entry in
// FILE.json names (null: the base), all in one pass (see include/deltatune/mixed_batch.h).
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "command.h"
#include "deltatune/autograd.h"
#include "deltatune/data.h"
#include "deltatune/safetensors.h"
#include "deltatune/tokenizer.h"
#include "mixed_forward.h"
#include "model_loading.h"

namespace {
using deltatune::Tensor;
using deltatune::cli::ExitError;

Tensor matrix(const nlohmann::json& rows, const std::string& what, const std::string& file) {
  if (!rows.is_array() || rows.empty())
    throw ExitError{file + ": '" + what + "' must be a non-empty list of lists"};
  const size_t length = rows[0].is_array() ? rows[0].size() : 0;
  std::vector<int64_t> values;
  for (size_t b = 0; b < rows.size(); ++b) {
    if (!rows[b].is_array() || rows[b].size() != length || length == 0)
      throw ExitError{file + ": '" + what + "' row " + std::to_string(b) + " must be a list of " +
                      std::to_string(length) + " integers (pad rows to one length)"};
    for (const auto& v : rows[b]) {
      if (!v.is_number_integer())
        throw ExitError{file + ": '" + what + "' row " + std::to_string(b) + " holds a non-integer"};
      values.push_back(v.get<int64_t>());
    }
  }
  return Tensor::from_ints(values, {int64_t(rows.size()), int64_t(length)});
}

// Reads FILE.json's token ids (and mask, token types) into `mi`; returns the whole JSON object.
nlohmann::json read_ids_file(const std::string& input, deltatune::ModelInput& mi) {
  std::ifstream in(input);
  if (!in) throw ExitError{"cannot read input file '" + input + "'"};
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const std::exception& e) {
    throw ExitError{input + ": not valid JSON: " + e.what()};
  }
  if (!j.is_object() || !j.contains("input_ids"))
    throw ExitError{input + ": needs an object with 'input_ids' (texts go in a .jsonl file, or use --text)"};
  mi.input_ids = matrix(j["input_ids"], "input_ids", input);
  if (j.contains("attention_mask") && !j["attention_mask"].is_null()) {
    mi.attention_mask = matrix(j["attention_mask"], "attention_mask", input);
    if (mi.attention_mask.shape() != mi.input_ids.shape())
      throw ExitError{input + ": attention_mask " + deltatune::shape_str(mi.attention_mask.shape()) +
                      " does not match input_ids " + deltatune::shape_str(mi.input_ids.shape())};
  }
  if (j.contains("token_type_ids")) mi.token_type_ids = matrix(j["token_type_ids"], "token_type_ids", input);
  return j;
}

Tensor rows_tensor(const std::vector<std::vector<int64_t>>& rows) {
  std::vector<int64_t> values;
  for (const auto& row : rows) values.insert(values.end(), row.begin(), row.end());
  return Tensor::from_ints(values, {int64_t(rows.size()), int64_t(rows.empty() ? 0 : rows[0].size())});
}

// Texts from a .jsonl/.csv/.tsv file and then --text, tokenized with the model's tokenizer into one
// batch padded on the right (special tokens added, as the model was trained with them).
deltatune::ModelInput encode_texts(const std::string& model_dir, const std::string& file,
                                   const std::vector<std::string>& texts) {
  std::vector<deltatune::data::Example> examples;
  if (!file.empty()) examples = deltatune::data::read_examples(file, {}, /*labels_optional=*/true);
  for (const std::string& text : texts) examples.push_back({text, std::nullopt, std::nullopt, -1, "--text"});
  std::vector<std::string> firsts, seconds;
  for (const auto& ex : examples) {
    firsts.push_back(ex.text);
    if (ex.text_pair) seconds.push_back(*ex.text_pair);
  }
  if (!seconds.empty() && seconds.size() != firsts.size())
    throw ExitError{"give every text a text_pair or none (one batch is all single texts or all pairs)"};
  const auto tokenizer = deltatune::Tokenizer::load(model_dir);
  const deltatune::BatchEncoding batch =
      tokenizer->encode_batch(firsts, seconds.empty() ? nullptr : &seconds, 0, true);
  for (size_t row = 0; row < batch.input_ids.size(); ++row)
    if (batch.input_ids[row].empty()) throw ExitError{examples[row].origin + ": the text gives no tokens"};
  deltatune::ModelInput mi;
  mi.input_ids = rows_tensor(batch.input_ids);
  mi.attention_mask = rows_tensor(batch.attention_mask);
  if (!seconds.empty()) mi.token_type_ids = rows_tensor(batch.token_type_ids);
  return mi;
}

void setup(CLI::App& app) {
  auto model_dir = std::make_shared<std::string>(), delta = std::make_shared<std::string>();
  auto input = std::make_shared<std::string>(), output = std::make_shared<std::string>();
  auto head = std::make_shared<std::string>();
  auto mixed = std::make_shared<std::vector<std::string>>(),
       texts = std::make_shared<std::vector<std::string>>();
  app.add_option("--model", *model_dir, "Hugging Face model folder")->required();
  app.add_option("--delta", *delta, "A delta folder (ours or PEFT's adapter format) to apply");
  app.add_option(
      "--input", *input,
      "FILE.json of ids {\"input_ids\": [[...]], \"attention_mask\": [[...]]} (`tokenize --output`), "
      "or texts: FILE.jsonl/.csv/.tsv with \"text\" (optional \"text_pair\")");
  app.add_option("--text", *texts, "A text to run (repeatable; tokenized with the model's tokenizer)");
  app.add_option("--output,--out", *output, "safetensors file to write (logits, last_hidden_state; float32)")
      ->required();
  app.add_option("--head", *head, "Task head (default: from the config or the delta)");
  app.add_option(
      "--mixed-delta", *mixed,
      "NAME=DIR, repeatable: deltas for a mixed batch; FILE.json's \"deltas\" names each row's (null: base)");
  deltatune::cli::add_threads_option(app);
  app.callback([=] {
    if (input->empty() && texts->empty()) throw ExitError{"forward: give --input FILE or --text STR"};
    const std::string extension = std::filesystem::path(*input).extension().string();
    const bool ids_file =
        !input->empty() && extension != ".jsonl" && extension != ".csv" && extension != ".tsv";
    if (ids_file && !texts->empty())
      throw ExitError{"forward: --text goes with a file of texts (.jsonl/.csv/.tsv), not with ids in " +
                      *input};
    if (!mixed->empty() && !ids_file)
      throw ExitError{
          "--mixed-delta takes each row's delta from the \"deltas\" of an ids file (--input FILE.json)"};
    if (!mixed->empty() && !delta->empty()) throw ExitError{"use --delta or --mixed-delta, not both"};
    deltatune::ModelInput mi;
    nlohmann::json j;
    if (ids_file)
      j = read_ids_file(*input, mi);
    else
      mi = encode_texts(*model_dir, *input, *texts);
    deltatune::ModelOutput out;
    if (!mixed->empty()) {
      out = deltatune::cli::mixed_forward(*model_dir, *head, *mixed, j.value("deltas", nlohmann::json()), mi,
                                          *input);
    } else {
      auto loaded = deltatune::cli::load_model(*model_dir, *head, *delta);
      const int64_t vocab = loaded.model->config.vocab_size;
      for (int64_t id : mi.input_ids.to_ints())
        if (id < 0 || id >= vocab)
          throw ExitError{(ids_file ? *input : std::string("the tokenizer")) + ": token id " +
                          std::to_string(id) + " is outside the vocabulary (size " + std::to_string(vocab) +
                          ")"};
      deltatune::NoGradGuard no_grad;
      out = loaded.model->forward(mi);
    }
    std::map<std::string, Tensor> tensors{{"last_hidden_state", out.last_hidden_state.contiguous()}};
    if (out.logits.defined()) tensors["logits"] = out.logits.contiguous();
    deltatune::write_safetensors(*output, tensors);
  });
}
deltatune::cli::Register reg("forward",
                             "Run a forward pass on token ids or texts and write logits and hidden states",
                             setup);
}  // namespace
