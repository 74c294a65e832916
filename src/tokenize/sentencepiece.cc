// SentencePiece (Llama 1/2, T5, ...) through libsentencepiece, with the BOS/EOS conventions of
// transformers' tokenizer classes.
#include <sentencepiece_processor.h>

#include "deltatune/error.h"
#include "tokenize/added_tokens.h"
#include "tokenize/loaders.h"
#include "tokenize/post_process.h"
#include "tokenize/unicode.h"

namespace deltatune::tokenize {
namespace {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  // `load` fills the processor (from a file or a serialized model); `source` names it in errors.
  template <typename Load>
  SentencePieceTokenizer(Load load, const std::string& source, const TokenizerConfig& config) {
    const auto status = load(processor_);
    if (!status.ok()) throw IoError(source + ": cannot load SentencePiece model: " + status.ToString());
    pieces_ = processor_.GetPieceSize();
    // Tokens added beyond the model's pieces (e.g. a pad token) are cut out of the text whole; the
    // model's own control pieces (<s>, </s>) are not, which is what transformers does for Llama.
    for (AddedToken& token : config.added_tokens()) {
      if (token.id >= pieces_) added_.add(std::move(token));
    }

    const auto id_of = [&](const std::optional<std::string>& name, int64_t fallback) {
      if (!name) return fallback;
      const int64_t id = token_to_id(*name);
      return id >= 0 ? id : fallback;
    };
    const auto configured = [&](const char* key, int64_t fallback) {
      return config.has(key) ? id_of(config.token(key), -1) : fallback;
    };
    special_.unk = configured("unk_token", processor_.unk_id());
    special_.bos = configured("bos_token", processor_.bos_id());
    special_.eos = configured("eos_token", processor_.eos_id());
    special_.pad = configured("pad_token", processor_.pad_id());
    special_.cls = configured("cls_token", -1);
    special_.sep = configured("sep_token", -1);
    special_.mask = configured("mask_token", -1);
    model_max_length_ = config.model_max_length();

    // LlamaTokenizer adds BOS and no EOS unless told otherwise; T5 ends every text with EOS instead.
    const bool t5 = config.tokenizer_class().find("T5") != std::string::npos;
    const bool add_bos = config.flag("add_bos_token").value_or(!t5);
    const bool add_eos = config.flag("add_eos_token").value_or(t5);
    template_ = Template::bos_eos(add_bos ? special_.bos : -1, id_to_token(special_.bos),
                                  add_eos ? special_.eos : -1, id_to_token(special_.eos));
  }

  std::string kind() const override { return "sentencepiece"; }
  int64_t vocab_size() const override { return std::max<int64_t>(pieces_, added_.max_id() + 1); }

  int64_t token_to_id(std::string_view token) const override {
    if (const AddedToken* added = added_.find(token)) return added->id;
    const int id = processor_.PieceToId(token);
    // PieceToId answers unk_id for unknown pieces; only "<unk>" itself should map there.
    return id == processor_.unk_id() && token != processor_.IdToPiece(id) ? -1 : id;
  }

  std::string id_to_token(int64_t id) const override {
    if (const AddedToken* added = added_.find(id)) return added->content;
    return id >= 0 && id < pieces_ ? processor_.IdToPiece(static_cast<int>(id)) : "";
  }

  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const override {
    std::string text;
    std::vector<int> run;  // consecutive model ids, decoded together so spaces come out right
    const auto flush = [&] {
      if (run.empty()) return;
      std::string piece;
      if (const auto status = processor_.Decode(run, &piece); !status.ok()) {
        throw Error("SentencePiece decode failed: " + status.ToString());
      }
      text += piece;
      run.clear();
    };
    for (int64_t id : ids) {
      if (const AddedToken* added = added_.find(id)) {
        if (skip_special_tokens && added->special) continue;
        flush();
        text += added->content;
      } else if (id >= 0 && id < pieces_) {
        const int piece = static_cast<int>(id);
        if (skip_special_tokens && (processor_.IsControl(piece) || processor_.IsUnknown(piece))) continue;
        run.push_back(piece);
      }
    }
    flush();
    return text;
  }

 protected:
  Encoding tokenize(std::string_view text) const override {
    Encoding out;
    for (const Segment& segment : added_.split(utf8_lossy(text), /*normalized=*/false)) {
      if (segment.added_id >= 0) {
        out.append(segment.added_id, id_to_token(segment.added_id));
        continue;
      }
      std::vector<int> ids;
      if (const auto status = processor_.Encode(segment.text, &ids); !status.ok()) {
        throw Error("SentencePiece encode failed: " + status.ToString());
      }
      for (int id : ids) out.append(id, processor_.IdToPiece(id));
    }
    return out;
  }

  Encoding add_special_tokens(const Encoding& a, const Encoding* b) const override {
    return template_.apply(a, b);
  }

 private:
  sentencepiece::SentencePieceProcessor processor_;
  int64_t pieces_ = 0;
  AddedVocabulary added_;
  Template template_;
};

}  // namespace

std::unique_ptr<Tokenizer> load_sentencepiece(const std::filesystem::path& model_file,
                                              const TokenizerConfig& config) {
  return std::make_unique<SentencePieceTokenizer>(
      [&](sentencepiece::SentencePieceProcessor& p) { return p.Load(model_file.string()); },
      model_file.string(), config);
}

std::unique_ptr<Tokenizer> load_sentencepiece_proto(const std::string& serialized,
                                                    const TokenizerConfig& config,
                                                    const std::string& source) {
  return std::make_unique<SentencePieceTokenizer>(
      [&](sentencepiece::SentencePieceProcessor& p) { return p.LoadFromSerializedProto(serialized); }, source,
      config);
}

}  // namespace deltatune::tokenize
