// Arbitrary bytes as text (invalid UTF-8 included) through the three tokenizer families of the mini
// models (WordPiece, byte-level BPE, SentencePiece): encode, encode as a pair, decode the ids again.
#include <memory>
#include <vector>

#include "deltatune/tokenizer.h"
#include "fuzz_input.h"

namespace {
const std::vector<std::unique_ptr<deltatune::Tokenizer>>& tokenizers() {
  static const auto all = [] {
    std::vector<std::unique_ptr<deltatune::Tokenizer>> t;
    for (const char* name : {"bert-mini", "gpt2-mini", "llama-mini"})
      t.push_back(deltatune::Tokenizer::load(std::filesystem::path(DELTATUNE_ASSETS) / "models" / name));
    return t;
  }();
  return all;
}
}  // namespace

FUZZ_BUILD_BEFORE_FIRST_INPUT(tokenizers())

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text = fuzz::bytes_of(data, size);
  const std::string_view half = text.substr(0, size / 2);
  for (const auto& tok : tokenizers()) {
    fuzz::refuse_or_read([&] {
      const deltatune::Encoding e = tok->encode(text);
      (void)tok->decode(e.ids, false);
      (void)tok->encode_pair(half, text.substr(half.size()));
    });
  }
  return 0;
}
