// deltatune forward --model DIR [--delta DIR] --input FILE.json --output FILE.safetensors
// FILE.json: {"input_ids": [[...], ...], "attention_mask": [[...], ...]} (mask optional).
// Writes float32 `logits` and `last_hidden_state`.
// --mixed-delta NAME=DIR (repeated) instead of --delta: each row uses the delta its "deltas" entry in
// FILE.json names (null: the base), all in one pass (see include/deltatune/mixed_batch.h).
#include <fstream>
#include <nlohmann/json.hpp>

#include "command.h"
#include "deltatune/autograd.h"
#include "deltatune/safetensors.h"
#include "mixed_forward.h"
#include "model_loading.h"

namespace {
using deltatune::Tensor;
using deltatune::cli::ExitError;

Tensor matrix(const nlohmann::json& rows, const std::string& what, const std::string& file) {
  if (!rows.is_array() || rows.empty()) throw ExitError{file + ": '" + what + "' must be a non-empty list of lists"};
  const size_t length = rows[0].is_array() ? rows[0].size() : 0;
  std::vector<int64_t> values;
  for (size_t b = 0; b < rows.size(); ++b) {
    if (!rows[b].is_array() || rows[b].size() != length || length == 0)
      throw ExitError{file + ": '" + what + "' row " + std::to_string(b) + " must be a list of " +
                      std::to_string(length) + " integers (pad rows to one length)"};
    for (const auto& v : rows[b]) {
      if (!v.is_number_integer()) throw ExitError{file + ": '" + what + "' row " + std::to_string(b) + " holds a non-integer"};
      values.push_back(v.get<int64_t>());
    }
  }
  return Tensor::from_ints(values, {int64_t(rows.size()), int64_t(length)});
}

void setup(CLI::App& app) {
  auto model_dir = std::make_shared<std::string>(), delta = std::make_shared<std::string>();
  auto input = std::make_shared<std::string>(), output = std::make_shared<std::string>();
  auto head = std::make_shared<std::string>();
  auto mixed = std::make_shared<std::vector<std::string>>();
  app.add_option("--model", *model_dir, "Hugging Face model folder")->required();
  app.add_option("--delta", *delta, "A delta folder (ours or PEFT's adapter format) to apply");
  app.add_option("--input", *input, "JSON file: {\"input_ids\": [[...]], \"attention_mask\": [[...]]}")->required();
  app.add_option("--output", *output, "safetensors file to write (logits, last_hidden_state; float32)")->required();
  app.add_option("--head", *head, "Task head (default: from the config or the delta)");
  app.add_option("--mixed-delta", *mixed,
                 "NAME=DIR, repeatable: deltas for a mixed batch; FILE.json's \"deltas\" names each row's (null: base)");
  app.callback([=] {
    std::ifstream in(*input);
    if (!in) throw ExitError{"cannot read input file '" + *input + "'"};
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(in);
    } catch (const std::exception& e) {
      throw ExitError{*input + ": not valid JSON: " + e.what()};
    }
    if (!j.is_object() || !j.contains("input_ids")) throw ExitError{*input + ": needs an object with 'input_ids'"};
    deltatune::ModelInput mi;
    mi.input_ids = matrix(j["input_ids"], "input_ids", *input);
    if (j.contains("attention_mask") && !j["attention_mask"].is_null()) {
      mi.attention_mask = matrix(j["attention_mask"], "attention_mask", *input);
      if (mi.attention_mask.shape() != mi.input_ids.shape())
        throw ExitError{*input + ": attention_mask " + deltatune::shape_str(mi.attention_mask.shape()) +
                        " does not match input_ids " + deltatune::shape_str(mi.input_ids.shape())};
    }
    if (j.contains("token_type_ids")) mi.token_type_ids = matrix(j["token_type_ids"], "token_type_ids", *input);
    if (!mixed->empty() && !delta->empty()) throw ExitError{"use --delta or --mixed-delta, not both"};
    deltatune::ModelOutput out;
    if (!mixed->empty()) {
      out = deltatune::cli::mixed_forward(*model_dir, *head, *mixed, j.value("deltas", nlohmann::json()), mi, *input);
    } else {
    auto loaded = deltatune::cli::load_model(*model_dir, *head, *delta);
    const int64_t vocab = loaded.model->config.vocab_size;
    for (int64_t id : mi.input_ids.to_ints())
      if (id < 0 || id >= vocab)
        throw ExitError{*input + ": token id " + std::to_string(id) + " is outside the vocabulary (size " + std::to_string(vocab) + ")"};
    deltatune::NoGradGuard no_grad;
    out = loaded.model->forward(mi);
    }
    std::map<std::string, Tensor> tensors{{"last_hidden_state", out.last_hidden_state.contiguous()}};
    if (out.logits.defined()) tensors["logits"] = out.logits.contiguous();
    deltatune::write_safetensors(*output, tensors);
  });
}
deltatune::cli::Register reg("forward", "Run a forward pass on token ids and write logits and hidden states", setup);
}  // namespace
