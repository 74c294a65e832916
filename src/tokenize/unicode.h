#pragma once
// The Unicode questions tokenizers ask, answered by utf8proc so they follow the Unicode tables and not
// the C locale. Each predicate names the library whose definition it copies, since they differ.
#include <string>
#include <string_view>
#include <vector>

namespace deltatune::tokenize {

// UTF-8 to code points; each invalid byte becomes U+FFFD, so any input can be tokenized.
std::u32string decode_utf8(std::string_view text);
std::string encode_utf8(std::u32string_view text);
void append_utf8(std::string& out, char32_t cp);
// Bytes to text the way Rust's String::from_utf8_lossy does (one U+FFFD per bad sequence).
std::string utf8_lossy(std::string_view bytes);

bool is_letter(char32_t c);           // \p{L}
bool is_number(char32_t c);           // \p{N}
bool is_mark_nonspacing(char32_t c);  // Mn, what stripping accents removes after NFD
// Oniguruma's \s (the regex engine of HF tokenizers): \t-\r, U+0085, and the Zs, Zl, Zp categories.
bool is_regex_space(char32_t c);
// Rust's char::is_whitespace (the White_Space property), used by BERT's normaliser and pre-tokeniser.
bool is_white_space(char32_t c);
// BERT's control characters: the Unicode "Other" categories (Cc, Cf, Cn, Co, Cs) except \t \n \r.
bool is_bert_control(char32_t c);
// BERT's punctuation: the P* categories plus every ASCII non-alphanumeric symbol ($, +, <, ^, `, ...).
bool is_bert_punctuation(char32_t c);
// The CJK ideograph blocks BERT puts spaces around (HF tokenizers' table: it starts Extension E at U+2B920).
bool is_cjk_ideograph(char32_t c);

// Canonical decomposition (NFD).
std::u32string nfd(std::u32string_view text);
// Canonical composition (NFC).
std::u32string nfc(std::u32string_view text);
// Full lowercase mapping, like Rust's char::to_lowercase (İ becomes "i̇").
void append_lowercase(std::u32string& out, char32_t c);

}  // namespace deltatune::tokenize
