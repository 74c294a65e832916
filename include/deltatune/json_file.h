#pragma once
// JSON read from files and lines written by others. nlohmann::json reports malformed text as
// parse_error but a number beyond double's range ("9e308") as out_of_range; both are bad input, so
// every reader goes through these two and gets one IoError naming where the text came from.
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace deltatune {

// `text` parsed as JSON; any malformed input is an IoError "WHERE: not valid JSON (...)". `where` names
// the source: a file, "file:line", or "the request body".
nlohmann::json parse_json(std::string_view text, const std::string& where);

// The whole file parsed as JSON; a file that cannot be opened or is malformed is an IoError naming it.
nlohmann::json read_json_file(const std::filesystem::path& file);

}  // namespace deltatune
