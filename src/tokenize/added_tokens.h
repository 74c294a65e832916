#pragma once
// Added tokens ([CLS], <|endoftext|>, ...): strings that are cut out of the text whole, before the
// subword model runs, as Hugging Face tokenizers' AddedVocabulary does.
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenize/vocab.h"

namespace deltatune::tokenize {

struct AddedToken {
  std::string content;
  int64_t id = -1;
  bool special = false;      // skipped by decode(skip_special_tokens = true)
  bool normalized = false;   // matched in the normalised text rather than the raw text
  bool lstrip = false;       // swallows the whitespace on its left
  bool rstrip = false;       // ... and on its right
  bool single_word = false;  // only matches when not inside a word
};

// A piece of text between added tokens (added_id == -1), or one added token.
struct Segment {
  std::string text;
  int64_t added_id = -1;
};

class AddedVocabulary {
 public:
  // A token with the same content replaces the earlier one.
  void add(AddedToken token);
  // Sets the form a `normalized` token is matched by (its content after the tokenizer's normaliser).
  void set_pattern(size_t index, std::string pattern);

  const std::vector<AddedToken>& tokens() const { return tokens_; }
  const AddedToken* find(std::string_view content) const;
  const AddedToken* find(int64_t id) const;
  bool is_special(int64_t id) const;
  int64_t max_id() const;  // -1 when empty

  // Cuts out the tokens whose `normalized` flag equals `normalized`, matching the leftmost and then
  // longest one at each step. Empty text segments are dropped.
  std::vector<Segment> split(std::string_view text, bool normalized) const;

 private:
  void reindex();

  std::vector<AddedToken> tokens_;
  std::vector<std::string> patterns_;  // what each token is matched by
  StringMap<size_t> by_content_;
  std::unordered_map<int64_t, size_t> by_id_;
  // For each `normalized` flag and first byte, the tokens that can match there, longest pattern first.
  std::array<std::array<std::vector<size_t>, 256>, 2> candidates_;
};

}  // namespace deltatune::tokenize
