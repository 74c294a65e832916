#pragma once
// A tokenizer as GGUF's tokenizer.ggml.* metadata, and back. Two of llama.cpp's vocabulary kinds:
// "llama" (SentencePiece: pieces, scores, token types, special ids) and "gpt2" (byte-level BPE: tokens,
// token types, merges, and the pre-tokenizer's name in tokenizer.ggml.pre).
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "deltatune/gguf.h"
#include "deltatune/tokenizer.h"
#include "tokenize/pretokenize.h"

namespace deltatune::tokenize {

// Adds the tokenizer of a Hugging Face folder to `writer` as convert_hf_to_gguf does, `vocab_size`
// entries: its tokenizer.model as "llama" (pieces past the model's padded as "[PAD<i>]", type UNUSED),
// else its byte-level BPE (tokenizer.json, or vocab.json + merges.txt) as "gpt2" (ids the tokenizer
// lacks padded the same way). ConfigError when the folder has neither, or a byte-level BPE whose
// pre-tokenizer llama.cpp has no name for.
void add_gguf_vocab(const std::filesystem::path& hf_dir, int64_t vocab_size, gguf::Writer& writer);

// The tokenizer a GGUF file's metadata describes (tokenizer.ggml.model "llama" or "gpt2"). IoError
// naming the file when it has none, another kind, or a tokenizer.ggml.pre this project cannot split by.
std::unique_ptr<Tokenizer> load_gguf_tokenizer(const gguf::File& file);

// tokenizer.ggml.pre for byte-level BPE: the name llama.cpp gives each split this project matches.
struct GgufPre {
  SplitRegex regex;
  bool nfc;            // Qwen2's tokenizer.json normalises to NFC first (llama.cpp does not)
  bool ignore_merges;  // llama.cpp's Llama 3 family: a word in the vocabulary is one token
  bool add_bos;        // llama.cpp's default when tokenizer.ggml.add_bos_token is absent
};
// The pre-tokenizer of a name ("gpt-2", "llama-bpe", "qwen2", ...); nullopt for others.
std::optional<GgufPre> find_gguf_pre(std::string_view name);
// The name written for a split (and whether it normalises to NFC); nullopt when llama.cpp has none.
std::optional<std::string> gguf_pre_name(SplitRegex regex, bool nfc);

}  // namespace deltatune::tokenize
