#pragma once
// Access to the Hugging Face reference outputs copied from ../shared/golden into tests/data/golden.
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "deltatune/model.h"
#include "deltatune/safetensors.h"

namespace golden {

inline std::filesystem::path dir() { return std::filesystem::path(DELTATUNE_TEST_DATA) / "golden"; }
inline std::filesystem::path model_dir(const std::string& name) {
  return std::filesystem::path(DELTATUNE_ASSETS) / "models" / name;
}
// A mini model from assets/models with the head its config names, loaded quietly (no key report).
inline std::unique_ptr<deltatune::TransformerModel> load_model(const std::string& name) {
  deltatune::LoadOptions options;
  options.verbose = false;
  return deltatune::load_pretrained(model_dir(name), options);
}
inline nlohmann::json manifest() {
  std::ifstream in(dir() / "manifest.json");
  return nlohmann::json::parse(in);
}
inline nlohmann::json find_case(const std::string& name) {
  const nlohmann::json all = manifest();
  for (const auto& c : all["cases"])
    if (c["case"] == name) return c;
  throw std::runtime_error("no golden case " + name);
}
inline deltatune::TensorFile outputs(const std::string& name) {
  return deltatune::read_safetensors(dir() / (name + ".safetensors"));
}

}  // namespace golden
