#pragma once
// The Hugging Face tokenizers pipeline that WordPiece and byte-level BPE share: cut out added tokens,
// normalise, pre-tokenise into words, run the subword model on each word, then add special tokens.
#include <string>
#include <string_view>
#include <vector>

#include "deltatune/tokenizer.h"
#include "tokenize/added_tokens.h"
#include "tokenize/config.h"
#include "tokenize/post_process.h"
#include "tokenize/vocab.h"

namespace deltatune::tokenize {

class PipelineTokenizer : public Tokenizer {
 public:
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = true) const final;
  // Every id the tokenizer can produce: the model's vocabulary and the added tokens.
  int64_t vocab_size() const final;
  int64_t token_to_id(std::string_view token) const final;
  std::string id_to_token(int64_t id) const final;

 protected:
  PipelineTokenizer(Vocab vocab, AddedVocabulary added, Template post)
      : vocab_(std::move(vocab)), added_(std::move(added)), template_(std::move(post)) {}

  Encoding tokenize(std::string_view text) const final;
  Encoding add_special_tokens(const Encoding& a, const Encoding* b) const final {
    return template_.apply(a, b);
  }

  virtual std::u32string normalize(std::u32string_view text) const { return std::u32string(text); }
  virtual std::vector<std::u32string> pre_tokenize(std::u32string_view text) const = 0;
  virtual void encode_word(std::u32string_view word, Encoding& out) const = 0;
  // The decoder: token strings back to text.
  virtual std::string decode_tokens(const std::vector<std::string>& tokens) const = 0;

  // Ends a subclass's constructor: normalised added tokens get their matching form, special token names
  // become ids, model_max_length is read. (It calls normalize(), so the subclass must be set up.)
  void finish_setup(const SpecialTokenNames& names, const TokenizerConfig& config);

  Vocab vocab_;
  AddedVocabulary added_;
  Template template_;
};

// tokenizer.json's "added_tokens" list.
AddedVocabulary parse_added_tokens(const nlohmann::json& list, const std::filesystem::path& file);

// The added tokens a folder without tokenizer.json implies: tokenizer_config.json's
// added_tokens_decoder, and each named special token that the vocabulary has.
AddedVocabulary implied_added_tokens(const TokenizerConfig& config, const SpecialTokenNames& names,
                                     const Vocab& vocab);

}  // namespace deltatune::tokenize
