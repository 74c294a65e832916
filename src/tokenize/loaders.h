#pragma once
// One loader per tokenizer file format; Tokenizer::load() picks which (tokenizer.cc).
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "deltatune/tokenizer.h"
#include "tokenize/added_tokens.h"
#include "tokenize/config.h"
#include "tokenize/pretokenize.h"
#include "tokenize/vocab.h"

namespace deltatune::tokenize {

// tokenizer.json with "model": {"type": "WordPiece"}.
std::unique_ptr<Tokenizer> load_wordpiece_json(const nlohmann::json& spec, const TokenizerConfig& config,
                                               const std::filesystem::path& file);
// A BERT vocab.txt (one token per line, the line number is the id).
std::unique_ptr<Tokenizer> load_wordpiece_vocab(const std::filesystem::path& vocab_txt,
                                                const TokenizerConfig& config);

// How byte-level BPE cuts text into words before the merges run.
struct BpePreTokenizer {
  bool add_prefix_space = false;
  std::optional<SplitRegex> regex = SplitRegex::Gpt2;  // nullopt: the whole text is one word
  bool nfc = false;                                    // an NFC normaliser runs first
};

// A byte-level BPE tokenizer as a folder's files list it (a byte-level tokenizer.json, else vocab.json +
// merges.txt): what a GGUF "gpt2" vocabulary is written from.
struct ByteLevelBpeFiles {
  Vocab vocab;
  std::vector<std::pair<std::string, std::string>> merges;  // in rank order
  AddedVocabulary added;
  BpePreTokenizer pre;
};
// nullopt when the folder has neither; IoError naming the file when one is malformed.
std::optional<ByteLevelBpeFiles> read_byte_level_bpe(const std::filesystem::path& dir,
                                                     const TokenizerConfig& config);

// Whether a tokenizer.json BPE model is byte-level (GPT-2 family) rather than SentencePiece-style.
bool is_byte_level_bpe(const nlohmann::json& spec);
// tokenizer.json with a byte-level "BPE" model.
std::unique_ptr<Tokenizer> load_bpe_json(const nlohmann::json& spec, const TokenizerConfig& config,
                                         const std::filesystem::path& file);
// GPT-2's vocab.json + merges.txt.
std::unique_ptr<Tokenizer> load_bpe_files(const std::filesystem::path& vocab_json,
                                          const std::filesystem::path& merges_txt,
                                          const TokenizerConfig& config);

// A SentencePiece tokenizer.model.
std::unique_ptr<Tokenizer> load_sentencepiece(const std::filesystem::path& model_file,
                                              const TokenizerConfig& config);
// A SentencePiece model given as its serialized ModelProto (built from a GGUF file's vocabulary);
// `source` names it in errors.
std::unique_ptr<Tokenizer> load_sentencepiece_proto(const std::string& serialized,
                                                    const TokenizerConfig& config, const std::string& source);

}  // namespace deltatune::tokenize
