// WordPiece (BERT): BERT's normaliser and pre-tokeniser, then greedy longest-match-first subwords.
#include <fstream>

#include "deltatune/error.h"
#include "tokenize/loaders.h"
#include "tokenize/pipeline.h"
#include "tokenize/pretokenize.h"
#include "tokenize/unicode.h"

namespace deltatune::tokenize {
namespace {

using nlohmann::json;

// HF tokenizers' BertNormalizer.
struct BertNormalizer {
  bool enabled = true;  // false when tokenizer.json has no normaliser
  bool clean_text = true;
  bool handle_chinese_chars = true;
  std::optional<bool> strip_accents;  // unset: follow `lowercase`
  bool lowercase = true;

  std::u32string apply(std::u32string_view text) const {
    if (!enabled) return std::u32string(text);
    std::u32string out;
    out.reserve(text.size());
    for (char32_t c : text) {
      if (clean_text) {
        if (c == 0 || c == 0xFFFD || is_bert_control(c)) continue;
        if (is_white_space(c)) c = ' ';
      }
      if (handle_chinese_chars && is_cjk_ideograph(c)) {
        out += U' ';
        out += c;
        out += U' ';
      } else {
        out += c;
      }
    }
    if (strip_accents.value_or(lowercase)) {
      std::u32string stripped;
      for (char32_t c : nfd(out)) {
        if (!is_mark_nonspacing(c)) stripped += c;
      }
      out = std::move(stripped);
    }
    if (lowercase) {
      std::u32string lowered;
      lowered.reserve(out.size());
      for (char32_t c : out) append_lowercase(lowered, c);
      out = std::move(lowered);
    }
    return out;
  }

  // tokenizer_config.json's settings win over tokenizer.json's, as transformers' BertTokenizerFast does.
  void apply_config(const TokenizerConfig& config) {
    if (auto v = config.flag("do_lower_case")) lowercase = *v;
    if (config.has("strip_accents")) strip_accents = config.flag("strip_accents");
    if (auto v = config.flag("tokenize_chinese_chars")) handle_chinese_chars = *v;
  }
};

struct WordPieceModel {
  std::string unk_token = "[UNK]";
  std::string prefix = "##";
  size_t max_chars = 100;
  bool cleanup = true;  // the decoder's tidying of spaces before punctuation and contractions
};

class WordPieceTokenizer final : public PipelineTokenizer {
 public:
  WordPieceTokenizer(Vocab vocab, AddedVocabulary added, Template post, BertNormalizer normalizer,
                     WordPieceModel model, const SpecialTokenNames& names, const TokenizerConfig& config,
                     const std::filesystem::path& file)
      : PipelineTokenizer(std::move(vocab), std::move(added), std::move(post)),
        normalizer_(normalizer),
        model_(std::move(model)) {
    unk_id_ = vocab_.find(model_.unk_token);
    if (unk_id_ < 0)
      throw IoError(file.string() + ": the unknown token \"" + model_.unk_token +
                    "\" is not in the vocabulary");
    finish_setup(names, config);
  }

  std::string kind() const override { return "wordpiece"; }

 protected:
  std::u32string normalize(std::u32string_view text) const override { return normalizer_.apply(text); }

  std::vector<std::u32string> pre_tokenize(std::u32string_view text) const override {
    return split_bert_words(text);
  }

  void encode_word(std::u32string_view word, Encoding& out) const override {
    if (word.size() > model_.max_chars) return out.append(unk_id_, model_.unk_token);
    // Byte offsets of each character, so candidates are cut on character boundaries.
    const std::string bytes = encode_utf8(word);
    std::vector<size_t> offsets{0};
    for (char32_t c : word) {
      std::string one;
      append_utf8(one, c);
      offsets.push_back(offsets.back() + one.size());
    }
    Encoding pieces;
    size_t start = 0;
    while (start < word.size()) {
      int64_t found = -1;
      std::string candidate;
      for (size_t end = word.size(); end > start; --end) {
        candidate =
            (start > 0 ? model_.prefix : "") + bytes.substr(offsets[start], offsets[end] - offsets[start]);
        found = vocab_.find(candidate);
        if (found >= 0) {
          pieces.append(found, candidate);
          start = end;
          break;
        }
      }
      if (found < 0) return out.append(unk_id_, model_.unk_token);  // one unknown piece spoils the word
    }
    out.append(pieces);
  }

  // HF's WordPiece decoder: "##" pieces join the previous token, others get a space before them.
  std::string decode_tokens(const std::vector<std::string>& tokens) const override {
    std::string text;
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string token = tokens[i];
      if (i > 0) token = token.starts_with(model_.prefix) ? token.substr(model_.prefix.size()) : " " + token;
      text += model_.cleanup ? cleanup(token) : token;
    }
    return text;
  }

 private:
  static void replace_all(std::string& s, std::string_view from, std::string_view to) {
    for (size_t pos = s.find(from); pos != std::string::npos; pos = s.find(from, pos + to.size())) {
      s.replace(pos, from.size(), to);
    }
  }

