// The Tokenizer interface's shared parts: encoding with special tokens, batching, and picking a loader.
#include "deltatune/tokenizer.h"

#include <algorithm>

#include "deltatune/error.h"
#include "tokenize/config.h"
#include "tokenize/gguf_vocab.h"
#include "tokenize/loaders.h"

namespace deltatune {

void Encoding::append(int64_t id, std::string token, int64_t type_id) {
  ids.push_back(id);
  tokens.push_back(std::move(token));
  type_ids.push_back(type_id);
}

void Encoding::append(const Encoding& other) {
  ids.insert(ids.end(), other.ids.begin(), other.ids.end());
  tokens.insert(tokens.end(), other.tokens.begin(), other.tokens.end());
  type_ids.insert(type_ids.end(), other.type_ids.begin(), other.type_ids.end());
}

namespace {

void truncate(Encoding& e, size_t length) {
  if (e.size() <= length) return;
  e.ids.resize(length);
  e.tokens.resize(length);
  e.type_ids.resize(length);
}

// HF tokenizers' "longest_first": the shorter text is kept whole unless it is longer than half the room.
void truncate_longest_first(Encoding& a, Encoding* b, size_t room) {
  if (b == nullptr) return truncate(a, room);
  size_t n1 = a.size(), n2 = b->size();
  if (n1 + n2 <= room) return;
  const bool swapped = n1 > n2;
  if (swapped) std::swap(n1, n2);  // n1 is the shorter
  n2 = n1 > room ? n1 : std::max(n1, room - n1);
  if (n1 + n2 > room) {
    n1 = room / 2;
    n2 = n1 + room % 2;
  }
  if (swapped) std::swap(n1, n2);
  truncate(a, n1);
  truncate(*b, n2);
}

}  // namespace

Encoding Tokenizer::encode(std::string_view text, bool add_special) const {
  Encoding a = tokenize(text);
  return add_special ? add_special_tokens(a, nullptr) : a;
}

Encoding Tokenizer::encode_pair(std::string_view first, std::string_view second, bool add_special) const {
  Encoding a = tokenize(first);
  Encoding b = tokenize(second);
  std::fill(b.type_ids.begin(), b.type_ids.end(), 1);
  if (add_special) return add_special_tokens(a, &b);
  a.append(b);
  return a;
}

std::string Tokenizer::decode_continuation(const std::vector<int64_t>& prompt,
                                           const std::vector<int64_t>& continuation,
                                           bool skip_special) const {
  std::vector<int64_t> all = prompt;
  all.insert(all.end(), continuation.begin(), continuation.end());
  const std::string full = decode(all, skip_special);
  const std::string head = decode(prompt, skip_special);
  // The decoded prompt is normally the start of the full text; where the continuation changes how the
  // prompt's end decodes (a WordPiece cleanup rule across the seam), keep everything after the common part.
  size_t common = 0;
  while (common < head.size() && common < full.size() && head[common] == full[common]) ++common;
  while (common > 0 && common < full.size() && (static_cast<unsigned char>(full[common]) & 0xC0) == 0x80)
    --common;
  return full.substr(common);
}

int64_t Tokenizer::num_special_tokens(bool pair) const {
  const Encoding empty;
  return static_cast<int64_t>(add_special_tokens(empty, pair ? &empty : nullptr).size());
}

BatchEncoding Tokenizer::encode_batch(const std::vector<std::string>& texts,
                                      const std::vector<std::string>* pairs, int64_t max_length,
                                      bool pad) const {
  if (pairs != nullptr && pairs->size() != texts.size()) {
    throw ConfigError("encode_batch: " + std::to_string(texts.size()) + " texts but " +
                      std::to_string(pairs->size()) + " pair texts");
  }
  const int64_t room =
      max_length > 0 ? std::max<int64_t>(0, max_length - num_special_tokens(pairs != nullptr)) : -1;
  BatchEncoding batch;
  for (size_t i = 0; i < texts.size(); ++i) {
    Encoding a = tokenize(texts[i]);
    Encoding b;
    if (pairs != nullptr) {
      b = tokenize((*pairs)[i]);
      std::fill(b.type_ids.begin(), b.type_ids.end(), 1);
    }
    if (room >= 0) truncate_longest_first(a, pairs != nullptr ? &b : nullptr, static_cast<size_t>(room));
    Encoding row = add_special_tokens(a, pairs != nullptr ? &b : nullptr);
    batch.input_ids.push_back(std::move(row.ids));
    batch.token_type_ids.push_back(std::move(row.type_ids));
    batch.attention_mask.emplace_back(batch.input_ids.back().size(), 1);
  }
  if (pad) {
    size_t longest = 0;
    for (const auto& ids : batch.input_ids) longest = std::max(longest, ids.size());
    // GPT-2 and Llama have no pad token; the mask hides whatever fills the row, so EOS (or 0) will do.
    const int64_t fill = pad_id() >= 0 ? pad_id() : eos_id() >= 0 ? eos_id() : 0;
    for (size_t i = 0; i < batch.input_ids.size(); ++i) {
      batch.input_ids[i].resize(longest, fill);
      batch.attention_mask[i].resize(longest, 0);
      batch.token_type_ids[i].resize(longest, 0);
    }
  }
  return batch;
}

std::unique_ptr<Tokenizer> Tokenizer::load(const std::filesystem::path& dir) {
  using namespace tokenize;
  namespace fs = std::filesystem;
  if (!fs::exists(dir)) throw IoError(dir.string() + ": tokenizer folder does not exist");
  if (gguf::is_gguf_file(dir)) return load_gguf_tokenizer(gguf::read_file(dir));
  if (!fs::is_directory(dir)) throw IoError(dir.string() + ": not a folder (expected a tokenizer folder)");
  const TokenizerConfig config = TokenizerConfig::read(dir);

  const fs::path tokenizer_json = dir / "tokenizer.json";
  const fs::path sentencepiece_model = dir / "tokenizer.model";
  if (fs::exists(tokenizer_json)) {
    const nlohmann::json spec = read_json_file(tokenizer_json);
    const std::string type = with_file_context(tokenizer_json, [&] {
      if (!spec.is_object()) throw IoError(tokenizer_json.string() + ": expected a JSON object");
      return spec.at("model").value("type", std::string());
    });
    if (type == "WordPiece") return load_wordpiece_json(spec, config, tokenizer_json);
    if (type == "BPE" && is_byte_level_bpe(spec)) return load_bpe_json(spec, config, tokenizer_json);
    // Other models (SentencePiece-style BPE, Unigram) are served by tokenizer.model when it is there.
    if (!fs::exists(sentencepiece_model)) {
      throw IoError(
          tokenizer_json.string() + ": unsupported tokenizer model \"" + type +
          "\" (supported: WordPiece, byte-level BPE; or a SentencePiece tokenizer.model beside it)");
    }
  }
  if (fs::exists(dir / "vocab.json") && fs::exists(dir / "merges.txt")) {
    return load_bpe_files(dir / "vocab.json", dir / "merges.txt", config);
  }
  if (fs::exists(dir / "vocab.txt")) return load_wordpiece_vocab(dir / "vocab.txt", config);
  if (fs::exists(sentencepiece_model)) return load_sentencepiece(sentencepiece_model, config);
  throw IoError(dir.string() +
                ": no tokenizer found (looked for tokenizer.json, vocab.json + merges.txt, vocab.txt, "
                "tokenizer.model)");
}

}  // namespace deltatune
