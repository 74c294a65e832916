// Reading labelled examples from JSONL, CSV and TSV files.
#include <algorithm>
#include <nlohmann/json.hpp>

#include "deltatune/data.h"
#include "deltatune/error.h"
#include "deltatune/json_file.h"
#include "train/delimited.h"
#include "train/files.h"

namespace fs = std::filesystem;

namespace deltatune::data {
namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  return s;
}

// Excel and Notepad write a UTF-8 byte order mark; it would otherwise stick to the first key.
std::string_view without_bom(std::string_view text) {
  if (text.size() >= 3 && text.substr(0, 3) == "\xEF\xBB\xBF") text.remove_prefix(3);
  return text;
}

// A JSON label as text: strings as they are, integers as their digits. Floats and other types are
// rejected because a classifier cannot use them.
std::string label_text(const nlohmann::json& value, const std::string& where, const std::string& field) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_number_integer()) return std::to_string(value.get<int64_t>());
  if (value.is_boolean()) return value.get<bool>() ? "1" : "0";
  throw IoError(where + ": field '" + field + "' must be a string or an integer label, got " + value.dump());
}

std::vector<Example> read_jsonl(const fs::path& file, std::string_view text, const Fields& fields,
                                bool labels_optional) {
  std::vector<Example> examples;
  int64_t line_no = 0;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(start, end - start);
    start = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.find_first_not_of(" \t") == std::string_view::npos) {
      if (end == text.size()) break;
      continue;
    }
    const std::string where = file.string() + ":" + std::to_string(line_no);
    const nlohmann::json j = parse_json(line, where);
    if (!j.is_object())
      throw IoError(where + ": expected a JSON object per line, got " + std::string(j.type_name()));
    Example ex;
    ex.origin = where;
    auto text_it = j.find(fields.text);
    if (text_it == j.end()) throw IoError(where + ": missing field '" + fields.text + "'");
    if (!text_it->is_string()) throw IoError(where + ": field '" + fields.text + "' must be a string");
    ex.text = text_it->get<std::string>();
    if (auto it = j.find(fields.text_pair); it != j.end() && !it->is_null()) {
      if (!it->is_string()) throw IoError(where + ": field '" + fields.text_pair + "' must be a string");
      ex.text_pair = it->get<std::string>();
    }
    if (auto it = j.find(fields.label); it != j.end() && !it->is_null()) {
      ex.label = label_text(*it, where, fields.label);
    } else if (!labels_optional) {
      throw IoError(where + ": missing field '" + fields.label + "'");
    }
    examples.push_back(std::move(ex));
    if (end == text.size()) break;
  }
  return examples;
}

std::vector<Example> read_table(const fs::path& file, std::string_view text, char delimiter,
                                const Fields& fields, bool labels_optional) {
  const bool quoting = delimiter == ',';
  std::vector<detail::Row> rows = detail::parse_delimited(text, delimiter, quoting, file.string());
  if (rows.empty()) return {};
  const detail::Row& header = rows.front();
  auto column = [&](const std::string& name) -> int64_t {
    auto it = std::find(header.fields.begin(), header.fields.end(), name);
    return it == header.fields.end() ? -1 : int64_t(it - header.fields.begin());
  };
  const int64_t text_col = column(fields.text), pair_col = column(fields.text_pair),
                label_col = column(fields.label);
  std::string columns;
  for (const auto& h : header.fields) columns += (columns.empty() ? "" : ", ") + h;
  const std::string head_where = file.string() + ":" + std::to_string(header.line);
  if (text_col < 0)
    throw IoError(head_where + ": the header has no column '" + fields.text + "' (columns: " + columns + ")");
  if (label_col < 0 && !labels_optional)
    throw IoError(head_where + ": the header has no column '" + fields.label + "' (columns: " + columns +
                  ")");

  std::vector<Example> examples;
  for (size_t r = 1; r < rows.size(); ++r) {
    const detail::Row& row = rows[r];
    const std::string where = file.string() + ":" + std::to_string(row.line);
    if (row.fields.size() != header.fields.size())
      throw IoError(where + ": " + std::to_string(row.fields.size()) + " columns but the header has " +
                    std::to_string(header.fields.size()));
    Example ex;
    ex.origin = where;
    ex.text = row.fields[size_t(text_col)];
    if (pair_col >= 0) ex.text_pair = row.fields[size_t(pair_col)];
    if (label_col >= 0 && !row.fields[size_t(label_col)].empty()) {
      ex.label = row.fields[size_t(label_col)];
    } else if (!labels_optional) {
      throw IoError(where + ": missing value in column '" + fields.label + "'");
    }
    examples.push_back(std::move(ex));
  }
  return examples;
}

}  // namespace

std::vector<Example> read_examples(const fs::path& file, const Fields& fields, bool labels_optional) {
  const std::string content = train_detail::read_file(file);
  const std::string_view text = without_bom(content);
  const std::string ext = lower(file.extension().string());
  std::vector<Example> examples;
  if (ext == ".csv")
    examples = read_table(file, text, ',', fields, labels_optional);
  else if (ext == ".tsv")
    examples = read_table(file, text, '\t', fields, labels_optional);
  else if (ext == ".jsonl" || ext == ".json" || ext == ".ndjson")
    examples = read_jsonl(file, text, fields, labels_optional);
  else
    throw IoError(file.string() + ": unknown data format '" + ext + "' (expected .jsonl, .csv or .tsv)");
  if (examples.empty()) throw IoError(file.string() + ": no examples (the file is empty)");
  return examples;
}

}  // namespace deltatune::data
