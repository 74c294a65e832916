// The label map: label names <-> class ids, saved beside a delta as labels.json.
#include <algorithm>
#include <map>
#include <set>

#include "deltatune/data.h"
#include "deltatune/error.h"
#include "deltatune/json_file.h"
#include "train/files.h"

namespace deltatune::data {
namespace {

// Non-negative integers written as plain digits (no sign, no leading zeros beyond "0").
bool is_class_integer(const std::string& s) {
  if (s.empty() || s.size() > 9) return false;
  if (!std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; })) return false;
  return s.size() == 1 || s[0] != '0';
}

std::string known_labels(const std::vector<std::string>& names) {
  std::string out;
  for (size_t i = 0; i < names.size() && i < 20; ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > 20) out += ", ...";
  return out;
}

}  // namespace

LabelMap::LabelMap(std::vector<std::string> names, bool integer_labels)
    : names_(std::move(names)), integer_labels_(integer_labels) {}

LabelMap LabelMap::from_examples(std::vector<Example>& examples) {
  std::set<std::string> distinct;
  for (const auto& ex : examples)
    if (ex.label) distinct.insert(*ex.label);
  if (distinct.empty()) throw IoError("no labelled examples to build a label map from");
  const bool integers = std::all_of(distinct.begin(), distinct.end(), is_class_integer);
  std::vector<std::string> names;
  if (integers) {
    // Integer labels are class ids already: keep them, naming any unused id below the largest.
    int64_t largest = 0;
    for (const auto& s : distinct) largest = std::max<int64_t>(largest, std::stoll(s));
    if (largest >= 100000)
      throw IoError("integer label " + std::to_string(largest) + " is too large for a class id");
    for (int64_t i = 0; i <= largest; ++i) names.push_back(std::to_string(i));
  } else {
    names.assign(distinct.begin(), distinct.end());  // std::set: sorted
  }
  LabelMap map(std::move(names), integers);
  assign_labels(examples, map);
  return map;
}

const std::string& LabelMap::name(int64_t id) const {
  if (id < 0 || id >= size())
    throw ConfigError("class id " + std::to_string(id) + " is outside the label map");
  return names_[size_t(id)];
}

std::optional<int64_t> LabelMap::find(const std::string& label) const {
  if (integer_labels_) {
    if (!is_class_integer(label)) return std::nullopt;
    const int64_t id = std::stoll(label);
    return id < size() ? std::optional<int64_t>(id) : std::nullopt;
  }
  auto it = std::lower_bound(names_.begin(), names_.end(), label);
  if (it != names_.end() && *it == label) return int64_t(it - names_.begin());
  // Maps loaded from a file need not be sorted.
  it = std::find(names_.begin(), names_.end(), label);
  return it == names_.end() ? std::nullopt : std::optional<int64_t>(it - names_.begin());
}

nlohmann::json LabelMap::to_json() const { return {{"labels", names_}, {"integer_labels", integer_labels_}}; }

LabelMap LabelMap::from_json(const nlohmann::json& j, const std::string& source) {
  if (!j.is_object() || !j.contains("labels") || !j["labels"].is_array() || j["labels"].empty())
    throw IoError(source + ": expected {\"labels\": [names by class id], \"integer_labels\": bool}");
  std::vector<std::string> names;
  std::set<std::string> seen;
  for (const auto& v : j["labels"]) {
    if (!v.is_string()) throw IoError(source + ": 'labels' must hold strings, got " + v.dump());
    if (!seen.insert(v.get<std::string>()).second)
      throw IoError(source + ": label '" + v.get<std::string>() + "' appears twice");
    names.push_back(v.get<std::string>());
  }
  const bool integers = j.value("integer_labels", false);
  return LabelMap(std::move(names), integers);
}

void LabelMap::save(const std::filesystem::path& file) const {
  train_detail::write_file_atomic(file, to_json().dump(2) + "\n");
}

LabelMap LabelMap::load(const std::filesystem::path& file) {
  return from_json(parse_json(train_detail::read_file(file), file.string()), file.string());
}

void assign_labels(std::vector<Example>& examples, const LabelMap& labels) {
  for (auto& ex : examples) {
    if (!ex.label) continue;
    auto id = labels.find(*ex.label);
    if (!id)
      throw IoError(ex.origin + ": unknown label '" + *ex.label +
                    "' (the training labels are: " + known_labels(labels.names()) + ")");
    ex.label_id = *id;
  }
}

}  // namespace deltatune::data
