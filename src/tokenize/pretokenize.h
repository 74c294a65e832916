#pragma once
// Pre-tokenisation: cutting normalised text into words before the subword model sees it.
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace deltatune::tokenize {

// The regexes byte-level BPE tokenizers split with, matched by hand (std::regex has no \p{L}).
enum class SplitRegex {
  // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  Gpt2,
  // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|
  // \s+(?!\S)|\s+
  Llama3,
  // Qwen2: Llama 3's with single digits (\p{N} for \p{N}{1,3})
  Qwen2,
};

// The SplitRegex whose pattern is exactly `pattern` (as written in tokenizer.json), if any.
std::optional<SplitRegex> find_split_regex(std::string_view pattern);
// The pattern of `regex`, as tokenizer.json writes it.
std::string_view split_regex_pattern(SplitRegex regex);

// The successive matches of the regex; together they cover the whole text.
std::vector<std::u32string> split_with_regex(std::u32string_view text, SplitRegex regex);

// BERT's pre-tokeniser: drops whitespace, and makes every punctuation character a word of its own.
std::vector<std::u32string> split_bert_words(std::u32string_view text);

}  // namespace deltatune::tokenize
