// A Hugging Face folder's SentencePiece model as GGUF metadata, as convert_hf_to_gguf.py's
// _set_vocab_sentencepiece and SpecialVocab write it.
#include <sentencepiece_processor.h>

#include "deltatune/error.h"
#include "tokenize/config.h"
#include "tokenize/gguf_vocab.h"

namespace deltatune::tokenize {
namespace {

// llama.cpp's llama_token_type (gguf-py's TokenType).
enum TokenType : int32_t { kNormal = 1, kUnknown = 2, kControl = 3, kUnused = 5, kByte = 6 };

int32_t token_type(const sentencepiece::SentencePieceProcessor& sp, int id) {
  if (sp.IsUnknown(id)) return kUnknown;
  if (sp.IsControl(id)) return kControl;
  if (sp.IsUnused(id)) return kUnused;
  if (sp.IsByte(id)) return kByte;
  return kNormal;
}

}  // namespace

void add_gguf_vocab(const std::filesystem::path& hf_dir, int64_t vocab_size, gguf::Writer& w) {
  const std::filesystem::path model = hf_dir / "tokenizer.model";
  if (!std::filesystem::exists(model))
    throw ConfigError(hf_dir.string() +
                      ": no tokenizer.model (GGUF conversion supports SentencePiece tokenizers)");
  sentencepiece::SentencePieceProcessor sp;
  if (const auto status = sp.Load(model.string()); !status.ok())
    throw IoError(model.string() + ": cannot load SentencePiece model: " + status.ToString());

  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;
  for (int64_t id = 0; id < vocab_size; ++id) {
    if (id < sp.GetPieceSize()) {
      tokens.push_back(sp.IdToPiece(int(id)));
      scores.push_back(sp.GetScore(int(id)));
      types.push_back(token_type(sp, int(id)));
    } else {
      tokens.push_back("[PAD" + std::to_string(id) + "]");
      scores.push_back(-1000.0f);
      types.push_back(kUnused);
    }
  }
  w.set("tokenizer.ggml.model", gguf::Value::of_string("llama"));
  w.set("tokenizer.ggml.pre", gguf::Value::of_string("default"));
  w.set("tokenizer.ggml.tokens", gguf::Value::of_strings(std::move(tokens)));
  w.set("tokenizer.ggml.scores", gguf::Value::of_float32s(scores));
  w.set("tokenizer.ggml.token_type", gguf::Value::of_int32s(types));

  // Special ids: tokenizer_config.json's names where it sets them, else the model's own.
  const TokenizerConfig config = TokenizerConfig::read(hf_dir);
  const auto id_of = [&](const char* key, int fallback) -> int64_t {
    const std::optional<std::string> name = config.token(key);
    if (!name) return fallback;
    const int id = sp.PieceToId(*name);
    return id == sp.unk_id() && *name != sp.IdToPiece(id) ? -1 : id;
  };
  const std::pair<const char*, int64_t> specials[] = {
      {"tokenizer.ggml.bos_token_id", id_of("bos_token", sp.bos_id())},
      {"tokenizer.ggml.eos_token_id", id_of("eos_token", sp.eos_id())},
      {"tokenizer.ggml.unknown_token_id", id_of("unk_token", sp.unk_id())},
      {"tokenizer.ggml.padding_token_id", id_of("pad_token", sp.pad_id())}};
  for (const auto& [key, id] : specials)
    if (id >= 0) w.set(key, gguf::Value::of_uint32(uint32_t(id)));
  w.set("tokenizer.ggml.add_bos_token", gguf::Value::of_bool(config.flag("add_bos_token").value_or(true)));
  w.set("tokenizer.ggml.add_eos_token", gguf::Value::of_bool(config.flag("add_eos_token").value_or(false)));
}

}  // namespace deltatune::tokenize
