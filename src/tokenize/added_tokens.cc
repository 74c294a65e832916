#include "tokenize/added_tokens.h"

#include <algorithm>

#include "tokenize/unicode.h"

namespace deltatune::tokenize {
namespace {

// The code point that ends just before byte `end` of valid UTF-8 text, and where it starts.
char32_t char_before(std::string_view text, size_t end, size_t& start) {
  start = end - 1;
  while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
  const std::u32string cps = decode_utf8(text.substr(start, end - start));
  return cps.empty() ? 0 : cps[0];
}

char32_t char_at(std::string_view text, size_t pos, size_t& end) {
  end = pos + 1;
  while (end < text.size() && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) ++end;
  const std::u32string cps = decode_utf8(text.substr(pos, end - pos));
  return cps.empty() ? 0 : cps[0];
}

bool is_word_char(char32_t c) { return is_letter(c) || is_number(c) || c == '_'; }

}  // namespace

void AddedVocabulary::add(AddedToken token) {
  if (const auto it = by_content_.find(token.content); it != by_content_.end()) {
    patterns_[it->second] = token.content;
    tokens_[it->second] = std::move(token);
  } else {
    by_content_[token.content] = tokens_.size();
    patterns_.push_back(token.content);
    tokens_.push_back(std::move(token));
  }
  reindex();
}

void AddedVocabulary::set_pattern(size_t index, std::string pattern) {
  patterns_[index] = std::move(pattern);
  reindex();
}

void AddedVocabulary::reindex() {
  by_id_.clear();
  for (size_t i = 0; i < tokens_.size(); ++i) by_id_[tokens_[i].id] = i;
  for (auto& by_byte : candidates_) {
    for (auto& list : by_byte) list.clear();
  }
  for (size_t i = 0; i < tokens_.size(); ++i) {
    if (patterns_[i].empty()) continue;
    candidates_[tokens_[i].normalized ? 1 : 0][static_cast<unsigned char>(patterns_[i][0])].push_back(i);
  }
  for (auto& by_byte : candidates_) {
    for (auto& list : by_byte) {
      std::stable_sort(list.begin(), list.end(),
                       [&](size_t a, size_t b) { return patterns_[a].size() > patterns_[b].size(); });
    }
  }
}

const AddedToken* AddedVocabulary::find(std::string_view content) const {
  const auto it = by_content_.find(content);
  return it == by_content_.end() ? nullptr : &tokens_[it->second];
}

const AddedToken* AddedVocabulary::find(int64_t id) const {
  const auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

bool AddedVocabulary::is_special(int64_t id) const {
  const AddedToken* token = find(id);
  return token != nullptr && token->special;
}

int64_t AddedVocabulary::max_id() const {
  int64_t max = -1;
  for (const auto& token : tokens_) max = std::max(max, token.id);
  return max;
}

std::vector<Segment> AddedVocabulary::split(std::string_view text, bool normalized) const {
  const auto& by_first_byte = candidates_[normalized ? 1 : 0];  // the first hit is the longest match
  std::vector<Segment> segments;
  const auto emit_text = [&](size_t from, size_t to) {
    if (to > from) segments.push_back({std::string(text.substr(from, to - from)), -1});
  };
  size_t emitted = 0;  // text before this byte is already in `segments`
  size_t pos = 0;
  while (pos < text.size()) {
    const auto& candidates = by_first_byte[static_cast<unsigned char>(text[pos])];
    const size_t* hit = nullptr;
    for (const size_t& index : candidates) {
      if (text.substr(pos).starts_with(patterns_[index])) {
        hit = &index;
        break;
      }
    }
    if (hit == nullptr) {
      ++pos;
      continue;
    }
    const AddedToken& token = tokens_[*hit];
    size_t start = pos, stop = pos + patterns_[*hit].size();
    if (token.single_word) {
      size_t unused;
      const bool word_before = start > 0 && is_word_char(char_before(text, start, unused));
      const bool word_after = stop < text.size() && is_word_char(char_at(text, stop, unused));
      if (word_before || word_after) {
        pos = stop;  // like a regex scan, the rejected match's bytes cannot start another match
        continue;
      }
    }
    if (token.lstrip) {
      size_t before;
      while (start > emitted && is_white_space(char_before(text, start, before))) start = before;
    }
    if (token.rstrip) {
      size_t after;
      while (stop < text.size() && is_white_space(char_at(text, stop, after))) stop = after;
    }
    emit_text(emitted, start);
    segments.push_back({std::string(text.substr(start, stop - start)), token.id});
    emitted = pos = stop;
  }
  emit_text(emitted, text.size());
  return segments;
}

}  // namespace deltatune::tokenize
