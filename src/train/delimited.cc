#include "train/delimited.h"

#include "deltatune/error.h"

namespace deltatune::data::detail {

std::vector<Row> parse_delimited(std::string_view text, char delimiter, bool quoting,
                                 const std::string& source) {
  std::vector<Row> rows;
  Row row;
  std::string field;
  int64_t line = 1;
  row.line = 1;
  bool in_quotes = false, field_quoted = false, row_has_content = false;
  int64_t quote_line = 0;

  auto end_field = [&] {
    row.fields.push_back(std::move(field));
    field.clear();
    field_quoted = false;
  };
  auto end_row = [&] {
    end_field();
    // A line with nothing on it is not a row (trailing newlines, blank separators).
    if (row_has_content) rows.push_back(std::move(row));
    row = Row{};
    row_has_content = false;
  };

  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_quotes) {
      if (c == '"') {
        if (i + 1 < text.size() && text[i + 1] == '"') {
          field += '"';
          ++i;
        } else {
          in_quotes = false;
        }
      } else {
        if (c == '\n') ++line;
        field += c;
      }
      continue;
    }
    if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') continue;  // CRLF line ends
    if (c == '\n') {
      end_row();
      ++line;
      row.line = line;
      continue;
    }
    row_has_content = true;
    if (c == delimiter) {
      end_field();
    } else if (quoting && c == '"' && field.empty() && !field_quoted) {
      in_quotes = field_quoted = true;
      quote_line = line;
    } else {
      field += c;
    }
  }
  if (in_quotes)
    throw IoError(source + ":" + std::to_string(quote_line) +
                  ": a quoted field is never closed (missing '\"')");
  end_row();
  return rows;
}

}  // namespace deltatune::data::detail
