#pragma once
// Rows of CSV (RFC 4180: quoted fields, "" escapes, newlines inside quotes) and TSV (tab-separated,
// no quoting, as GLUE's files are) text, each with the line it starts on for error messages.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace deltatune::data::detail {

struct Row {
  std::vector<std::string> fields;
  int64_t line = 0;  // 1-based line where the row starts
};

// Splits `text` into rows. Blank lines are skipped. An unterminated quote is an IoError naming
// `source` and the line where the quoted field began.
std::vector<Row> parse_delimited(std::string_view text, char delimiter, bool quoting,
                                 const std::string& source);

}  // namespace deltatune::data::detail
