#include "tokenize/post_process.h"

#include "deltatune/error.h"

namespace deltatune::tokenize {
namespace {

using nlohmann::json;

TemplatePiece special(int64_t id, const std::string& token, int64_t type_id) {
  return {-1, id, token, type_id};
}

TemplatePiece sequence(int which, int64_t type_id) { return {which, -1, "", type_id}; }

[[noreturn]] void fail(const std::filesystem::path& file, const std::string& what) {
  throw IoError(file.string() + ": post_processor: " + what);
}

// A [token, id] pair as BertProcessing and RobertaProcessing write them.
std::pair<std::string, int64_t> token_and_id(const json& spec, const char* key,
                                             const std::filesystem::path& file) {
  const json& pair = spec.at(key);
  if (!pair.is_array() || pair.size() != 2) fail(file, std::string("\"") + key + "\" is not [token, id]");
  return {pair[0].get<std::string>(), pair[1].get<int64_t>()};
}

// One side ("single" or "pair") of a TemplateProcessing spec.
std::vector<TemplatePiece> parse_template_side(const json& items, const json& special_tokens,
                                               const std::filesystem::path& file) {
  std::vector<TemplatePiece> pieces;
  for (const json& item : items) {
    if (item.contains("Sequence")) {
      const json& s = item["Sequence"];
      const std::string which = s.at("id").get<std::string>();
      if (which != "A" && which != "B") fail(file, "unknown sequence id \"" + which + "\"");
      pieces.push_back(sequence(which == "A" ? 0 : 1, s.value("type_id", int64_t{0})));
    } else if (item.contains("SpecialToken")) {
      const json& s = item["SpecialToken"];
      const std::string name = s.at("id").get<std::string>();
      if (!special_tokens.contains(name)) fail(file, "special token \"" + name + "\" is not defined");
      const json& def = special_tokens[name];
      const json& ids = def.at("ids");
      const json& tokens = def.at("tokens");
      for (size_t i = 0; i < ids.size(); ++i) {
        pieces.push_back(special(ids[i].get<int64_t>(),
                                 i < tokens.size() ? tokens[i].get<std::string>() : name,
                                 s.value("type_id", int64_t{0})));
      }
    } else {
      fail(file, "a template item is neither Sequence nor SpecialToken");
    }
  }
  return pieces;
}

}  // namespace

Encoding Template::apply(const Encoding& a, const Encoding* b) const {
  Encoding out;
  for (const TemplatePiece& piece : b != nullptr ? pair : single) {
    if (piece.sequence < 0) {
      out.append(piece.id, piece.token, piece.type_id);
      continue;
    }
    const Encoding& part = piece.sequence == 0 ? a : *b;
    for (size_t i = 0; i < part.size(); ++i) out.append(part.ids[i], part.tokens[i], piece.type_id);
  }
  return out;
}

int64_t Template::added(bool is_pair) const {
  int64_t n = 0;
  for (const TemplatePiece& piece : is_pair ? pair : single) n += piece.sequence < 0 ? 1 : 0;
  return n;
}

Template Template::bert(int64_t cls, const std::string& cls_token, int64_t sep,
                        const std::string& sep_token) {
  Template t;
  t.single = {special(cls, cls_token, 0), sequence(0, 0), special(sep, sep_token, 0)};
  t.pair = {special(cls, cls_token, 0), sequence(0, 0), special(sep, sep_token, 0), sequence(1, 1),
            special(sep, sep_token, 1)};
  return t;
}

Template Template::roberta(int64_t cls, const std::string& cls_token, int64_t sep,
                           const std::string& sep_token) {
  Template t;
  t.single = {special(cls, cls_token, 0), sequence(0, 0), special(sep, sep_token, 0)};
  t.pair = {special(cls, cls_token, 0), sequence(0, 0), special(sep, sep_token, 0),
            special(sep, sep_token, 0), sequence(1, 0), special(sep, sep_token, 0)};
  return t;
}

Template Template::bos_eos(int64_t bos, const std::string& bos_token, int64_t eos,
                           const std::string& eos_token) {
  Template t;
  t.single.clear();
  t.pair.clear();
  for (int which = 0; which < 2; ++which) {
    std::vector<TemplatePiece> part;
    if (bos >= 0) part.push_back(special(bos, bos_token, which));
    part.push_back(sequence(which, which));
    if (eos >= 0) part.push_back(special(eos, eos_token, which));
    if (which == 0) t.single = part;
    t.pair.insert(t.pair.end(), part.begin(), part.end());
  }
  return t;
}

Template parse_post_processor(const json& spec, const std::filesystem::path& file) {
  if (spec.is_null()) return Template{};
  if (!spec.is_object()) fail(file, "not an object");
  const std::string type = spec.value("type", "");
  if (type == "ByteLevel") return Template{};  // only adjusts offsets, which we do not report
  if (type == "TemplateProcessing") {
    Template t;
    const json& special_tokens = spec.contains("special_tokens") ? spec["special_tokens"] : json::object();
    t.single = parse_template_side(spec.at("single"), special_tokens, file);
    t.pair = parse_template_side(spec.at("pair"), special_tokens, file);
    return t;
  }
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    const auto [cls_token, cls] = token_and_id(spec, "cls", file);
    const auto [sep_token, sep] = token_and_id(spec, "sep", file);
    return type == "BertProcessing" ? Template::bert(cls, cls_token, sep, sep_token)
                                    : Template::roberta(cls, cls_token, sep, sep_token);
  }
  if (type == "Sequence") {
    Template result;
    for (const json& step : spec.at("processors")) {
      const Template t = parse_post_processor(step, file);
      if (t.added(false) > 0 || t.added(true) > 0) result = t;  // the step that adds special tokens
    }
    return result;
  }
  fail(file, "unsupported type \"" + type + "\"");
}

}  // namespace deltatune::tokenize