  static std::string cleanup(std::string token) {
    static constexpr std::pair<std::string_view, std::string_view> kRules[] = {
        {" .", "."},   {" ?", "?"},           {" !", "!"},   {" ,", ","},     {" ' ", "'"},   {" n't", "n't"},
        {" 'm", "'m"}, {" do not", " don't"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
    for (const auto& [from, to] : kRules) replace_all(token, from, to);
    return token;
  }

  BertNormalizer normalizer_;
  WordPieceModel model_;
  int64_t unk_id_ = -1;
};

const SpecialTokenNames kBertNames{"[PAD]", "[UNK]", std::nullopt, std::nullopt, "[CLS]", "[SEP]", "[MASK]"};

BertNormalizer parse_normalizer(const json& spec, const std::filesystem::path& file) {
  BertNormalizer normalizer;
  if (spec.is_null()) {
    normalizer.enabled = false;
    return normalizer;
  }
  const std::string type = spec.value("type", "");
  if (type != "BertNormalizer") {
    throw IoError(file.string() + ": unsupported normalizer \"" + type +
                  "\" for WordPiece (expected BertNormalizer)");
  }
  normalizer.clean_text = spec.value("clean_text", true);
  normalizer.handle_chinese_chars = spec.value("handle_chinese_chars", true);
  if (spec.contains("strip_accents") && !spec["strip_accents"].is_null()) {
    normalizer.strip_accents = spec["strip_accents"].get<bool>();
  }
  normalizer.lowercase = spec.value("lowercase", true);
  return normalizer;
}

}  // namespace

std::unique_ptr<Tokenizer> load_wordpiece_json(const json& spec, const TokenizerConfig& config,
                                               const std::filesystem::path& file) {
  return with_file_context(file, [&]() -> std::unique_ptr<Tokenizer> {
    const json& model_spec = spec.at("model");
    Vocab vocab;
    const json& entries = model_spec.at("vocab");
    if (!entries.is_object()) throw IoError(file.string() + ": model.vocab is not an object of token -> id");
    for (const auto& [token, id] : entries.items()) vocab.add(token, parse_token_id(id, file));
    WordPieceModel model;
    model.unk_token = model_spec.value("unk_token", model.unk_token);
    model.prefix = model_spec.value("continuing_subword_prefix", model.prefix);
    model.max_chars = model_spec.value("max_input_chars_per_word", model.max_chars);
    if (spec.contains("decoder") && spec["decoder"].is_object()) {
      model.cleanup = spec["decoder"].value("cleanup", model.cleanup);
    }

    BertNormalizer normalizer = parse_normalizer(spec.value("normalizer", json()), file);
    if (normalizer.enabled) normalizer.apply_config(config);
    const json pre_tokenizer = spec.value("pre_tokenizer", json());
    if (!pre_tokenizer.is_null() && pre_tokenizer.value("type", "") != "BertPreTokenizer") {
      throw IoError(file.string() + ": unsupported pre_tokenizer \"" + pre_tokenizer.value("type", "") +
                    "\" for WordPiece (expected BertPreTokenizer)");
    }
    return std::make_unique<WordPieceTokenizer>(
        std::move(vocab), parse_added_tokens(spec.value("added_tokens", json()), file),
        parse_post_processor(spec.value("post_processor", json()), file), normalizer, model,
        special_token_names(config, kBertNames), config, file);
  });
}

std::unique_ptr<Tokenizer> load_wordpiece_vocab(const std::filesystem::path& vocab_txt,
                                                const TokenizerConfig& config) {
  std::ifstream in(vocab_txt, std::ios::binary);
  if (!in) throw IoError(vocab_txt.string() + ": cannot open file");
  Vocab vocab;
  std::string line;
  for (int64_t id = 0; std::getline(in, line); ++id) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    vocab.add(line, id);
  }
  if (vocab.entries() == 0) throw IoError(vocab_txt.string() + ": empty vocabulary");

  const SpecialTokenNames names = special_token_names(config, kBertNames);
  BertNormalizer normalizer;
  normalizer.apply_config(config);
  WordPieceModel model;
  if (names.unk) model.unk_token = *names.unk;
  const auto required = [&](const std::optional<std::string>& name, const char* what) {
    const int64_t id = name ? vocab.find(*name) : -1;
    if (id < 0) throw IoError(vocab_txt.string() + ": no " + what + " token in the vocabulary");
    return id;
  };
  Template post = Template::bert(required(names.cls, "[CLS]"), names.cls.value_or(""),
                                 required(names.sep, "[SEP]"), names.sep.value_or(""));
  AddedVocabulary added = implied_added_tokens(config, names, vocab);
  return std::make_unique<WordPieceTokenizer>(std::move(vocab), std::move(added), std::move(post), normalizer,
                                              model, names, config, vocab_txt);
}

}  // namespace deltatune::tokenize
