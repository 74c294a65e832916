#include "deltatune/merge.h"

#include <cmath>
#include <fstream>

#include "deltatune/autograd.h"
#include "deltatune/error.h"
#include "deltatune/safetensors.h"
#include "delta/methods.h"

namespace deltatune::delta {
namespace fs = std::filesystem;
namespace {
struct LoraFactors {
  Tensor A, B, magnitude;
};

// The LoRA factors of each attached module, from the delta's named parameters.
std::map<std::string, LoraFactors> lora_factors(Delta& delta) {
  std::map<std::string, LoraFactors> out;
  for (auto& [name, t] : delta.parameters()) {
    auto cut = [&](const std::string& suffix) {
      return name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0
                 ? name.substr(0, name.size() - suffix.size())
                 : std::string();
    };
    if (auto p = cut(".lora_A.weight"); !p.empty()) out[p].A = t;
    else if (auto p2 = cut(".lora_B.weight"); !p2.empty()) out[p2].B = t;
    else if (auto p3 = cut(".lora_magnitude_vector"); !p3.empty()) out[p3].magnitude = t;
  }
  return out;
}

void apply(TransformerModel& model, Delta& delta, float sign) {
  if (delta.method() == "unipelt")
    throw ConfigError("merge: UniPELT's LoRA is scaled by a gate computed from each input, so it cannot be "
                      "folded into fixed weights; use the delta as it is (deltatune eval/predict --delta)");
  if (delta.method() != "lora")
    throw ConfigError("merge: the " + delta.method() + " delta cannot be merged into the weights (supported: lora, dora)");
  const nlohmann::json c = delta.config();
  if (c.value("bias", std::string("none")) != "none")
    throw ConfigError("merge: a LoRA trained with bias \"" + c.value("bias", std::string()) +
                      "\" cannot be merged yet (supported: bias \"none\")");
  for (auto& [name, _] : delta.parameters())
    if (name.find(".lora_embedding_") != std::string::npos)
      throw ConfigError("merge: LoRA on embeddings ('" + name + "') cannot be merged yet");
  NoGradGuard no_grad;
  for (auto& [path, f] : lora_factors(delta)) {
    auto* layer = dynamic_cast<nn::Linear*>(model.find_module(path));
    if (!layer) throw ConfigError("merge: '" + path + "' is not a linear layer of this model");
    const double scaling = lora_shape(c, path).scaling;
    Tensor w = layer->weight_out_in().float32().contiguous();     // [out, in]
    Tensor delta_w = ops::mul_scalar(ops::matmul(f.B, f.A), float(scaling));
    Tensor merged;
    if (f.magnitude.defined()) {
      if (sign < 0) throw ConfigError("unmerge: DoRA merges cannot be undone exactly; reload the base instead");
      Tensor combined = ops::add(w, delta_w);
      Tensor norm = ops::sqrt(ops::sum(ops::square(combined), {1}, true));
      merged = ops::mul(ops::div(f.magnitude.reshape({-1, 1}), norm), combined);
    } else {
      merged = sign > 0 ? ops::add(w, delta_w) : ops::sub(w, delta_w);
    }
    Tensor stored = layer->fan_in_fan_out ? merged.t().contiguous() : merged;
    layer->weight() = stored.to(layer->weight().dtype()).contiguous().detach();
  }
}
}  // namespace

void merge_into(TransformerModel& model, Delta& delta) {
  apply(model, delta, 1.0f);
  delta.detach();
}

void unmerge_from(TransformerModel& model, Delta& delta) { apply(model, delta, -1.0f); }

void save_checkpoint(TransformerModel& model, const fs::path& source_dir, const fs::path& out_dir) {
  fs::create_directories(out_dir);
  std::map<std::string, Tensor> tensors;
  for (auto& [name, t] : model.named_parameters()) tensors[name] = t->float32().contiguous().detach();
  write_safetensors(out_dir / "model.safetensors", tensors, {{"format", "pt"}});
  nlohmann::json config = model.config.raw;
  config["dtype"] = "float32";
  if (config.contains("torch_dtype")) config["torch_dtype"] = "float32";
  {
    std::ofstream out(out_dir / "config.json.tmp");
    out << config.dump(2) << "\n";
  }
  fs::rename(out_dir / "config.json.tmp", out_dir / "config.json");
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
                        "tokenizer.model", "special_tokens_map.json", "generation_config.json"})
    if (fs::exists(source_dir / f) && !fs::equivalent(source_dir, out_dir))
      fs::copy_file(source_dir / f, out_dir / f, fs::copy_options::overwrite_existing);
}

}  // namespace deltatune::delta
