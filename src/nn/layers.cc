#include <map>
#include <memory>
#include <set>

#include "core/fresh_pages.h"
#include "deltatune/error.h"
#include "deltatune/nn.h"

namespace deltatune::nn {

namespace {
// A weight's zeros on pages the kernel maps zero-filled and untouched: they cost no memory until
// written. Every weight is written once (initialised, or read from a checkpoint into a new tensor
// that replaces this one, or quantised), so a model being built or loaded never holds a zeroed float32
// copy of itself besides its real weights.
Tensor untouched_zeros(const Shape& shape) {
  const size_t bytes = size_t(shape_numel(shape)) * sizeof(float);
  if (bytes < (size_t(64) << 10)) return Tensor::zeros(shape);  // small: from the heap
  return Tensor::from_storage(map_fresh_pages(bytes), DType::F32, shape);
}
}  // namespace

Linear::Linear(int64_t in, int64_t out, bool bias, bool fan_in_fan_out)
    : Module("Linear"),
      in_features(in),
      out_features(out),
      fan_in_fan_out(fan_in_fan_out),
      weight_(register_parameter("weight",
                                 fan_in_fan_out ? untouched_zeros({in, out}) : untouched_zeros({out, in}))),
      bias_(register_parameter("bias", bias ? Tensor::zeros({out}) : Tensor())) {}

Tensor Linear::base_forward(const Tensor& x) {
  if (quantized) return ops::quantized_linear(x, quantized, bias_);
  return ops::linear(x, weight_out_in(), bias_);
}

Tensor Linear::weight_out_in() const {
  if (quantized) {
    Tensor w = Tensor::empty({quantized->rows, quantized->cols});
    quantized->dequantize_rows(0, quantized->rows, w.f32());
    return w;
  }
  return fan_in_fan_out ? weight_.t() : weight_;
}

Tensor Linear::forward(const Tensor& x) {
  Tensor in = x;
  for (auto& h : hooks)
    if (h->enabled) in = h->pre(*this, in);
  Tensor y = base_forward(in);
  for (auto& h : hooks)
    if (h->enabled) y = h->post(*this, in, y);
  return y;
}

std::set<const Storage*> shared_storages(Module& root) {
  std::map<const Storage*, int> users;
  for (auto& [name, t] : root.named_parameters()) ++users[t->storage().get()];
  std::set<const Storage*> shared;
  for (auto& [storage, n] : users)
    if (n > 1) shared.insert(storage);
  return shared;
}

namespace {

// The frozen weights of Linear (and, when `embeddings`, Embedding) modules that nothing else shares
// (tied weights, one storage for two parameters, are left alone) and that were not trained.
std::vector<std::pair<Module*, Tensor*>> frozen_weights(Module& root, const std::set<std::string>& trained,
                                                        bool embeddings) {
  const std::set<const Storage*> shared = shared_storages(root);
  std::set<const Storage*> kept;
  for (auto& [name, t] : root.named_parameters())
    if (trained.count(name)) kept.insert(t->storage().get());
  std::vector<std::pair<Module*, Tensor*>> found;
  for (auto& [name, m] : root.named_modules()) {
    Tensor* weight = nullptr;
    if (auto* linear = dynamic_cast<Linear*>(m)) weight = &linear->weight();
    if (auto* embedding = dynamic_cast<Embedding*>(m); embedding && embeddings) weight = &embedding->weight();
    if (!weight || !weight->defined() || weight->requires_grad() || shared.count(weight->storage().get()) ||
        kept.count(weight->storage().get()))
      continue;
    found.emplace_back(m, weight);
  }
  return found;
}

}  // namespace

int64_t store_frozen_weights(Module& root, DType dtype, const std::set<std::string>& trained) {
  int64_t changed = 0;
  for (auto& [module, weight] : frozen_weights(root, trained, true)) {
    if (weight->dtype() == dtype) continue;
    *weight = weight->detach().to(dtype);
    ++changed;
  }
  return changed;
}

void quantize_weight(Linear& linear, QuantFormat format) {
  const Tensor w = linear.weight_out_in().float32().contiguous();
  linear.quantized = std::make_shared<const QuantizedMatrix>(quantize(w.f32(), w.size(0), w.size(1), format));
  linear.weight() = Tensor();
}

int64_t quantize_frozen_weights(Module& root, QuantFormat format, const std::set<std::string>& trained) {
  int64_t changed = 0;
  for (auto& [module, weight] : frozen_weights(root, trained, false)) {
    quantize_weight(static_cast<Linear&>(*module), format);
    ++changed;
  }
  return changed;
}

Tensor* unquantize_for_replacement(Module& root, const std::string& parameter) {
  const std::string suffix = ".weight";
  if (!parameter.ends_with(suffix)) return nullptr;
  auto* linear =
      dynamic_cast<Linear*>(root.find_module(parameter.substr(0, parameter.size() - suffix.size())));
  if (!linear || !linear->quantized) return nullptr;
  linear->quantized.reset();
  const int64_t in = linear->in_features, out = linear->out_features;
  linear->weight() = linear->fan_in_fan_out ? Tensor::zeros({in, out}) : Tensor::zeros({out, in});
  return &linear->weight();
}

int64_t dequantize_weights(Module& root) {
  int64_t changed = 0;
  for (auto& [name, module] : root.named_modules())
    if (auto* linear = dynamic_cast<Linear*>(module); linear && linear->quantized) {
      Tensor w = linear->weight_out_in();
      linear->weight() = linear->fan_in_fan_out ? w.t().contiguous() : w;
      linear->quantized.reset();
      ++changed;
    }
  return changed;
}

Embedding::Embedding(int64_t num, int64_t dim)
    : Module("Embedding"), weight_(register_parameter("weight", Tensor::zeros({num, dim}))) {}

Tensor Embedding::forward(const Tensor& ids) {
  Tensor y = ops::embedding(weight_, ids);
  for (auto& h : hooks)
    if (h->enabled) y = h->post(*this, ids, y);
  return y;
}

LayerNorm::LayerNorm(int64_t dim, float eps, bool bias)
    : Module("LayerNorm"),
      eps(eps),
      weight_(register_parameter("weight", Tensor::ones({dim}))),
      bias_(register_parameter("bias", bias ? Tensor::zeros({dim}) : Tensor())) {}

Tensor LayerNorm::forward(const Tensor& x) { return ops::layer_norm(x, weight_, bias_, eps); }

RMSNorm::RMSNorm(int64_t dim, float eps)
    : Module("RMSNorm"), eps(eps), weight_(register_parameter("weight", Tensor::ones({dim}))) {}

Tensor RMSNorm::forward(const Tensor& x) { return ops::rms_norm(x, weight_, eps); }

Activation activation(const std::string& name) {
  if (name == "gelu") return [](const Tensor& x) { return ops::gelu(x, ops::GeluKind::Erf); };
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast")
    return [](const Tensor& x) { return ops::gelu(x, ops::GeluKind::Tanh); };
  if (name == "silu" || name == "swish") return [](const Tensor& x) { return ops::silu(x); };
  if (name == "relu") return [](const Tensor& x) { return ops::relu(x); };
  if (name == "tanh") return [](const Tensor& x) { return ops::tanh(x); };
  throw ConfigError("unsupported activation '" + name +
                    "' (supported: gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, silu, swish, relu, tanh)");
}

}  // namespace deltatune::nn
