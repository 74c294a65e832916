#pragma once
// The module tree. A module owns named parameters and named children; the dotted path of a parameter
// is exactly its Hugging Face checkpoint key (bert.encoder.layer.0.attention.self.query.weight), so
// loading is a name lookup. Linear layers carry hook lists: that is where deltas attach (delta/).
#include <deque>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "deltatune/ops.h"
#include "deltatune/tensor.h"

namespace deltatune::nn {

class Module {
 public:
  explicit Module(std::string type_name) : type_name_(std::move(type_name)) {}
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  const std::string& type_name() const { return type_name_; }

  // An undefined tensor registers an absent parameter (e.g. a Linear without bias) that a delta may add.
  Tensor& register_parameter(const std::string& name, Tensor value);
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> module) {
    children_.emplace_back(name, module);
    return module;
  }
  // Replaces or removes a child (deltas that wrap a module); returns the previous one.
  std::shared_ptr<Module> replace_module(const std::string& name, std::shared_ptr<Module> module);

  // Defined parameters with full dotted names, in registration order, depth first.
  std::vector<std::pair<std::string, Tensor*>> named_parameters(const std::string& prefix = "");
  std::vector<std::pair<std::string, Module*>> named_modules(const std::string& prefix = "");
  std::deque<std::pair<std::string, Tensor>>& local_parameters() { return params_; }
  std::vector<std::pair<std::string, std::shared_ptr<Module>>>& children() { return children_; }
  Module* find_module(const std::string& path);     // nullptr if absent; "" is this module
  Tensor* find_parameter(const std::string& path);  // nullptr if absent or undefined

  void set_training(bool on);
  bool training() const { return training_; }
  int64_t parameter_count();

 private:
  std::string type_name_;
  std::deque<std::pair<std::string, Tensor>> params_;  // a deque: references stay valid
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = false;
};

class Linear;

// A delta's attachment to a linear layer. pre() may transform the input (IA3 on feed-forward inputs);
// post() may transform the output given the (transformed) input (LoRA adds, adapters wrap, IA3 scales).
struct LinearHook {
  virtual ~LinearHook() = default;
  virtual Tensor pre(Linear& layer, const Tensor& x) { return x; }
  virtual Tensor post(Linear& layer, const Tensor& x, const Tensor& y) { return y; }
  std::string owner;    // the delta that attached it (detach by name)
  bool enabled = true;  // switched off: the layer behaves as the base
};

// y = x W^T + b. GPT-2's Conv1D stores W as [in, out] (fan_in_fan_out): read through a transposed
// view, never copied.
class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias, bool fan_in_fan_out = false);
  Tensor forward(const Tensor& x);
  // The base computation without hooks (deltas that need the frozen output, or merging).
  Tensor base_forward(const Tensor& x);
  Tensor& weight() { return weight_; }
  Tensor& bias() { return bias_; }
  // The weight as [out, in] (a view for fan_in_fan_out; a quantised weight dequantised in full, for
  // the few deltas that read the weight itself: DoRA's norm, diff pruning).
  Tensor weight_out_in() const;

  // Set by quantize_frozen_weights: the frozen weight [out, in] in 4 or 8 bits, multiplied through
  // ops::quantized_linear; weight() is then undefined (its float32 memory is freed).
  std::shared_ptr<const QuantizedMatrix> quantized;

  int64_t in_features, out_features;
  bool fan_in_fan_out;
  std::vector<std::shared_ptr<LinearHook>> hooks;

 private:
  Tensor& weight_;
  Tensor& bias_;
};

// The storages that back more than one parameter under `root` (tied weights: a tied LM head is the
// embedding table). Whatever stores a layer's weight another way (bfloat16, quantised) leaves these
// alone, or the other user would change with it.
std::set<const Storage*> shared_storages(Module& root);

// Stores the frozen weight matrices under `root` (Linear weights and Embedding tables that do not
// require a gradient and share their storage with no other parameter) as `dtype`. bfloat16 halves
// their memory and runs linear layers on the AVX-512 BF16 kernel (ops::linear); embedding lookups
// read the table as it is. Call it after the delta is attached and the model frozen. `trained` names
// parameters (paths under `root`) that were trained and keep their precision even without a gradient
// (a loaded delta's head, a full run's weights: eval must compute as the training run did). Returns
// how many weights changed.
int64_t store_frozen_weights(Module& root, DType dtype, const std::set<std::string>& trained = {});

// Quantises the frozen linear weights under `root` (those store_frozen_weights would store, an untied
// LM head included): each Linear keeps its weight as a QuantizedMatrix (`quantized`) and frees the
// float one. Call it after the delta is attached and the model frozen; `trained` as above. Returns
// how many weights were quantised. Throws ConfigError for a weight with NaN or infinite values.
int64_t quantize_frozen_weights(Module& root, QuantFormat format, const std::set<std::string>& trained = {});

// One layer's part of quantize_frozen_weights: its float weight stored in `format` and freed.
// load_pretrained calls it on each weight as it is read (LoadOptions::quantize), so that a quantised
// base never holds its float32 weights in full.
void quantize_weight(Linear& layer, QuantFormat format);

// For a saved tensor that replaces a weight stored quantised (a trained head or layer read back over a
// base quantised as it was loaded): the layer named by `parameter` ("path.weight") drops its
// QuantizedMatrix and gets a float weight (zeros, to be overwritten) of the stored shape. Null when
// `parameter` names no quantised Linear's weight.
Tensor* unquantize_for_replacement(Module& root, const std::string& parameter);

// Undoes quantize_frozen_weights (or a GGUF file's quantised layers): each quantised Linear gets its
// float32 weight back, dequantised, and drops the QuantizedMatrix. Merging a delta needs the float
// weights. Returns how many weights changed.
int64_t dequantize_weights(Module& root);

class Embedding;

// A delta's attachment to an embedding table (LoRA on embeddings): post() transforms the looked-up
// vectors given the ids.
struct EmbeddingHook {
  virtual ~EmbeddingHook() = default;
  virtual Tensor post(Embedding& layer, const Tensor& ids, const Tensor& y) { return y; }
  std::string owner;
  bool enabled = true;
};

class Embedding : public Module {
 public:
  Embedding(int64_t num, int64_t dim);
  Tensor forward(const Tensor& ids);
  Tensor& weight() { return weight_; }
  std::vector<std::shared_ptr<EmbeddingHook>> hooks;

 private:
  Tensor& weight_;
};

class LayerNorm : public Module {
 public:
  LayerNorm(int64_t dim, float eps, bool bias = true);
  Tensor forward(const Tensor& x);
  float eps;

 private:
  Tensor& weight_;
  Tensor& bias_;
};

class RMSNorm : public Module {
 public:
  RMSNorm(int64_t dim, float eps);
  Tensor forward(const Tensor& x);
  float eps;

 private:
  Tensor& weight_;
};

// Activations by transformers' names: gelu, gelu_new, gelu_pytorch_tanh, silu/swish, relu, tanh.
using Activation = std::function<Tensor(const Tensor&)>;
Activation activation(const std::string& name);

}  // namespace deltatune::nn
