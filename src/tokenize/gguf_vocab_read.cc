// A GGUF file's vocabulary (tokenizer.ggml.*) as a tokenizer.
// "llama": the pieces, scores and types are written into a SentencePiece ModelProto (BPE with byte
// fallback, identity normalisation, a dummy prefix and spaces as U+2581: what llama.cpp's SPM tokenizer
// does) that libsentencepiece then loads, so the ids are those of the model's original tokenizer.model.
// "gpt2": the tokens, merges and tokenizer.ggml.pre become the tokenizer.json they were converted from
// (a BPE model, the pre-tokenizer's Split regex then ByteLevel, control and user-defined tokens as
// added tokens), which the byte-level BPE loader then reads.
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

const std::vector<std::string>& string_array(const gguf::File& f, const std::string& key) {
  const gguf::Value& value = f.at(key);
  if (value.type != gguf::ValueType::Array || value.element_type != gguf::ValueType::String)
    throw IoError(f.path.string() + ": " + key + " is not an array of strings");
  return value.strings;
}

std::vector<int64_t> token_types(const gguf::File& f, size_t n) {
  std::vector<int64_t> types(n, kNormalType);
  try {
    if (f.find("tokenizer.ggml.token_type")) types = f.at("tokenizer.ggml.token_type").int_array();
  } catch (const ConfigError& e) {
    throw IoError(f.path.string() + ": tokenizer.ggml.token_type: " + e.what());
  }
  if (types.size() != n)
    throw IoError(f.path.string() + ": tokenizer.ggml.tokens and token_type differ in length (" +
                  std::to_string(n) + ", " + std::to_string(types.size()) + ")");
  return types;
}

