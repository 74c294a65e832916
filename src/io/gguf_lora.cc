// LoRA deltas to and from llama.cpp's GGUF adapter files (deltatune/gguf_lora.h).
#include "deltatune/gguf_lora.h"

#include <cmath>
#include <cstring>
#include <map>
#include <set>

#include "deltatune/error.h"
#include "deltatune/gguf_model.h"

namespace deltatune::gguf {
namespace {

namespace fs = std::filesystem;

// The GGUF architecture a config's model is written as (convert_hf_to_gguf writes mistral as llama).
std::string gguf_arch(const ModelConfig& c) {
  if (c.family != ArchFamily::Llama)
    throw ConfigError("GGUF adapters are written for the llama family (llama, mistral, qwen2), not " +
                      c.model_type);
  return c.model_type == "qwen2" ? "qwen2" : "llama";
}

// The adapter's alpha, such that alpha / r is the LoRA's scaling: PEFT's alpha / r, or rsLoRA's
// alpha / sqrt(r) given as (alpha * sqrt(r)) / r.
float adapter_alpha(const nlohmann::json& c, const std::set<int64_t>& ranks) {
  const double alpha = c.value("alpha", 8.0);
  if (!c.value("rslora", false)) return float(alpha);
  if (ranks.size() != 1)
    throw ConfigError(
        "an rsLoRA delta with several ranks has no single GGUF adapter alpha (alpha / r per tensor)");
  return float(alpha * std::sqrt(double(*ranks.begin())));
}

void check_writable(const nlohmann::json& c, const std::string& method) {
  if (method != "lora") throw ConfigError("a GGUF adapter holds a LoRA, not a '" + method + "' delta");
  if (c.value("dora", false)) throw ConfigError("a GGUF adapter cannot hold DoRA's magnitude vectors");
  if (c.value("bias", std::string("none")) != "none")
    throw ConfigError("a GGUF adapter cannot hold trained biases (bias '" + c.value("bias", std::string()) +
                      "')");
  if (!c.value("alpha_pattern", nlohmann::json::object()).empty())
    throw ConfigError("a GGUF adapter has one alpha; this LoRA has an alpha_pattern");
}

// B's rows in the file's order: permuted for q/k as the base's weights are.
Tensor permuted_b(const ModelConfig& config, const std::string& weight, const Tensor& b, bool inverse) {
  const int64_t heads = permutation_heads(config, weight);
  const Tensor f = b.float32().contiguous();
  if (!heads) return f;
  std::vector<uint8_t> bytes = permute_rows(reinterpret_cast<const uint8_t*>(f.f32()), f.size(0),
                                            size_t(f.size(1)) * sizeof(float), heads, inverse);
  std::vector<float> values(size_t(f.numel()));
  std::memcpy(values.data(), bytes.data(), bytes.size());
  return Tensor::from_floats(values, f.shape());
}

void add_matrix(Writer& w, const std::string& name, const Tensor& t, GgmlType type) {
  const Tensor f = t.float32().contiguous();
  w.add_tensor(name, {f.size(1), f.size(0)}, type, encode(f.f32(), f.size(0), f.size(1), type));
}

}  // namespace

void write_lora_adapter(delta::Delta& lora, const TransformerModel& model, const fs::path& out,
                        GgmlType type) {
  if (type != GgmlType::F32 && type != GgmlType::F16 && type != GgmlType::BF16)
    throw ConfigError(std::string("GGUF adapter type ") + traits(type).name +
                      " is not supported (f32, f16, bf16)");
  const nlohmann::json c = lora.config();
  check_writable(c, lora.method());
  const std::string arch = gguf_arch(model.config);
  std::map<std::string, Tensor> a, b;  // by module path
  for (auto& [name, t] : lora.parameters()) {
    if (name.ends_with(".lora_A.weight"))
      a[name.substr(0, name.size() - 14)] = t;
    else if (name.ends_with(".lora_B.weight"))
      b[name.substr(0, name.size() - 14)] = t;
    else
      throw ConfigError("a GGUF adapter cannot hold '" + name + "' (LoRA on linear layers only)");
  }
  std::set<int64_t> ranks;
  for (auto& [path, t] : a) ranks.insert(t.size(0));

  Writer w;
  w.set("general.architecture", Value::of_string(arch));
  w.set("general.type", Value::of_string("adapter"));
  w.set("adapter.type", Value::of_string("lora"));
  w.set("adapter.lora.alpha", Value::of_float32(adapter_alpha(c, ranks)));
  for (auto& [path, t] : a) {
    const std::optional<std::string> weight = gguf_tensor_name(path + ".weight");
    if (!weight) throw ConfigError("'" + path + "' has no llama.cpp name: a GGUF adapter cannot hold it");
    add_matrix(w, *weight + ".lora_a", t, type);
    add_matrix(w, *weight + ".lora_b", permuted_b(model.config, path + ".weight", b.at(path), false), type);
  }
  w.write(out);
}

bool is_gguf_adapter(const fs::path& file) {
  if (!is_gguf_file(file)) return false;
  const File f = read_file(file);
  const Value* type = f.find("general.type");
  return type && type->type == ValueType::String && type->text == "adapter";
}

std::unique_ptr<delta::Delta> attach_lora_adapter(const fs::path& file, TransformerModel& model) {
  const File f = read_file(file);
  const std::string where = file.string() + ": ";
  if (!f.find("adapter.type") || f.string("adapter.type") != "lora")
    throw IoError(where + "not a LoRA adapter (adapter.type is not \"lora\")");
  const std::string arch = f.string("general.architecture");
  if (arch != gguf_arch(model.config))
    throw IoError(where + "an adapter for architecture '" + arch + "', the model is " +
                  model.config.model_type);
  const double alpha = f.number("adapter.lora.alpha");

  std::map<std::string, Tensor> values;
  std::map<std::string, int64_t> rank_of;
  for (const TensorInfo& t : f.tensors) {
    const bool is_a = t.name.ends_with(".lora_a"), is_b = t.name.ends_with(".lora_b");
    const std::string weight = t.name.substr(0, t.name.size() - 7);
    const std::optional<std::string> hf = hf_tensor_name(weight);
    if ((!is_a && !is_b) || !hf || t.dims.size() != 2)
      throw IoError(where + "tensor '" + t.name + "' is not a LoRA matrix of a " + arch + " weight");
    const std::string path = hf->substr(0, hf->size() - 7);  // without ".weight"
    Tensor m = Tensor::from_floats(dequantize(t, file), t.shape());
    if (is_a) {
      rank_of[path] = m.size(0);
      values[path + ".lora_A.weight"] = m;
    } else {
      values[path + ".lora_B.weight"] = permuted_b(model.config, *hf, m, true);
    }
  }
  if (rank_of.empty()) throw IoError(where + "the adapter holds no LoRA matrices");
  // One rank for all, or the others as a rank_pattern of exact module paths.
  std::map<int64_t, int> counts;
  for (auto& [path, r] : rank_of) ++counts[r];
  int64_t rank = counts.begin()->first;
  for (auto& [r, n] : counts)
    if (n > counts[rank]) rank = r;
  nlohmann::json config = {{"method", "lora"}, {"r", rank}, {"alpha", alpha}, {"dropout", 0.0}};
  config["targets"] = nlohmann::json::array();
  config["rank_pattern"] = nlohmann::json::object();
  for (auto& [path, r] : rank_of) {
    config["targets"].push_back(path);
    if (r != rank) config["rank_pattern"][path] = r;
  }
  std::unique_ptr<delta::Delta> lora = delta::make_delta(config);
  lora->attach(model);
  try {
    lora->load_parameters(values);
  } catch (const Error& e) {
    throw IoError(where + e.what());
  }
  return lora;
}

}  // namespace deltatune::gguf
