#pragma once
// Loading a model (and, once deltas exist, a delta over it) the same way in every command.
#include <memory>
#include <string>

#include "deltatune/delta.h"
#include "deltatune/model.h"
#include "deltatune/visualise.h"

namespace deltatune::cli {

struct LoadedModel {
  std::unique_ptr<TransformerModel> model;
  std::vector<std::unique_ptr<delta::Delta>> deltas;  // attached to model
  TreeOptions tree_options;    // delta modules to mark in a tree
  std::string trainable_line;  // "trainable N of M (x%)" with a delta attached
};

// head: "" (from config), causal-lm, masked-lm, sequence-classification, none.
HeadKind parse_head(const std::string& head);
LoadedModel load_model(const std::string& model_dir, const std::string& head = "", const std::string& delta = "");

// --bf16 in the commands that run a model (train, eval, predict): bfloat16 products
// (ops::MatmulPrecision::Bf16) and the frozen weights stored in bfloat16 where the CPU has AVX-512
// BF16; elsewhere a note and float32. Call it once the model is frozen (deltas attached).
void use_bf16(TransformerModel& model);
inline const char* kBf16Help =
    "Mixed precision where the CPU has AVX-512 BF16: linear products in bfloat16 with float32 sums, frozen "
    "weights stored in bfloat16 (half their memory); about twice the speed. Default: float32, as PyTorch";

}  // namespace deltatune::cli
