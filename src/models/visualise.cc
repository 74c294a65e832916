#include "deltatune/visualise.h"

#include <cstdio>
#include <functional>
#include <sstream>

namespace deltatune {
namespace {
bool is_index(const std::string& s) {
  return !s.empty() && s.find_first_not_of("0123456789") == std::string::npos;
}

// A structural signature: two layers with the same one print identically, so they fold.
// Delta marks count too: a layer with a delta never folds with one without.
std::string signature(nn::Module& m, const std::string& path, const TreeOptions& options) {
  std::string s = m.type_name() + "{";
  auto label = options.delta_labels.find(path);
  if (label != options.delta_labels.end())
    s += "[" + label->second + "]";
  else if (options.delta_modules.count(path))
    s += "[delta]";
  for (auto& [name, t] : m.local_parameters())
    if (t.defined()) s += name + shape_str(t.shape()) + ";";
  for (auto& [name, child] : m.children())
    if (child) s += name + ":" + signature(*child, path.empty() ? name : path + "." + name, options) + ",";
  return s + "}";
}

std::string param_text(nn::Module& m) {
  std::string s;
  for (auto& [name, t] : m.local_parameters())
    if (t.defined()) s += " " + name + ":" + shape_str(t.shape());
  return s;
}
}  // namespace

std::string with_thousands(int64_t n) {
  std::string digits = std::to_string(n < 0 ? -n : n), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return n < 0 ? "-" + out : out;
}

std::string human_count(int64_t n) {
  char buf[32];
  if (n >= 1000000000)
    std::snprintf(buf, sizeof buf, "%.1fB", n / 1e9);
  else if (n >= 1000000)
    std::snprintf(buf, sizeof buf, "%.1fM", n / 1e6);
  else if (n >= 1000)
    std::snprintf(buf, sizeof buf, "%.1fK", n / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(n));
  return buf;
}

std::string trainable_summary(int64_t trainable, int64_t total) {
  char pct[32];
  std::snprintf(pct, sizeof pct, "%.4f%%", total ? 100.0 * double(trainable) / double(total) : 0.0);
  return "trainable " + with_thousands(trainable) + " of " + with_thousands(total) + " (" + pct + ")";
}

std::string module_tree(nn::Module& root, const TreeOptions& options) {
  std::ostringstream out;
  std::function<void(nn::Module&, const std::string&, const std::string&, const std::string&, bool)> walk;
  walk = [&](nn::Module& m, const std::string& label, const std::string& path, const std::string& indent,
             bool last) {
    std::string mark;
    auto it = options.delta_labels.find(path);
    if (it != options.delta_labels.end())
      mark = "  [" + it->second + "]";
    else if (options.delta_modules.count(path))
      mark = "  [delta]";
    out << indent << (path.empty() ? "" : (last ? "└── " : "├── ")) << label << " (" << m.type_name() << ")"
        << param_text(m) << "  " << human_count(m.parameter_count()) << mark << "\n";
    const std::string child_indent = path.empty() ? "" : indent + (last ? "    " : "│   ");
    auto& kids = m.children();
    // Fold runs of identical numbered layers (deltas on some layers break the run, as they should).
    std::vector<std::pair<std::string, nn::Module*>> shown;
    std::vector<std::string> labels;
    for (size_t i = 0; i < kids.size();) {
      if (!kids[i].second) {
        ++i;
        continue;
      }
      size_t j = i + 1;
      if (is_index(kids[i].first)) {
        auto child_path = [&](size_t k) { return path.empty() ? kids[k].first : path + "." + kids[k].first; };
        const std::string sig = signature(*kids[i].second, child_path(i), options);
        while (j < kids.size() && kids[j].second && is_index(kids[j].first) &&
               signature(*kids[j].second, child_path(j), options) == sig)
          ++j;
      }
      shown.emplace_back(kids[i].first, kids[i].second.get());
      labels.push_back(j - i > 1 ? kids[i].first + "-" + kids[j - 1].first + " ×" + std::to_string(j - i)
                                 : kids[i].first);
      i = j;
    }
    for (size_t i = 0; i < shown.size(); ++i) {
      const std::string child_path = path.empty() ? shown[i].first : path + "." + shown[i].first;
      walk(*shown[i].second, labels[i], child_path, child_indent, i + 1 == shown.size());
    }
  };
  walk(root, "root", "", "", true);
  return out.str();
}

}  // namespace deltatune
