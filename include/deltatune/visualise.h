#pragma once
// The module tree as text, OpenDelta-style: one line per module with its type and parameter shapes,
// repeated layers folded ("0-3 ×4"), delta modules marked, and a trainable-parameter summary.
#include <map>
#include <set>
#include <string>

#include "deltatune/nn.h"

namespace deltatune {

struct TreeOptions {
  std::set<std::string> delta_modules;              // module paths to mark as deltas ("[delta: lora]" etc.)
  std::map<std::string, std::string> delta_labels;  // path -> label
  bool color = false;
};

std::string module_tree(nn::Module& root, const TreeOptions& options = {});
// "trainable 12,345 of 11,234,567 (0.11%)"
std::string trainable_summary(int64_t trainable, int64_t total);
std::string with_thousands(int64_t n);
std::string human_count(int64_t n);  // 11.2M, 345.6K

}  // namespace deltatune
