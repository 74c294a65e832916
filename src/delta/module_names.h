// Matching module and tensor names by their ending: PEFT's dotted-suffix rule for module lists, and
// taking a known ending off a tensor name to find its module.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace deltatune::delta {

// Whether list entry `name` selects the module at `path` under PEFT's rule: the whole path, or a dotted
// suffix of whole name components ("q_proj" and "self_attn.q_proj" select "layers.0.self_attn.q_proj";
// "proj" and "_proj" do not).
inline bool selects_module(std::string_view path, std::string_view name) {
  if (path == name) return true;
  return path.size() > name.size() && path.ends_with(name) && path[path.size() - name.size() - 1] == '.';
}

// `name` without a non-empty `suffix` it ends with, when something is left ("x.lora_A.weight" less
// ".lora_A.weight" is "x"); nullopt otherwise.
inline std::optional<std::string> strip_suffix(std::string_view name, std::string_view suffix) {
  if (suffix.empty() || name.size() <= suffix.size() || !name.ends_with(suffix)) return std::nullopt;
  return std::string(name.substr(0, name.size() - suffix.size()));
}

}  // namespace deltatune::delta
