// Choosing target modules by name: exact paths, dotted suffixes, roles, a full regex, exclusions and
// layer indices, with PEFT's matching rules.
#include <regex>
#include <set>

#include "delta/module_names.h"
#include "deltatune/delta.h"
#include "deltatune/error.h"

namespace deltatune::delta {
namespace {
// Role names inside blocks are relative to a block: marked with this prefix, they match only
// <layers_path>.<i>.<name> (BERT's ffn.down "output.dense" must not match "attention.output.dense").
constexpr char kInBlock = '\x01';

bool name_match(const TransformerModel& model, const std::string& path, const std::string& name) {
  if (name.empty() || name[0] != kInBlock) return selects_module(path, name);
  const std::string rel = name.substr(1);
  if (!selects_module(path, rel) || layer_index(model, path) < 0) return false;
  // What precedes the name must be exactly the block's path.
  const std::string block = path.substr(0, path.size() - rel.size() - 1);
  return block == model.layers_path() + "." + std::to_string(layer_index(model, path));
}

// Expands roles (attn.q, ffn.down, ...) into the architecture's module names; other names stay.
std::vector<std::string> expand_roles(TransformerModel& model, const std::vector<std::string>& names) {
  const auto roles = model.roles();
  std::vector<std::string> out;
  for (const auto& n : names) {
    auto it = roles.find(n);
    if (it == roles.end()) {
      out.push_back(n);
      continue;
    }
    for (const auto& m : it->second) {
      // Role names inside blocks are relative to a block; outside (embed, head) they are full paths.
      out.push_back(n == "embed" || n == "head" ? m : kInBlock + m);
    }
  }
  return out;
}

// The modules a target may select: linear layers, or (linear_only false) any module holding weights.
bool selectable(nn::Module& module, bool linear_only) {
  if (linear_only) return module.type_name() == "Linear";
  return module.children().empty() && !module.local_parameters().empty();
}

// For the "match no module" error: real paths of what targets could select (layer 0's and those
// outside the blocks) and the roles that resolve to such modules on this model.
std::string targeting_hint(TransformerModel& model, bool linear_only) {
  std::string in_layer0, outside;
  for (auto& [path, module] : model.named_modules()) {
    if (path.empty() || !selectable(*module, linear_only)) continue;
    const int64_t layer = layer_index(model, path);
    std::string& list = layer == 0 ? in_layer0 : outside;
    if (layer <= 0) list += (list.empty() ? "" : ", ") + path;
  }
  std::string roles;
  for (const auto& [role, _] : model.roles()) {
    const std::vector<std::string> names = expand_roles(model, {role});
    bool applies = false;
    for (auto& [path, module] : model.named_modules())
      for (const auto& n : names)
        applies = applies || (selectable(*module, linear_only) && name_match(model, path, n));
    if (applies) roles += (roles.empty() ? "" : ", ") + role;
  }
  const std::string kind = linear_only ? "linear layers" : "modules";
  std::string out = "its " + kind + " in layer 0: " + in_layer0;
  if (model.config.num_layers > 1)
    out += " (and the same in layers 1-" + std::to_string(model.config.num_layers - 1) + ")";
  if (!outside.empty()) out += "; outside the layers: " + outside;
  return out + "; roles: " + (roles.empty() ? "none" : roles);
}

std::vector<int64_t> int_list(const nlohmann::json& j, const char* what) {
  std::vector<int64_t> out;
  if (j.is_null()) return out;
  if (j.is_number_integer()) return {j.get<int64_t>()};
  if (!j.is_array()) throw ConfigError(std::string(what) + " must be an integer or a list of integers");
  for (const auto& v : j) {
    if (!v.is_number_integer())
      throw ConfigError(std::string(what) + " must be an integer or a list of integers");
    out.push_back(v.get<int64_t>());
  }
  return out;
}
}  // namespace

TargetSpec TargetSpec::from_json(const nlohmann::json& targets, const nlohmann::json& exclude,
                                 const nlohmann::json& layers) {
  TargetSpec spec;
  if (targets.is_string())
    spec.regex = targets.get<std::string>();
  else if (targets.is_array())
    for (const auto& t : targets) {
      if (!t.is_string()) throw ConfigError("targets must be a list of module names or a regex string");
      spec.names.push_back(t.get<std::string>());
    }
  else if (!targets.is_null())
    throw ConfigError("targets must be a list of module names or a regex string");
  if (exclude.is_string())
    spec.exclude.push_back(exclude.get<std::string>());
  else if (exclude.is_array())
    for (const auto& t : exclude) spec.exclude.push_back(t.get<std::string>());
  spec.layers = int_list(layers, "layers");
  return spec;
}

nlohmann::json TargetSpec::names_json() const {
  if (!regex.empty()) return regex;
  return names;
}

std::optional<nlohmann::json> pattern_lookup(const nlohmann::json& patterns, const std::string& path) {
  if (!patterns.is_object()) return std::nullopt;
  for (auto it = patterns.begin(); it != patterns.end(); ++it) {
    try {
      if (std::regex_match(path, std::regex("(.*\\.)?(" + it.key() + ")$"))) return it.value();
    } catch (const std::regex_error&) {
      throw ConfigError("pattern '" + it.key() + "' is not a valid regex");
    }
  }
  return std::nullopt;
}

int64_t layer_index(const TransformerModel& model, const std::string& path) {
  const std::string prefix = model.layers_path() + ".";
  if (path.rfind(prefix, 0) != 0) return -1;
  size_t end = path.find('.', prefix.size());
  std::string digits =
      path.substr(prefix.size(), end == std::string::npos ? std::string::npos : end - prefix.size());
  if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos) return -1;
  return std::stoll(digits);
}

std::vector<std::string> resolve_targets(TransformerModel& model, const TargetSpec& spec, bool linear_only) {
  if (spec.names.empty() && spec.regex.empty())
    throw ConfigError("no targets given (a list of module names, roles, or a regex)");
  std::vector<std::string> names = expand_roles(model, spec.names);
  std::vector<std::string> excluded = expand_roles(model, spec.exclude);
  std::regex pattern;
  if (!spec.regex.empty()) {
    try {
      pattern = std::regex(spec.regex);
    } catch (const std::regex_error& e) {
      throw ConfigError("targets regex '" + spec.regex + "' is invalid: " + e.what());
    }
  }
  std::vector<std::string> out;
  for (auto& [path, module] : model.named_modules()) {
    if (path.empty() || (linear_only && module->type_name() != "Linear")) continue;
    bool hit = false;
    if (!spec.regex.empty())
      hit = std::regex_match(path, pattern);
    else
      for (const auto& n : names) hit = hit || name_match(model, path, n);
    if (!hit) continue;
    bool skip = false;
    for (const auto& e : excluded) skip = skip || name_match(model, path, e);
    if (skip) continue;
    if (!spec.layers.empty()) {
      int64_t layer = layer_index(model, path);
      bool keep = false;
      for (int64_t l : spec.layers) keep = keep || l == layer;
      if (!keep) continue;
    }
    out.push_back(path);
  }
  if (out.empty()) {
    std::string wanted = spec.regex.empty() ? nlohmann::json(spec.names).dump() : "'" + spec.regex + "'";
    throw ConfigError("targets " + wanted + " match no " + std::string(linear_only ? "linear " : "") +
                      "module of this " + model.config.model_type + " model (" +
                      targeting_hint(model, linear_only) + ")");
  }
  return out;
}

}  // namespace deltatune::delta
