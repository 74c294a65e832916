#include "deltatune/error.h"
#include "deltatune/nn.h"

namespace deltatune::nn {

Tensor& Module::register_parameter(const std::string& name, Tensor value) {
  for (auto& [n, t] : params_)
    if (n == name) return t = std::move(value);
  params_.emplace_back(name, std::move(value));
  return params_.back().second;
}

std::shared_ptr<Module> Module::replace_module(const std::string& name, std::shared_ptr<Module> module) {
  for (auto& [n, child] : children_)
    if (n == name) return std::exchange(child, std::move(module));
  throw Error("replace_module: no child named '" + name + "' in " + type_name_);
}

std::vector<std::pair<std::string, Tensor*>> Module::named_parameters(const std::string& prefix) {
  std::vector<std::pair<std::string, Tensor*>> out;
  for (auto& [name, t] : params_)
    if (t.defined()) out.emplace_back(prefix + name, &t);
  for (auto& [name, child] : children_) {
    if (!child) continue;
    auto sub = child->named_parameters(prefix + name + ".");
    out.insert(out.end(), sub.begin(), sub.end());
  }
  return out;
}

std::vector<std::pair<std::string, Module*>> Module::named_modules(const std::string& prefix) {
  std::vector<std::pair<std::string, Module*>> out{{prefix, this}};
  for (auto& [name, child] : children_) {
    if (!child) continue;
    auto sub = child->named_modules(prefix.empty() ? name : prefix + "." + name);
    out.insert(out.end(), sub.begin(), sub.end());
  }
  return out;
}

Module* Module::find_module(const std::string& path) {
  if (path.empty()) return this;
  const size_t dot = path.find('.');
  const std::string head = path.substr(0, dot);
  for (auto& [name, child] : children_)
    if (name == head && child)
      return dot == std::string::npos ? child.get() : child->find_module(path.substr(dot + 1));
  return nullptr;
}

Tensor* Module::find_parameter(const std::string& path) {
  const size_t dot = path.rfind('.');
  Module* owner = dot == std::string::npos ? this : find_module(path.substr(0, dot));
  if (!owner) return nullptr;
  const std::string leaf = dot == std::string::npos ? path : path.substr(dot + 1);
  for (auto& [name, t] : owner->params_)
    if (name == leaf) return t.defined() ? &t : nullptr;
  return nullptr;
}

void Module::set_training(bool on) {
  training_ = on;
  for (auto& [_, child] : children_)
    if (child) child->set_training(on);
}

int64_t Module::parameter_count() {
  int64_t n = 0;
  for (auto& [_, t] : named_parameters()) n += t->numel();
  return n;
}

}  // namespace deltatune::nn
