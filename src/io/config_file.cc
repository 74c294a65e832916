// JSON and YAML settings files, both read into nlohmann::json (YAML through yaml-cpp).
#include "deltatune/config_file.h"

#include <utf8proc.h>
#include <yaml-cpp/yaml.h>

#include <fstream>
#include <string>

#include "deltatune/error.h"
#include "deltatune/json_file.h"

namespace deltatune {
namespace {

// yaml-cpp passes any bytes through, but a JSON string must be UTF-8 or the settings could not be
// written back (train_config.json): refuse such text here, with its line.
const std::string& utf8_text(const std::string& text, const YAML::Mark& mark) {
  const auto* bytes = reinterpret_cast<const utf8proc_uint8_t*>(text.data());
  for (utf8proc_ssize_t at = 0, n = utf8proc_ssize_t(text.size()); at < n;) {
    utf8proc_int32_t cp;
    const utf8proc_ssize_t used = utf8proc_iterate(bytes + at, n - at, &cp);
    if (used <= 0) throw YAML::Exception(mark, "text that is not valid UTF-8");
    at += used;
  }
  return text;
}

// A plain (unquoted) YAML scalar as the JSON value it reads as: YAML 1.2's core schema.
nlohmann::json scalar(const YAML::Node& node) {
  const std::string& text = utf8_text(node.Scalar(), node.Mark());
  if (node.Tag() == "!") return text;  // quoted: always a string
  if (text == "true" || text == "True" || text == "TRUE") return true;
  if (text == "false" || text == "False" || text == "FALSE") return false;
  if (text.empty() || text == "~" || text == "null" || text == "Null" || text == "NULL") return nullptr;
  try {
    size_t used = 0;
    const long long i = std::stoll(text, &used);
    if (used == text.size()) return i;
  } catch (const std::exception&) {
  }
  try {
    size_t used = 0;
    const double d = std::stod(text, &used);
    if (used == text.size()) return d;
  } catch (const std::exception&) {
  }
  return text;
}

nlohmann::json to_json(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      return nullptr;
    case YAML::NodeType::Scalar:
      return scalar(node);
    case YAML::NodeType::Sequence: {
      nlohmann::json out = nlohmann::json::array();
      for (const auto& item : node) out.push_back(to_json(item));
      return out;
    }
    case YAML::NodeType::Map: {
      nlohmann::json out = nlohmann::json::object();
      for (const auto& kv : node)
        out[utf8_text(kv.first.as<std::string>(), kv.first.Mark())] = to_json(kv.second);
      return out;
    }
  }
  return nullptr;
}

}  // namespace

nlohmann::json read_config_file(const std::filesystem::path& file) {
  const std::string ext = file.extension().string();
  if (ext == ".yaml" || ext == ".yml") {
    std::ifstream in(file);
    if (!in) throw IoError(file.string() + ": cannot be read");
    try {
      return to_json(YAML::Load(in));
    } catch (const YAML::Exception& e) {
      throw IoError(file.string() + ":" + std::to_string(e.mark.line + 1) + ": not valid YAML: " + e.msg);
    }
  }
  return read_json_file(file);  // names a missing or unreadable file itself
}

}  // namespace deltatune
