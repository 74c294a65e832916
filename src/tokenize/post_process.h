#pragma once
// Post-processing: where special tokens go around one text or a pair, and which type id each part gets
// (HF tokenizers' TemplateProcessing, BertProcessing, RobertaProcessing all reduce to a template).
#include <cstdint>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "deltatune/tokenizer.h"

namespace deltatune::tokenize {

struct TemplatePiece {
  int sequence = -1;  // 0 = the first text, 1 = the pair text, -1 = a special token
  int64_t id = -1;    // for a special token
  std::string token;
  int64_t type_id = 0;
};

struct Template {
  std::vector<TemplatePiece> single{{0, -1, "", 0}};
  std::vector<TemplatePiece> pair{{0, -1, "", 0}, {1, -1, "", 1}};

  Encoding apply(const Encoding& a, const Encoding* b) const;
  int64_t added(bool is_pair) const;

  // [CLS] A [SEP] / [CLS] A [SEP] B [SEP], with B's part of type 1.
  static Template bert(int64_t cls, const std::string& cls_token, int64_t sep, const std::string& sep_token);
  // <s> A </s> / <s> A </s> </s> B </s>, all of type 0.
  static Template roberta(int64_t cls, const std::string& cls_token, int64_t sep,
                          const std::string& sep_token);
  // [BOS] A [EOS] / [BOS] A [EOS] [BOS] B [EOS] with each marker present only when its id is >= 0
  // (Llama's add_bos_token / add_eos_token).
  static Template bos_eos(int64_t bos, const std::string& bos_token, int64_t eos,
                          const std::string& eos_token);
};

// Reads tokenizer.json's "post_processor" (null, ByteLevel, TemplateProcessing, BertProcessing,
// RobertaProcessing, or a Sequence of them). Throws IoError naming `file` for anything else.
Template parse_post_processor(const nlohmann::json& spec, const std::filesystem::path& file);

}  // namespace deltatune::tokenize
