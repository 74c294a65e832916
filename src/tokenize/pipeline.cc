#include "tokenize/pipeline.h"

#include <algorithm>

#include "tokenize/unicode.h"

namespace deltatune::tokenize {

Encoding PipelineTokenizer::tokenize(std::string_view text) const {
  Encoding out;
  const auto append_added = [&](const Segment& segment) {
    out.append(segment.added_id, id_to_token(segment.added_id));
  };
  // Tokens matched in the raw text first, then (after normalising what is left) the normalised ones.
  for (const Segment& raw : added_.split(utf8_lossy(text), /*normalized=*/false)) {
    if (raw.added_id >= 0) {
      append_added(raw);
      continue;
    }
    const std::string normalized = encode_utf8(normalize(decode_utf8(raw.text)));
    for (const Segment& piece : added_.split(normalized, /*normalized=*/true)) {
      if (piece.added_id >= 0) {
        append_added(piece);
        continue;
      }
      for (const std::u32string& word : pre_tokenize(decode_utf8(piece.text))) encode_word(word, out);
    }
  }
  return out;
}

std::string PipelineTokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int64_t id : ids) {
    if (skip_special_tokens && added_.is_special(id)) continue;
    std::string token = id_to_token(id);
    if (!token.empty()) tokens.push_back(std::move(token));  // ids out of range are dropped
  }
  return decode_tokens(tokens);
}

int64_t PipelineTokenizer::vocab_size() const { return std::max(vocab_.size(), added_.max_id() + 1); }

int64_t PipelineTokenizer::token_to_id(std::string_view token) const {
  if (const AddedToken* added = added_.find(token)) return added->id;
  return vocab_.find(token);
}

std::string PipelineTokenizer::id_to_token(int64_t id) const {
  if (const AddedToken* added = added_.find(id)) return added->content;
  return vocab_.token(id);
}

void PipelineTokenizer::finish_setup(const SpecialTokenNames& names, const TokenizerConfig& config) {
  for (size_t i = 0; i < added_.tokens().size(); ++i) {
    const AddedToken& token = added_.tokens()[i];
    if (token.normalized) added_.set_pattern(i, encode_utf8(normalize(decode_utf8(token.content))));
  }
  const auto id_of = [&](const std::optional<std::string>& name) { return name ? token_to_id(*name) : -1; };
  special_.pad = id_of(names.pad);
  special_.unk = id_of(names.unk);
  special_.bos = id_of(names.bos);
  special_.eos = id_of(names.eos);
  special_.cls = id_of(names.cls);
  special_.sep = id_of(names.sep);
  special_.mask = id_of(names.mask);
  model_max_length_ = config.model_max_length();
}

AddedVocabulary parse_added_tokens(const nlohmann::json& list, const std::filesystem::path& file) {
  AddedVocabulary added;
  if (list.is_null()) return added;
  if (!list.is_array()) throw IoError(file.string() + ": added_tokens is not a list");
  for (const nlohmann::json& entry : list)
    added.add(parse_added_token(entry, parse_token_id(entry.at("id"), file)));
  return added;
}

AddedVocabulary implied_added_tokens(const TokenizerConfig& config, const SpecialTokenNames& names,
                                     const Vocab& vocab) {
  AddedVocabulary added;
  for (const std::optional<std::string>& name :
       {names.pad, names.unk, names.bos, names.eos, names.cls, names.sep, names.mask}) {
    if (!name || added.find(*name) != nullptr) continue;
    const int64_t id = vocab.find(*name);
    if (id >= 0) added.add({*name, id, /*special=*/true, /*normalized=*/false});
  }
  for (AddedToken& token : config.added_tokens()) added.add(std::move(token));
  return added;
}

}  // namespace deltatune::tokenize
