// A Hugging Face folder's tokenizer as GGUF metadata, as convert_hf_to_gguf.py writes it: a
// SentencePiece model as _set_vocab_sentencepiece does, a byte-level BPE as _set_vocab_gpt2 does, with
// the special ids and add_bos / add_eos flags SpecialVocab adds (for byte-level BPE, those of the
// folder's tokenizer as Tokenizer::load reads it, so the file adds what the folder adds).
#include <sentencepiece_processor.h>

#include <algorithm>

#include "deltatune/error.h"
#include "tokenize/config.h"
#include "tokenize/gguf_vocab.h"
#include "tokenize/loaders.h"

namespace deltatune::tokenize {
namespace {

// llama.cpp's llama_token_type (gguf-py's TokenType).
enum TokenType : int32_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6
};

int32_t token_type(const sentencepiece::SentencePieceProcessor& sp, int id) {
  if (sp.IsUnknown(id)) return kUnknown;
  if (sp.IsControl(id)) return kControl;
  if (sp.IsUnused(id)) return kUnused;
  if (sp.IsByte(id)) return kByte;
  return kNormal;
}

std::string pad_token(int64_t id) { return "[PAD" + std::to_string(id) + "]"; }

void add_sentencepiece_vocab(const std::filesystem::path& hf_dir, int64_t vocab_size, gguf::Writer& w) {
  const std::filesystem::path model = hf_dir / "tokenizer.model";
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
      tokens.push_back(pad_token(id));
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

// The special ids, and whether encoding adds BOS / EOS, as the folder's own tokenizer has them (what
// tokenizer_config.json and the post-processor say, resolved the way Tokenizer::load resolves them).
void add_bpe_specials(const std::filesystem::path& hf_dir, gguf::Writer& w) {
  const std::unique_ptr<Tokenizer> tokenizer = Tokenizer::load(hf_dir);
  const std::pair<const char*, int64_t> specials[] = {
      {"tokenizer.ggml.bos_token_id", tokenizer->bos_id()},
      {"tokenizer.ggml.eos_token_id", tokenizer->eos_id()},
      {"tokenizer.ggml.unknown_token_id", tokenizer->unk_id()},
      {"tokenizer.ggml.padding_token_id", tokenizer->pad_id()}};
  for (const auto& [key, id] : specials)
    if (id >= 0) w.set(key, gguf::Value::of_uint32(uint32_t(id)));
  const Encoding plain = tokenizer->encode("a", false), with = tokenizer->encode("a", true);
  const bool adds = with.size() > plain.size();
  const bool add_bos = adds && tokenizer->bos_id() >= 0 && with.ids.front() == tokenizer->bos_id();
  const bool add_eos = adds && tokenizer->eos_id() >= 0 && with.ids.back() == tokenizer->eos_id();
  w.set("tokenizer.ggml.add_bos_token", gguf::Value::of_bool(add_bos));
  w.set("tokenizer.ggml.add_eos_token", gguf::Value::of_bool(add_eos));
}

void add_bpe_vocab(const std::filesystem::path& hf_dir, const ByteLevelBpeFiles& bpe, int64_t vocab_size,
                   gguf::Writer& w) {
  const auto refuse = [&](const std::string& why) {
    return ConfigError(hf_dir.string() + ": byte-level BPE tokenizer " + why);
  };
  if (!bpe.pre.regex)
    throw refuse(
        "splits no words (ByteLevel use_regex false, no Split): llama.cpp has no such pre-tokenizer");
  if (bpe.pre.add_prefix_space) throw refuse("adds a prefix space: llama.cpp's gpt2 vocabulary does not");
  // llama.cpp reads every llama-bpe vocabulary with ignore_merges (whole-vocabulary words unmerged); a
  // Llama 3 split without it (tokenizer.json from before tokenizers 0.19) is written as llama-bpe all
  // the same, the nearest name there is.
  const std::optional<std::string> pre = gguf_pre_name(*bpe.pre.regex, bpe.pre.nfc);
  if (!pre) {
    const char* name = bpe.pre.regex == SplitRegex::Gpt2     ? "GPT-2"
                       : bpe.pre.regex == SplitRegex::Llama3 ? "Llama 3"
                                                             : "Qwen2";
    throw refuse(std::string("splits with the ") + name + " regex " + (bpe.pre.nfc ? "after" : "without") +
                 " an NFC normalizer: no tokenizer.ggml.pre describes that");
  }
  const int64_t largest = std::max(bpe.vocab.size(), bpe.added.max_id() + 1);
  if (largest > vocab_size)
    throw refuse("has ids up to " + std::to_string(largest - 1) + ", past the model's vocab_size " +
                 std::to_string(vocab_size));

  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  for (int64_t id = 0; id < vocab_size; ++id) {
    if (const AddedToken* added = bpe.added.find(id)) {
      tokens.push_back(added->content);
      types.push_back(added->special ? kControl : kUserDefined);
    } else if (const std::string& token = bpe.vocab.token(id); !token.empty()) {
      tokens.push_back(token);
      types.push_back(kNormal);
    } else {
      tokens.push_back(pad_token(id));
      types.push_back(kUnused);
    }
  }
  std::vector<std::string> merges;
  merges.reserve(bpe.merges.size());
  for (const auto& [a, b] : bpe.merges) merges.push_back(a + " " + b);

  w.set("tokenizer.ggml.model", gguf::Value::of_string("gpt2"));
  w.set("tokenizer.ggml.pre", gguf::Value::of_string(*pre));
  w.set("tokenizer.ggml.tokens", gguf::Value::of_strings(std::move(tokens)));
  w.set("tokenizer.ggml.token_type", gguf::Value::of_int32s(types));
  w.set("tokenizer.ggml.merges", gguf::Value::of_strings(std::move(merges)));
  add_bpe_specials(hf_dir, w);
}

}  // namespace

void add_gguf_vocab(const std::filesystem::path& hf_dir, int64_t vocab_size, gguf::Writer& w) {
  if (std::filesystem::exists(hf_dir / "tokenizer.model"))
    return add_sentencepiece_vocab(hf_dir, vocab_size, w);
  if (const auto bpe = read_byte_level_bpe(hf_dir, TokenizerConfig::read(hf_dir)))
    return add_bpe_vocab(hf_dir, *bpe, vocab_size, w);
  throw ConfigError(hf_dir.string() +
                    ": no tokenizer.model or byte-level BPE tokenizer (tokenizer.json, or vocab.json + "
                    "merges.txt): GGUF conversion supports SentencePiece and byte-level BPE tokenizers");
}

}  // namespace deltatune::tokenize