std::unique_ptr<Tokenizer> load_sentencepiece_vocab(const gguf::File& f) {
  const std::string source = f.path.string();
  const std::vector<std::string>& pieces = string_array(f, "tokenizer.ggml.tokens");
  const size_t n = pieces.size();
  const std::vector<int64_t> types = token_types(f, n);
  std::vector<double> scores(n, 0.0);
  try {
    if (f.find("tokenizer.ggml.scores")) scores = f.at("tokenizer.ggml.scores").double_array();
  } catch (const ConfigError& e) {
    throw IoError(source + ": tokenizer.ggml.scores: " + e.what());
  }
  if (scores.size() != n)
    throw IoError(source + ": tokenizer.ggml.tokens and scores differ in length (" + std::to_string(n) +
                  ", " + std::to_string(scores.size()) + ")");

  Proto model;
  bool byte_fallback = false;
  for (size_t i = 0; i < n; ++i) {
    Proto piece;
    piece.string(kPiece, pieces[i]).fixed32(kScore, float(scores[i])).varint(kType, uint64_t(types[i]));
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

// llama_token_type values a gpt2 vocabulary uses besides normal ones.
constexpr int64_t kUnknownType = 2, kControlType = 3, kUserDefinedType = 4;

// A merge as llama.cpp splits it: at the first space after the first byte.
nlohmann::json split_gguf_merge(const std::string& merge, size_t index, const std::string& source) {
  const size_t space = merge.find(' ', 1);
  if (space == std::string::npos)
    throw IoError(source + ": tokenizer.ggml.merges[" + std::to_string(index) + "] \"" + merge +
                  "\" is not two tokens separated by a space");
  return nlohmann::json::array({merge.substr(0, space), merge.substr(space + 1)});
}

std::unique_ptr<Tokenizer> load_gpt2_vocab(const gguf::File& f) {
  using nlohmann::json;
  const std::string source = f.path.string();
  // llama.cpp reads a file without tokenizer.ggml.pre as "default" (with a warning); both are taken as
  // GPT-2's own split, which is what such early conversions of GPT-2-style tokenizers used.
  const std::string pre_name = f.find("tokenizer.ggml.pre") ? f.string("tokenizer.ggml.pre") : "default";
  const std::optional<GgufPre> pre = find_gguf_pre(pre_name);
  if (!pre)
    throw IoError(source + ": tokenizer.ggml.pre '" + pre_name +
                  "' is not supported (supported: default, gpt-2, llama3, llama-v3, llama-bpe, qwen2)");
  const std::vector<std::string>& tokens = string_array(f, "tokenizer.ggml.tokens");
  const std::vector<int64_t> types = token_types(f, tokens.size());
  if (!f.find("tokenizer.ggml.merges"))
    throw IoError(source + ": tokenizer.ggml.merges is missing (a gpt2 vocabulary needs its BPE merges)");
  const std::vector<std::string>& merge_lines = string_array(f, "tokenizer.ggml.merges");

  // Control, unknown and user-defined tokens hold their text as it is (not byte-level characters), so
  // they are added tokens, cut out of the text before the merges; the rest is the BPE vocabulary.
  json vocab = json::object(), added = json::array();
  for (size_t id = 0; id < tokens.size(); ++id) {
    const int64_t type = types[id];
    if (type == kControlType || type == kUnknownType || type == kUserDefinedType) {
      added.push_back({{"id", id},
                       {"content", tokens[id]},
                       {"special", type != kUserDefinedType},
                       {"normalized", false}});
    } else if (!vocab.emplace(tokens[id], id).second) {
      throw IoError(source + ": tokenizer.ggml.tokens has \"" + tokens[id] + "\" twice (ids " +
                    std::to_string(vocab[tokens[id]].get<int64_t>()) + " and " + std::to_string(id) + ")");
    }
  }
  json merges = json::array();
  for (size_t i = 0; i < merge_lines.size(); ++i)
    merges.push_back(split_gguf_merge(merge_lines[i], i, source));

  const json split = {{"type", "Split"},
                      {"pattern", {{"Regex", std::string(split_regex_pattern(pre->regex))}}},
                      {"behavior", "Isolated"},
                      {"invert", false}};
  const json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}};
  const json spec = {{"model",
                      {{"type", "BPE"},
                       {"vocab", std::move(vocab)},
                       {"merges", std::move(merges)},
                       {"ignore_merges", pre->ignore_merges}}},
                     {"added_tokens", std::move(added)},
                     {"normalizer", pre->nfc ? json{{"type", "NFC"}} : json()},
                     {"pre_tokenizer", {{"type", "Sequence"}, {"pretokenizers", {split, byte_level}}}},
                     {"decoder", {{"type", "ByteLevel"}}}};

  // The special ids by name, as tokenizer_config.json gives them; a missing id clears the name.
  const auto name_of = [&](const std::string& key) -> json {
    const std::optional<int64_t> id = special_id(f, "tokenizer.ggml." + key + "_token_id");
    if (!id) return nullptr;
    if (*id < 0 || *id >= int64_t(tokens.size()))
      throw IoError(source + ": tokenizer.ggml." + key + "_token_id " + std::to_string(*id) +
                    " is not a token id (the vocabulary has " + std::to_string(tokens.size()) + ")");
    return tokens[size_t(*id)];
  };
  json settings = {{"bos_token", name_of("bos")},
                   {"eos_token", name_of("eos")},
                   {"unk_token", name_of("unknown")},
                   {"pad_token", name_of("padding")},
                   {"add_bos_token", flag(f, "tokenizer.ggml.add_bos_token", pre->add_bos)},
                   {"add_eos_token", flag(f, "tokenizer.ggml.add_eos_token", false)}};
  return load_bpe_json(spec, TokenizerConfig::of(std::move(settings), f.path), f.path);
}

}  // namespace

std::optional<GgufPre> find_gguf_pre(std::string_view name) {
  if (name == "default" || name == "gpt-2") return GgufPre{SplitRegex::Gpt2, false, false, false};
  if (name == "llama3" || name == "llama-v3" || name == "llama-bpe")
    return GgufPre{SplitRegex::Llama3, false, true, true};
  if (name == "qwen2") return GgufPre{SplitRegex::Qwen2, true, false, false};
  return std::nullopt;
}

std::optional<std::string> gguf_pre_name(SplitRegex regex, bool nfc) {
  if (regex == SplitRegex::Gpt2 && !nfc) return "gpt-2";
  if (regex == SplitRegex::Llama3 && !nfc) return "llama-bpe";
  if (regex == SplitRegex::Qwen2 && nfc) return "qwen2";
  return std::nullopt;
}

std::unique_ptr<Tokenizer> load_gguf_tokenizer(const gguf::File& f) {
  const std::string source = f.path.string();
  if (!f.find("tokenizer.ggml.model"))
    throw IoError(source + ": no tokenizer (tokenizer.ggml.model is missing)");
  const std::string kind = f.string("tokenizer.ggml.model");
  if (kind == "llama") return load_sentencepiece_vocab(f);
  if (kind == "gpt2") return load_gpt2_vocab(f);
  throw IoError(source + ": tokenizer.ggml.model '" + kind +
                "' is not supported (llama: SentencePiece, gpt2: byte-level BPE)");
}

}  // namespace deltatune::tokenize
