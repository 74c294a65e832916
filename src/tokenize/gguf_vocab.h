#pragma once
// A SentencePiece tokenizer as GGUF's tokenizer.ggml.* metadata (llama.cpp's "llama" vocabulary:
// pieces, scores, token types, special ids), and back.
#include <filesystem>
#include <memory>

#include "deltatune/gguf.h"
#include "deltatune/tokenizer.h"

namespace deltatune::tokenize {

// Adds the tokenizer of a Hugging Face folder (its tokenizer.model) to `writer`, as convert_hf_to_gguf
// does: `vocab_size` entries, pieces past the model's padded as "[PAD<i>]" (type UNUSED).
// ConfigError when the folder has no SentencePiece model.
void add_gguf_vocab(const std::filesystem::path& hf_dir, int64_t vocab_size, gguf::Writer& writer);

// The tokenizer a GGUF file's metadata describes (tokenizer.ggml.model "llama"). IoError naming the
// file when it has none, or another kind.
std::unique_ptr<Tokenizer> load_gguf_tokenizer(const gguf::File& file);

}  // namespace deltatune::tokenize
