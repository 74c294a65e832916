#pragma once
// Deltas: small trainable modules attached to a frozen model by name, without touching model code.
// A delta is a config (JSON), its own named parameters, and attach/detach. Several may be attached at
// once (detach in reverse order or by name) and each can be switched off.
//
// Targets are chosen by name, as PEFT and OpenDelta do: a list matches exact module paths or dotted
// suffixes ("query" matches "bert.encoder.layer.0.attention.self.query"); a string is a full regex;
// roles ("attn.q", "ffn.down", ...) map to each architecture's own names; `exclude` removes matches;
// `layers` keeps only those block indices (PEFT's layers_to_transform).
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "deltatune/model.h"

namespace deltatune::delta {

struct TargetSpec {
  std::vector<std::string> names;  // exact paths, dotted suffixes, or roles
  std::string regex;               // used instead of names when set (full match)
  std::vector<std::string> exclude;
  std::vector<int64_t> layers;  // empty: every layer
  static TargetSpec from_json(const nlohmann::json& targets, const nlohmann::json& exclude = nullptr,
                              const nlohmann::json& layers = nullptr);
  nlohmann::json names_json() const;  // list or regex string, PEFT's target_modules form
};

// Module paths in `model` matched by `spec` (Linear layers only when linear_only). Throws ConfigError
// listing candidate names when nothing matches.
std::vector<std::string> resolve_targets(TransformerModel& model, const TargetSpec& spec,
                                         bool linear_only = true);
// PEFT's rank_pattern/alpha_pattern lookup: the value of the first key that matches `path` as a
// dotted-suffix regex ("(.*\\.)?(KEY)$"), if any.
std::optional<nlohmann::json> pattern_lookup(const nlohmann::json& patterns, const std::string& path);
// The block index of a module path ("bert.encoder.layer.3.attention..." -> 3), or -1.
int64_t layer_index(const TransformerModel& model, const std::string& path);

class Delta {
 public:
  virtual ~Delta() = default;
  virtual std::string method() const = 0;  // "lora", "ia3", "prefix", ...
  // Creates parameters (seeded) for `model` and installs hooks. Attaching twice is an error.
  virtual void attach(TransformerModel& model) = 0;
  // Removes the hooks; parameters are kept (re-attachable).
  virtual void detach() = 0;
  virtual void set_enabled(bool on) = 0;
  // The delta's parameters by name: PEFT's key names without "base_model.model." where one exists.
  virtual std::vector<std::pair<std::string, Tensor>> parameters() = 0;
  // Replaces parameter values (after attach): unknown names or shape mismatches throw, naming the key.
  void load_parameters(const std::map<std::string, Tensor>& values);
  // Our config format (delta_config.json): method, targets, hyperparameters.
  virtual nlohmann::json config() const = 0;
  // What a save writes: parameters() and config() unless a method saves a reduced form (prefix
  // tuning's reparameterisation MLP is saved collapsed to its output, as PEFT does).
  virtual std::vector<std::pair<std::string, Tensor>> saved_parameters() { return parameters(); }
  virtual nlohmann::json saved_config() const { return config(); }
  // Reading a save back (after attach): the names of the tensors a save holds, and loading them.
  // Methods that save a sparse form (diff pruning, masks) override both; the rest load parameters().
  virtual std::vector<std::string> saved_names();
  virtual void load_saved(const std::map<std::string, Tensor>& values) { load_parameters(values); }
  // A term the trainer adds to the loss (diff pruning's L0 penalty); undefined for most methods.
  virtual Tensor regularizer() { return Tensor(); }
  // Paths of modules this delta attached to (for inspect's tree).
  virtual std::vector<std::string> attached_modules() const = 0;

  // What the method knows of itself, asked of an attached delta. The defaults say "cannot".
  // Merging (deltatune/merge.h): whether the delta folds into the base weights; merge_into folds it in
  // and detaches it, unmerge_from takes it out again. Both throw a ConfigError saying why they cannot.
  virtual bool can_merge() const { return false; }
  virtual void merge_into(TransformerModel& model);
  virtual void unmerge_from(TransformerModel& model);
  // PEFT's adapter format (deltatune/delta_io.h): the adapter_config.json fields (ConfigError when
  // PEFT has no such method: its registration has no peft_type), and the key a parameter of ours has
  // in adapter_model.safetensors ("base_model.model." + name unless the method says otherwise).
  virtual nlohmann::json peft_config(TransformerModel& model);
  virtual std::string peft_tensor_name(const std::string& name) const;
  // Whether it acts through linear-layer hooks alone and so can share a mixed batch with other deltas
  // (deltatune/mixed_batch.h): no attention, embedding or model-tensor changes.
  virtual bool supports_mixed_batch() const { return false; }
  // Where it attaches among the members of a combination (1: the model's own tensors, 2: the input
  // embeddings, 3: attention keys/values, 4: added to W x, 5: scaling a layer's output, 6: wrapping
  // a layer's output, 7: anything else); see combination.cc.
  virtual int attach_stage() const { return 7; }
  // The peak learning rate `train` uses for it: its registration's (deltatune/delta_method.h).
  virtual double default_learning_rate() const;
  // Whether it trains the base's own linear weights in place (last-layers). Asked before attaching:
  // a quantised base (--quantize) stores every other linear weight quantised as it is read, but must
  // keep these float. Composites answer for their members (trains_linear_weights below).
  virtual bool trains_linear_weights() const { return false; }

  std::string name = "default";
  uint64_t seed = 0;
};

// Builds a delta from our config JSON ({"method": "lora", ...}). Unknown methods list the supported.
std::unique_ptr<Delta> make_delta(const nlohmann::json& config);

// Delta::trains_linear_weights of a delta or, for a combination, UniPELT or intrinsic delta, of any
// of its members.
bool trains_linear_weights(Delta& delta);
const std::vector<std::string>& supported_methods();

// Freezes every model parameter except those named in `trainable` (task heads, modules_to_save) and
// makes each attached delta's parameters trainable. Returns (trainable, total) parameter counts.
std::pair<int64_t, int64_t> freeze_for_delta(TransformerModel& model, std::vector<Delta*> deltas,
                                             const std::vector<std::string>& trainable);
// Every trainable tensor by name: the deltas' and the model's own trainable ones.
std::vector<std::pair<std::string, Tensor>> trainable_parameters(TransformerModel& model,
                                                                 std::vector<Delta*> deltas);

}  // namespace deltatune::delta
