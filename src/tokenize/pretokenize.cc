#include "tokenize/pretokenize.h"

#include "tokenize/unicode.h"

namespace deltatune::tokenize {
namespace {

constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr std::string_view kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// A matcher returns the end of its match starting at `i`, or 0 when it does not match there
// (every match is non-empty, so 0 is never a real end). Alternatives are tried in the regex's order.
class Matcher {
 public:
  explicit Matcher(std::u32string_view text) : s_(text) {}

  bool at(size_t i, auto predicate) const { return i < s_.size() && predicate(s_[i]); }
  size_t run(size_t i, auto predicate) const {
    while (at(i, predicate)) ++i;
    return i;
  }

  // 's|'t|'re|'ve|'m|'ll|'d, optionally ignoring case.
  size_t contraction(size_t i, bool ignore_case) const {
    if (!at(i, [](char32_t c) { return c == '\''; })) return 0;
    const auto lower = [&](size_t k) -> char32_t {
      if (k >= s_.size()) return 0;
      const char32_t c = s_[k];
      return ignore_case && c >= 'A' && c <= 'Z' ? c + 32 : c;
    };
    const char32_t a = lower(i + 1), b = lower(i + 2);
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
    if ((a == 'r' || a == 'v') && b == 'e') return i + 3;
    if (a == 'l' && b == 'l') return i + 3;
    return 0;
  }

  // <optional prefix char>(class)+ : the prefix is taken only when the class follows it.
  size_t prefixed_run(size_t i, auto prefix, auto predicate) const {
    if (at(i, prefix) && at(i + 1, predicate)) return run(i + 1, predicate);
    if (at(i, predicate)) return run(i, predicate);
    return 0;
  }

  // \s+(?!\S) then \s+ : a whitespace run, leaving its last character to the next word when one follows.
  size_t whitespace(size_t i) const {
    const size_t end = run(i, is_regex_space);
    if (end == i) return 0;
    if (end == s_.size() || end - i == 1) return end;
    return end - 1;
  }

  char32_t operator[](size_t i) const { return s_[i]; }
  size_t size() const { return s_.size(); }

 private:
  std::u32string_view s_;
};

bool is_other(char32_t c) { return !is_regex_space(c) && !is_letter(c) && !is_number(c); }
bool is_space_char(char32_t c) { return c == ' '; }
bool is_newline(char32_t c) { return c == '\r' || c == '\n'; }

size_t match_gpt2(const Matcher& m, size_t i) {
  if (size_t end = m.contraction(i, false)) return end;
  if (size_t end = m.prefixed_run(i, is_space_char, is_letter)) return end;
  if (size_t end = m.prefixed_run(i, is_space_char, is_number)) return end;
  if (size_t end = m.prefixed_run(i, is_space_char, is_other)) return end;
  return m.whitespace(i);
}

// Llama 3's regex, and Qwen2's: the same but for how many digits a number piece takes.
size_t match_llama3(const Matcher& m, size_t i, size_t max_digits) {
  if (size_t end = m.contraction(i, true)) return end;
  const auto letter_prefix = [](char32_t c) { return !is_newline(c) && !is_letter(c) && !is_number(c); };
  if (size_t end = m.prefixed_run(i, letter_prefix, is_letter)) return end;
  if (m.at(i, is_number)) {  // \p{N}{1,max_digits}
    size_t end = i + 1;
    while (end < i + max_digits && m.at(end, is_number)) ++end;
    return end;
  }
  if (size_t end = m.prefixed_run(i, is_space_char, is_other)) return m.run(end, is_newline);
  // \s*[\r\n]+ : backtracking makes it end just after the run's last newline.
  const size_t space_end = m.run(i, is_regex_space);
  for (size_t k = space_end; k > i; --k) {
    if (is_newline(m[k - 1])) return k;
  }
  return m.whitespace(i);
}

}  // namespace

std::optional<SplitRegex> find_split_regex(std::string_view pattern) {
  if (pattern == kGpt2Pattern) return SplitRegex::Gpt2;
  if (pattern == kLlama3Pattern) return SplitRegex::Llama3;
  if (pattern == kQwen2Pattern) return SplitRegex::Qwen2;
  return std::nullopt;
}

std::string_view split_regex_pattern(SplitRegex regex) {
  switch (regex) {
    case SplitRegex::Gpt2:
      return kGpt2Pattern;
    case SplitRegex::Llama3:
      return kLlama3Pattern;
    case SplitRegex::Qwen2:
      return kQwen2Pattern;
  }
  return {};
}

std::vector<std::u32string> split_with_regex(std::u32string_view text, SplitRegex regex) {
  std::vector<std::u32string> pieces;
  const Matcher matcher(text);
  for (size_t i = 0; i < text.size();) {
    size_t end = regex == SplitRegex::Gpt2     ? match_gpt2(matcher, i)
                 : regex == SplitRegex::Llama3 ? match_llama3(matcher, i, 3)
                                               : match_llama3(matcher, i, 1);
    if (end <= i) end = i + 1;  // unreachable: the last alternative matches any whitespace
    pieces.emplace_back(text.substr(i, end - i));
    i = end;
  }
  return pieces;
}

std::vector<std::u32string> split_bert_words(std::u32string_view text) {
  std::vector<std::u32string> words;
  std::u32string word;
  const auto flush = [&] {
    if (!word.empty()) words.push_back(std::move(word));
    word.clear();
  };
  for (char32_t c : text) {
    if (is_white_space(c)) {
      flush();
    } else if (is_bert_punctuation(c)) {
      flush();
      words.emplace_back(1, c);
    } else {
      word.push_back(c);
    }
  }
  flush();
  return words;
}

}  // namespace deltatune::tokenize
