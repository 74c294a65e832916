// A GGUF file's "llama" vocabulary (tokenizer.ggml.*) as a SentencePiece tokenizer: the pieces, scores
// and types are written into a SentencePiece ModelProto (BPE with byte fallback, identity
// normalisation, a dummy prefix and spaces as U+2581: what llama.cpp's SPM tokenizer does) that
// libsentencepiece then loads, so the ids are those of the model's original tokenizer.model.
#include <nlohmann/json.hpp>

#include "deltatune/error.h"
#include "tokenize/config.h"
#include "tokenize/gguf_vocab.h"
#include "tokenize/loaders.h"

namespace deltatune::tokenize {
namespace {

// The few protobuf encodings a ModelProto needs (wire types: 0 varint, 2 length-delimited, 5 fixed32).
class Proto {
 public:
  Proto& varint(int field, uint64_t v) {
    key(field, 0);
    put_varint(v);
    return *this;
  }
  Proto& int32(int field, int64_t v) {
    return varint(field, uint64_t(v));
  }  // negatives: 10 bytes, as protobuf
  Proto& fixed32(int field, float v) {
    key(field, 5);
    bytes.append(reinterpret_cast<const char*>(&v), 4);
    return *this;
  }
  Proto& string(int field, const std::string& s) {
    key(field, 2);
    put_varint(s.size());
    bytes += s;
    return *this;
  }
  Proto& message(int field, const Proto& m) { return string(field, m.bytes); }
  std::string bytes;

 private:
  void key(int field, int wire) { put_varint(uint64_t(field) << 3 | uint64_t(wire)); }
  void put_varint(uint64_t v) {
    while (v >= 0x80) {
      bytes += char((v & 0x7F) | 0x80);
      v >>= 7;
    }
    bytes += char(v);
  }
};

// sentencepiece_model.proto's field numbers.
enum PieceField { kPiece = 1, kScore = 2, kType = 3 };
enum TrainerField {
  kModelType = 3,
  kVocabSize = 4,
  kByteFallback = 35,
  kUnkId = 40,
  kBosId = 41,
  kEosId = 42,
  kPadId = 43
};
enum NormalizerField { kName = 1, kAddDummyPrefix = 3, kRemoveExtraWhitespaces = 4, kEscapeWhitespaces = 5 };
constexpr int kBpe = 2, kByteType = 6, kNormalType = 1;

std::optional<int64_t> special_id(const gguf::File& f, const std::string& key) {
  if (!f.find(key)) return std::nullopt;
  return f.integer(key);
}

bool flag(const gguf::File& f, const std::string& key, bool fallback) {
  return f.find(key) ? f.integer(key) != 0 : fallback;
}

}  // namespace

std::unique_ptr<Tokenizer> load_gguf_tokenizer(const gguf::File& f) {
  const std::string source = f.path.string();
  if (!f.find("tokenizer.ggml.model"))
    throw IoError(source + ": no tokenizer (tokenizer.ggml.model is missing)");
  const std::string kind = f.string("tokenizer.ggml.model");
  if (kind != "llama")
    throw IoError(source + ": tokenizer.ggml.model '" + kind + "' is not supported (llama: SentencePiece)");
  const gguf::Value& tokens = f.at("tokenizer.ggml.tokens");
  if (tokens.type != gguf::ValueType::Array || tokens.element_type != gguf::ValueType::String)
    throw IoError(source + ": tokenizer.ggml.tokens is not an array of strings");
  const size_t n = tokens.strings.size();
  std::vector<double> scores(n, 0.0);
  std::vector<int64_t> types(n, kNormalType);
  try {
    if (f.find("tokenizer.ggml.scores")) scores = f.at("tokenizer.ggml.scores").double_array();
    if (f.find("tokenizer.ggml.token_type")) types = f.at("tokenizer.ggml.token_type").int_array();
  } catch (const ConfigError& e) {
    throw IoError(source + ": tokenizer.ggml.scores / token_type: " + e.what());
  }
  if (scores.size() != n || types.size() != n)
    throw IoError(source + ": tokenizer.ggml.tokens, scores and token_type differ in length (" +
                  std::to_string(n) + ", " + std::to_string(scores.size()) + ", " +
                  std::to_string(types.size()) + ")");

  Proto model;
  bool byte_fallback = false;
  for (size_t i = 0; i < n; ++i) {
    Proto piece;
    piece.string(kPiece, tokens.strings[i])
        .fixed32(kScore, float(scores[i]))
        .varint(kType, uint64_t(types[i]));
    model.message(1, piece);
    byte_fallback = byte_fallback || types[i] == kByteType;
  }
  Proto trainer;
  trainer.varint(kModelType, kBpe).int32(kVocabSize, int64_t(n)).varint(kByteFallback, byte_fallback);
  trainer.int32(kUnkId, special_id(f, "tokenizer.ggml.unknown_token_id").value_or(0));
  trainer.int32(kBosId, special_id(f, "tokenizer.ggml.bos_token_id").value_or(-1));
  trainer.int32(kEosId, special_id(f, "tokenizer.ggml.eos_token_id").value_or(-1));
  trainer.int32(kPadId, special_id(f, "tokenizer.ggml.padding_token_id").value_or(-1));
  model.message(2, trainer);
  Proto normalizer;
  normalizer.string(kName, "identity")
      .varint(kAddDummyPrefix, flag(f, "tokenizer.ggml.add_space_prefix", true));
  normalizer.varint(kRemoveExtraWhitespaces, 0).varint(kEscapeWhitespaces, 1);
  model.message(3, normalizer);

  nlohmann::json settings = {{"tokenizer_class", "LlamaTokenizer"},
                             {"add_bos_token", flag(f, "tokenizer.ggml.add_bos_token", true)},
                             {"add_eos_token", flag(f, "tokenizer.ggml.add_eos_token", false)}};
  return load_sentencepiece_proto(model.bytes, TokenizerConfig::of(std::move(settings), f.path), source);
}

}  // namespace deltatune::tokenize
