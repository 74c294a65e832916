#pragma once
// The one way to load a base model plus a saved delta: every command (train, eval, predict, generate,
// merge, forward, inspect, gates, combine), the workflow and the sweep come through here.
//
//   LoadRequest r;
//   r.model_dir = "assets/models/bert-mini";
//   r.delta = "runs/demo/delta";         // whatever `train` wrote (or a PEFT adapter)
//   r.classifier = true;                 // labels.json beside the delta names the classes
//   LoadedModel m = load_with_delta(r);  // the delta's head, its weights applied, ready to run
//
// The saved delta decides the head (and the label count) the base loads with, unless the request names
// one. A delta is attached; a `full` or `head` run's saved tensors replace the model's. The delta is
// checked against the model folder before the model is loaded (a head of another architecture may not
// exist at all).
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "deltatune/data.h"
#include "deltatune/delta.h"
#include "deltatune/model.h"
#include "deltatune/quantize.h"
#include "deltatune/tokenizer.h"

namespace deltatune {

// What a saved delta put on a model: the deltas attached (none for a full or head run), and the model
// tensors it trained (its head, a full run's weights), which keep their precision under --bf16.
struct AppliedDelta {
  std::vector<std::unique_ptr<delta::Delta>> deltas;
  std::string method;                         // "lora", ..., "full", "head"
  std::vector<std::string> model_parameters;  // model tensors it trained
};

struct LoadRequest {
  std::filesystem::path model_dir;
  std::filesystem::path delta;   // a folder `train` (or PEFT) wrote; empty: the base alone
  std::optional<HeadKind> head;  // unset: the delta's head, else the model config's
  // A classifier: a sequence-classification head sized by the classes, which come from labels.json
  // beside the delta (in it or its run folder), or from `labels` when there is no delta (a baseline
  // with a new, untrained head).
  bool classifier = false;
  const data::LabelMap* labels = nullptr;
  bool tokenizer = false;  // also load the model folder's tokenizer
  // A quantised base: the body's linear weights stored quantised as they are read
  // (LoadOptions::quantize), unless the delta trained them (a full run, last-layers). use_quantized
  // (or use_precision) afterwards quantises what is left frozen (an untied LM head).
  std::optional<QuantFormat> quantize;
};

struct LoadedModel {
  std::unique_ptr<TransformerModel> model;
  std::unique_ptr<Tokenizer> tokenizer;  // when asked for
  AppliedDelta trained;                  // empty without a delta
  data::LabelMap labels;                 // a classifier's classes
  nlohmann::json train_config;           // the run's train_config.json beside the delta, else null
};

// Whether `model` names something load_with_delta can load: a model folder, or a GGUF model file
// (llama.cpp's; deltatune/gguf_model.h), which every command accepts where it takes a model folder.
bool model_exists(const std::filesystem::path& model);

// Loads model_dir with the head the delta (or the request) needs and applies the delta.
LoadedModel load_with_delta(const LoadRequest& request);

// The step load_with_delta ends with, for a model already loaded with the delta's head: reads a
// delta folder in either format and applies it to `model`.
AppliedDelta apply_saved_delta(const std::filesystem::path& delta_dir, TransformerModel& model);

// Mixed precision for a loaded, frozen model (`--bf16`): bfloat16 products and the frozen base weights
// stored in bfloat16 where the CPU has AVX-512 BF16 (a note on stderr says which). `trained` names the
// model tensors that learnt (AppliedDelta::model_parameters): they keep their precision.
void use_bf16(TransformerModel& model, const std::vector<std::string>& trained = {});

// A quantised frozen base (`--quantize nf4|nf4-dq|int8|q8_0|q4_0`, QLoRA's recipe on the CPU): every frozen
// linear weight (an untied LM head included) stored once in `format` (deltatune/quantize.h) and
// multiplied through ops::quantized_linear; deltas, heads, norms, embeddings and the optimizer stay
// float32. `trained` as for use_bf16. A note on stderr says how many matrices and how many bytes.
void use_quantized(TransformerModel& model, QuantFormat format, const std::vector<std::string>& trained = {});

// The precision settings a command applies to its loaded, frozen model: quantisation first, then bf16.
void use_precision(TransformerModel& model, bool bf16, std::optional<QuantFormat> quantize,
                   const std::vector<std::string>& trained = {});

}  // namespace deltatune
