// One way to parse JSON from outside, so no nlohmann exception escapes as an internal error.
#include "deltatune/json_file.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "deltatune/error.h"

namespace deltatune {

nlohmann::json parse_json(std::string_view text, const std::string& where) {
  try {
    return nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::exception& e) {  // parse_error, and out_of_range for huge numbers
    throw IoError(where + ": not valid JSON (" + e.what() + ")");
  }
}

nlohmann::json read_json_file(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw IoError(file.string() + ": cannot be read: " + std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  return parse_json(text.str(), file.string());
}

}  // namespace deltatune
