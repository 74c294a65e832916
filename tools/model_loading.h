#pragma once
// --model / --head / --delta as the commands that show or run a model take them (forward, inspect,
// generate, merge, combine): argument glue over the one loader (deltatune/loading.h), plus what they
// print (the delta's modules marked in a tree, the trainable count).
#include <memory>
#include <optional>
#include <string>

#include "deltatune/delta.h"
#include "deltatune/model.h"
#include "deltatune/visualise.h"

namespace deltatune::cli {

struct LoadedModel {
  std::unique_ptr<TransformerModel> model;
  std::vector<std::unique_ptr<delta::Delta>> deltas;  // attached to model (none for a full or head run)
  std::vector<std::string> trained_parameters;        // model tensors the saved delta trained (or replaced)
  TreeOptions tree_options;                           // delta modules to mark in a tree
  std::string trainable_line;                         // "trainable N of M (x%)" with a delta attached
};

// head: "" (from config), causal-lm, masked-lm, sequence-classification, none.
HeadKind parse_head(const std::string& head);
// delta: "" (none), a delta config (JSON file: a fresh delta, attached as it would train), or a folder
// `train` (or PEFT) wrote, whatever the method, loaded by load_with_delta: a delta is attached; a full
// or head run's weights replace the model's (no delta attached).
// `quantize`: the base quantised as it loads (LoadRequest::quantize); the caller's use_precision then
// quantises what is left frozen.
LoadedModel load_model(const std::string& model_dir, const std::string& head = "",
                       const std::string& delta = "", std::optional<QuantFormat> quantize = std::nullopt);

// --bf16's help (the commands that run a model: train, eval, predict; deltatune::use_bf16 does it).
inline const char* kBf16Help =
    "Mixed precision where the CPU has AVX-512 BF16: linear products in bfloat16 with float32 sums, frozen "
    "weights stored in bfloat16 (half their memory); about twice the speed. Default: float32, as PyTorch";

}  // namespace deltatune::cli
