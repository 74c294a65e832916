#pragma once
// Settings files users write by hand: JSON, or YAML (.yaml / .yml) for those who prefer it. Both come
// back as JSON so every consumer reads one form.
#include <filesystem>
#include <nlohmann/json.hpp>

namespace deltatune {

// Reads `file` as YAML when its extension is .yaml or .yml, else as JSON. YAML scalars become JSON
// numbers, booleans and nulls where they read as such (unquoted), strings otherwise. A missing file or
// a syntax error is an IoError naming the file (and the line for YAML).
nlohmann::json read_config_file(const std::filesystem::path& file);

}  // namespace deltatune
