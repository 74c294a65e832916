#pragma once
// Tokenizers that give exactly the ids Hugging Face transformers gives for the same checkpoint folder:
// WordPiece (BERT), byte-level BPE (GPT-2, RoBERTa, Llama 3, Qwen2) and SentencePiece (Llama 1/2).
//
//   auto tok = deltatune::Tokenizer::load("assets/models/bert-mini");
//   Encoding e = tok->encode("Hello world");             // [CLS] hello world [SEP]
//   BatchEncoding b = tok->encode_batch(texts, nullptr, 128, true);
//
// A tokenizer is immutable after load(); every method is const and safe to call from many threads.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace deltatune {

// One encoded text (or text pair): ids, their token strings, and the segment (0 = first, 1 = second).
struct Encoding {
  std::vector<int64_t> ids;
  std::vector<std::string> tokens;
  std::vector<int64_t> type_ids;

  size_t size() const { return ids.size(); }
  void append(int64_t id, std::string token, int64_t type_id = 0);
  void append(const Encoding& other);
};

// A batch ready for a model: one row per text, all rows the same length when padded.
struct BatchEncoding {
  std::vector<std::vector<int64_t>> input_ids;
  std::vector<std::vector<int64_t>> attention_mask;  // 1 for real tokens, 0 for padding
  std::vector<std::vector<int64_t>> token_type_ids;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Loads the tokenizer of a Hugging Face checkpoint folder. Picks, in order: tokenizer.json (WordPiece or
  // BPE model), vocab.json + merges.txt, vocab.txt, tokenizer.model; tokenizer_config.json refines it.
  // A GGUF file instead of a folder: the tokenizer of its tokenizer.ggml.* metadata (llama.cpp's
  // "llama" SentencePiece vocabulary, or its "gpt2" byte-level BPE one).
  // Throws IoError when the folder has none of these or a file is malformed.
  static std::unique_ptr<Tokenizer> load(const std::filesystem::path& dir);

  // Special tokens ([CLS]/[SEP], BOS/EOS) are added as the checkpoint's post-processing asks.
  Encoding encode(std::string_view text, bool add_special_tokens = true) const;
  // A text pair, e.g. [CLS] a [SEP] b [SEP]; type_ids are 0 for the first part and 1 for the second.
  Encoding encode_pair(std::string_view a, std::string_view b, bool add_special_tokens = true) const;

  // Encodes many texts (and, when `pairs` is given, one pair text per text). max_length > 0 truncates
  // each row to that many ids, special tokens included, cutting the longer text of a pair first (HF
  // "longest_first"). pad = true pads every row on the right to the longest row, with pad_id() (or
  // eos_id(), or 0, when the tokenizer has no pad token).
  BatchEncoding encode_batch(const std::vector<std::string>& texts,
                             const std::vector<std::string>* pairs = nullptr, int64_t max_length = 0,
                             bool pad = true) const;

  // Ids back to text: byte-level BPE restores the UTF-8 bytes, WordPiece joins "##" pieces.
  virtual std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = true) const = 0;
  // The text `continuation` adds after `prompt`, decoded in the prompt's context as transformers'
  // text-generation pipeline does (decode both, drop the decoded prompt's text). Decoded alone, a
  // SentencePiece word would lose its leading space and a WordPiece "##" piece its join.
  std::string decode_continuation(const std::vector<int64_t>& prompt,
                                  const std::vector<int64_t>& continuation,
                                  bool skip_special_tokens = true) const;

  virtual int64_t vocab_size() const = 0;
  virtual int64_t token_to_id(std::string_view token) const = 0;  // -1 when not in the vocabulary
  virtual std::string id_to_token(int64_t id) const = 0;          // "" when out of range
  virtual std::string kind() const = 0;                           // "wordpiece", "bpe", "sentencepiece"

  // Special token ids, -1 when the tokenizer has no such token.
  int64_t pad_id() const { return special_.pad; }
  int64_t unk_id() const { return special_.unk; }
  int64_t bos_id() const { return special_.bos; }
  int64_t eos_id() const { return special_.eos; }
  int64_t cls_id() const { return special_.cls; }
  int64_t sep_id() const { return special_.sep; }
  int64_t mask_id() const { return special_.mask; }
  // tokenizer_config.json's model_max_length, -1 when absent or "unbounded" (HF's 1e30 sentinel).
  int64_t model_max_length() const { return model_max_length_; }
  // How many ids encode() / encode_pair() add around the text(s).
  int64_t num_special_tokens(bool pair) const;

 protected:
  struct SpecialIds {
    int64_t pad = -1, unk = -1, bos = -1, eos = -1, cls = -1, sep = -1, mask = -1;
  };

  // The text's tokens with no special tokens, all type id 0.
  virtual Encoding tokenize(std::string_view text) const = 0;
  // Adds the special tokens around one text or a pair (b's type ids are already 1).
  virtual Encoding add_special_tokens(const Encoding& a, const Encoding* b) const = 0;

  SpecialIds special_;
  int64_t model_max_length_ = -1;
};

}  // namespace deltatune
