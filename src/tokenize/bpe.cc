// Byte-level BPE (GPT-2, RoBERTa, Llama 3): regex split, bytes mapped to printable characters, then
// merges applied lowest rank first.
#include <array>
#include <fstream>
#include <functional>
#include <queue>
#include <unordered_map>

#include "deltatune/error.h"
#include "tokenize/loaders.h"
#include "tokenize/pipeline.h"
#include "tokenize/pretokenize.h"
#include "tokenize/unicode.h"

namespace deltatune::tokenize {
namespace {

using nlohmann::json;

// GPT-2's reversible byte <-> character table: printable Latin-1 bytes stand for themselves, the rest
// are moved to U+0100 and up, so every byte string becomes visible, whitespace-free text.
struct ByteTable {
  std::array<char32_t, 256> to_char{};
  std::unordered_map<char32_t, unsigned char> to_byte;

  ByteTable() {
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      to_char[b] = printable ? static_cast<char32_t>(b) : next++;
      to_byte[to_char[b]] = static_cast<unsigned char>(b);
    }
  }
};

const ByteTable& byte_table() {
  static const ByteTable table;
  return table;
}

struct Merge {
  int32_t rank;
  int64_t merged;
};

struct BpeModel {
  std::optional<std::string> unk_token;
  bool fuse_unk = false;
  bool ignore_merges = false;  // Llama 3: a word that is itself in the vocabulary skips the merges
  std::unordered_map<uint64_t, Merge> merges;

  static uint64_t key(int64_t a, int64_t b) {
    return static_cast<uint64_t>(a) << 32 | static_cast<uint64_t>(b);
  }
};

class BpeTokenizer final : public PipelineTokenizer {
 public:
  BpeTokenizer(Vocab vocab, AddedVocabulary added, Template post, BpePreTokenizer pre, BpeModel model,
               const SpecialTokenNames& names, const TokenizerConfig& config)
      : PipelineTokenizer(std::move(vocab), std::move(added), std::move(post)),
        pre_(pre),
        model_(std::move(model)) {
    unk_id_ = model_.unk_token ? vocab_.find(*model_.unk_token) : -1;
    for (char32_t c = 0; c < char_ids_.size(); ++c) {
      std::string one;
      append_utf8(one, c);
      char_ids_[c] = vocab_.find(one);
    }
    finish_setup(names, config);
  }

  std::string kind() const override { return "bpe"; }

 protected:
  std::u32string normalize(std::u32string_view text) const override {
    return pre_.nfc ? nfc(text) : std::u32string(text);
  }

  std::vector<std::u32string> pre_tokenize(std::u32string_view text) const override {
    std::u32string prefixed;
    if (pre_.add_prefix_space && !text.empty() && text[0] != U' ') {
      prefixed = U" " + std::u32string(text);
      text = prefixed;
    }
    std::vector<std::u32string> words =
        pre_.regex ? split_with_regex(text, *pre_.regex) : std::vector<std::u32string>{std::u32string(text)};
    const ByteTable& table = byte_table();
    for (std::u32string& word : words) {
      std::u32string mapped;
      for (unsigned char byte : encode_utf8(word)) mapped += table.to_char[byte];
      word = std::move(mapped);
    }
    return words;
  }

  void encode_word(std::u32string_view word, Encoding& out) const override {
    if (model_.ignore_merges) {
      const std::string whole = encode_utf8(word);
      if (const int64_t id = vocab_.find(whole); id >= 0) return out.append(id, whole);
    }
    // A doubly linked list of symbols, merged in place; a heap orders candidate merges by (rank, position).
    std::vector<int64_t> ids;
    for (char32_t c : word) {
      int64_t id;
      if (c < char_ids_.size()) {
        id = char_ids_[c];
      } else {
        std::string one;
        append_utf8(one, c);
        id = vocab_.find(one);
      }
      if (id < 0) {
        if (unk_id_ < 0) continue;  // no unknown token: HF drops the character
        if (model_.fuse_unk && !ids.empty() && ids.back() == unk_id_) continue;
        id = unk_id_;
      }
      ids.push_back(id);
    }
    const int n = static_cast<int>(ids.size());
    std::vector<int> prev(n), next(n);
    std::vector<bool> alive(n, true);
    for (int i = 0; i < n; ++i) prev[i] = i - 1, next[i] = i + 1 < n ? i + 1 : -1;

    struct Candidate {
      int32_t rank;
      int left;  // position of the left symbol
      int64_t left_id, right_id, merged;
      bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
    };
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
    const auto consider = [&](int left) {
      if (left < 0 || next[left] < 0) return;
      const int64_t a = ids[left], b = ids[next[left]];
      const auto it = model_.merges.find(BpeModel::key(a, b));
      if (it != model_.merges.end()) heap.push({it->second.rank, left, a, b, it->second.merged});
    };
    for (int i = 0; i + 1 < n; ++i) consider(i);
    while (!heap.empty()) {
      const Candidate top = heap.top();
      heap.pop();
      const int left = top.left, right = next[left];
      // Stale when either symbol has changed since the candidate was pushed.
      if (!alive[left] || right < 0 || ids[left] != top.left_id || ids[right] != top.right_id) continue;
      ids[left] = top.merged;
      alive[right] = false;
      next[left] = next[right];
      if (next[left] >= 0) prev[next[left]] = left;
      consider(prev[left]);
      consider(left);
    }
    for (int i = 0; i < n; ++i) {
      if (alive[i]) out.append(ids[i], vocab_.token(ids[i]));
    }
  }

  // HF's ByteLevel decoder: each token's characters back to bytes (a token with a character outside
  // the table, such as an added token, keeps its own bytes), then bytes to UTF-8.
  std::string decode_tokens(const std::vector<std::string>& tokens) const override {
    const ByteTable& table = byte_table();
    std::string bytes;
    for (const std::string& token : tokens) {
      std::string decoded;
      bool mapped = true;
      for (char32_t c : decode_utf8(token)) {
        const auto it = table.to_byte.find(c);
        if (it == table.to_byte.end()) {
          mapped = false;
          break;
        }
        decoded.push_back(static_cast<char>(it->second));
      }
      bytes += mapped ? decoded : token;
    }
    return utf8_lossy(bytes);
  }

 private:
  BpePreTokenizer pre_;
  BpeModel model_;
  int64_t unk_id_ = -1;
  std::array<int64_t, 512> char_ids_{};  // the ids of the byte-level characters (all below U+0200)
};

void add_merge(BpeModel& model, const Vocab& vocab, const std::string& a, const std::string& b,
               const std::filesystem::path& file) {
  const int64_t left = vocab.find(a), right = vocab.find(b), merged = vocab.find(a + b);
  if (left < 0 || right < 0 || merged < 0) {
    throw IoError(file.string() + ": merge \"" + a + " " + b +
                  "\" uses a token that is not in the vocabulary");
  }
  const auto rank = static_cast<int32_t>(model.merges.size());
  model.merges.try_emplace(BpeModel::key(left, right), Merge{rank, merged});  // the first rank wins
}

std::pair<std::string, std::string> split_merge_line(const std::string& line,
                                                     const std::filesystem::path& file) {
  const size_t space = line.find(' ');
  if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) {
    throw IoError(file.string() + ": merge \"" + line + "\" is not two tokens separated by one space");
  }
  return {line.substr(0, space), line.substr(space + 1)};
}

// tokenizer.json's model.merges: "a b" strings or ["a", "b"] pairs, in rank order.
std::vector<std::pair<std::string, std::string>> parse_merges(const json& merges,
                                                              const std::filesystem::path& file) {
  if (!merges.is_array()) throw IoError(file.string() + ": model.merges is not a list");
  std::vector<std::pair<std::string, std::string>> pairs;
  pairs.reserve(merges.size());
  for (const json& merge : merges) {
    pairs.push_back(merge.is_array()
                        ? std::pair{merge.at(0).get<std::string>(), merge.at(1).get<std::string>()}
                        : split_merge_line(merge.get<std::string>(), file));
  }
  return pairs;
}

// merges.txt: one "a b" merge a line in rank order, after an optional "#version" line. `each` gets the
// two tokens and "FILE:LINE" for its errors.
void for_each_merge_line(
    const std::filesystem::path& merges_txt,
    const std::function<void(const std::string&, const std::string&, const std::string&)>& each) {
  std::ifstream in(merges_txt, std::ios::binary);
  if (!in) throw IoError(merges_txt.string() + ": cannot open file");
  std::string line;
  for (int line_number = 1; std::getline(in, line); ++line_number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line.starts_with("#version")) continue;
    const std::string where = merges_txt.string() + ":" + std::to_string(line_number);
    const auto [a, b] = split_merge_line(line, where);
    each(a, b, where);
  }
}

Vocab parse_vocab(const json& object, const std::filesystem::path& file) {
  if (!object.is_object()) throw IoError(file.string() + ": the vocabulary is not an object of token -> id");
  Vocab vocab;
  for (const auto& [token, id] : object.items()) vocab.add(token, parse_token_id(id, file));
  return vocab;
}

BpePreTokenizer parse_pre_tokenizer(const json& spec, const std::filesystem::path& file) {
  const auto unsupported = [&](const std::string& what) {
    return IoError(file.string() + ": unsupported pre_tokenizer " + what +
                   " (supported: ByteLevel, or a Split with the GPT-2, Llama 3 or Qwen2 regex then "
                   "ByteLevel)");
  };
  BpePreTokenizer pre;
  const std::string type = spec.is_object() ? spec.value("type", "") : "";
  if (type == "ByteLevel") {
    pre.add_prefix_space = spec.value("add_prefix_space", false);
    if (!spec.value("use_regex", true)) pre.regex.reset();
    return pre;
  }
  if (type != "Sequence") throw unsupported("\"" + type + "\"");
  const json& steps = spec.at("pretokenizers");
  if (steps.size() != 2 || steps[0].value("type", "") != "Split" ||
      steps[1].value("type", "") != "ByteLevel") {
    throw unsupported("sequence");
  }
  const std::string pattern = steps[0].at("pattern").value("Regex", "");
  pre.regex = find_split_regex(pattern);
  if (!pre.regex || steps[0].value("invert", false) || steps[0].value("behavior", "") != "Isolated") {
    throw unsupported("split \"" + pattern + "\"");
  }
  pre.add_prefix_space = steps[1].value("add_prefix_space", false);
  return pre;
}

// tokenizer.json's "pre_tokenizer", and its "normalizer" (none, or NFC).
BpePreTokenizer parse_pre_tokenizer_and_normalizer(const json& spec, const std::filesystem::path& file) {
  BpePreTokenizer pre = parse_pre_tokenizer(spec.value("pre_tokenizer", json()), file);
  const json normalizer = spec.value("normalizer", json());
  if (!normalizer.is_null()) {
    if (normalizer.value("type", "") != "NFC") {
      throw IoError(file.string() + ": unsupported normalizer \"" + normalizer.value("type", "") +
                    "\" for byte-level BPE (supported: none, NFC)");
    }
    pre.nfc = true;
  }
  return pre;
}

bool is_roberta(const TokenizerConfig& config) {
  return config.tokenizer_class().find("Roberta") != std::string::npos;
}

// The names HF's tokenizer classes assume when tokenizer_config.json does not set them.
SpecialTokenNames default_names(const TokenizerConfig& config, const Vocab& vocab) {
  if (is_roberta(config)) return {"<pad>", "<unk>", "<s>", "</s>", "<s>", "</s>", "<mask>"};
  SpecialTokenNames names;
  if (vocab.contains("<|endoftext|>")) names.unk = names.bos = names.eos = "<|endoftext|>";
  return names;
}

// add_bos_token / add_eos_token in tokenizer_config.json rebuild the template, as transformers does.
void apply_bos_eos_config(Template& post, const TokenizerConfig& config, const SpecialTokenNames& names,
                          const Vocab& vocab, const AddedVocabulary& added) {
  if (!config.has("add_bos_token") && !config.has("add_eos_token")) return;
  const auto id_of = [&](const std::optional<std::string>& name) -> int64_t {
    if (!name) return -1;
    const AddedToken* token = added.find(*name);
    return token != nullptr ? token->id : vocab.find(*name);
  };
  const int64_t bos = config.flag("add_bos_token").value_or(false) ? id_of(names.bos) : -1;
  const int64_t eos = config.flag("add_eos_token").value_or(false) ? id_of(names.eos) : -1;
  post = Template::bos_eos(bos, names.bos.value_or(""), eos, names.eos.value_or(""));
}

}  // namespace

bool is_byte_level_bpe(const json& spec) {
  const auto mentions_byte_level = [](const json& part) {
    return part.is_object() && part.dump().find("\"ByteLevel\"") != std::string::npos;
  };
  return mentions_byte_level(spec.value("pre_tokenizer", json())) ||
         mentions_byte_level(spec.value("decoder", json()));
}

std::unique_ptr<Tokenizer> load_bpe_json(const json& spec, const TokenizerConfig& config,
                                         const std::filesystem::path& file) {
  return with_file_context(file, [&]() -> std::unique_ptr<Tokenizer> {
    const json& model_spec = spec.at("model");
    Vocab vocab = parse_vocab(model_spec.at("vocab"), file);
    BpeModel model;
    if (model_spec.contains("unk_token") && !model_spec["unk_token"].is_null()) {
      model.unk_token = model_spec["unk_token"].get<std::string>();
    }
    model.fuse_unk = model_spec.value("fuse_unk", false);
    model.ignore_merges = model_spec.value("ignore_merges", false);
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      if (model_spec.contains(key) && !model_spec[key].is_null() &&
          !model_spec[key].get<std::string>().empty()) {
        throw IoError(file.string() + ": BPE \"" + key + "\" is not supported for byte-level BPE");
      }
    }
    for (const auto& [a, b] : parse_merges(model_spec.at("merges"), file))
      add_merge(model, vocab, a, b, file);

    const BpePreTokenizer pre = parse_pre_tokenizer_and_normalizer(spec, file);
    AddedVocabulary added = parse_added_tokens(spec.value("added_tokens", json()), file);
    const SpecialTokenNames names = special_token_names(config, default_names(config, vocab));
    Template post = parse_post_processor(spec.value("post_processor", json()), file);
    apply_bos_eos_config(post, config, names, vocab, added);
    return std::make_unique<BpeTokenizer>(std::move(vocab), std::move(added), std::move(post), pre,
                                          std::move(model), names, config);
  });
}

std::unique_ptr<Tokenizer> load_bpe_files(const std::filesystem::path& vocab_json,
                                          const std::filesystem::path& merges_txt,
                                          const TokenizerConfig& config) {
  const json vocab_spec = read_json_file(vocab_json);
  Vocab vocab = with_file_context(vocab_json, [&] { return parse_vocab(vocab_spec, vocab_json); });

  BpeModel model;
  for_each_merge_line(merges_txt, [&](const std::string& a, const std::string& b, const std::string& where) {
    add_merge(model, vocab, a, b, where);
  });

  BpePreTokenizer pre;
  pre.add_prefix_space = config.flag("add_prefix_space").value_or(false);
  const SpecialTokenNames names = special_token_names(config, default_names(config, vocab));
  AddedVocabulary added = implied_added_tokens(config, names, vocab);
  Template post;
  if (is_roberta(config)) {
    // RobertaTokenizer's <mask> swallows the space before it, so "a <mask>" fills in as " word".
    if (const AddedToken* mask = names.mask ? added.find(*names.mask) : nullptr; mask && !mask->lstrip) {
      AddedToken with_lstrip = *mask;
      with_lstrip.lstrip = true;
      added.add(std::move(with_lstrip));
    }
    const auto id_of = [&](const std::optional<std::string>& name) { return name ? vocab.find(*name) : -1; };
    post =
        Template::roberta(id_of(names.cls), names.cls.value_or(""), id_of(names.sep), names.sep.value_or(""));
  } else {
    apply_bos_eos_config(post, config, names, vocab, added);
  }
  return std::make_unique<BpeTokenizer>(std::move(vocab), std::move(added), std::move(post), pre,
                                        std::move(model), names, config);
}

std::optional<ByteLevelBpeFiles> read_byte_level_bpe(const std::filesystem::path& dir,
                                                     const TokenizerConfig& config) {
  ByteLevelBpeFiles parts;
  const std::filesystem::path tokenizer_json = dir / "tokenizer.json";
  if (std::filesystem::exists(tokenizer_json)) {
    const json spec = read_json_file(tokenizer_json);
    const bool byte_level = with_file_context(tokenizer_json, [&] {
      if (!spec.is_object()) throw IoError(tokenizer_json.string() + ": expected a JSON object");
      return spec.at("model").value("type", std::string()) == "BPE" && is_byte_level_bpe(spec);
    });
    if (byte_level) {
      with_file_context(tokenizer_json, [&] {
        const json& model_spec = spec.at("model");
        parts.vocab = parse_vocab(model_spec.at("vocab"), tokenizer_json);
        parts.merges = parse_merges(model_spec.at("merges"), tokenizer_json);
        parts.added = parse_added_tokens(spec.value("added_tokens", json()), tokenizer_json);
        parts.pre = parse_pre_tokenizer_and_normalizer(spec, tokenizer_json);
      });
      return parts;
    }
  }
  const std::filesystem::path vocab_json = dir / "vocab.json", merges_txt = dir / "merges.txt";
  if (!std::filesystem::exists(vocab_json) || !std::filesystem::exists(merges_txt)) return std::nullopt;
  const json vocab_spec = read_json_file(vocab_json);
  parts.vocab = with_file_context(vocab_json, [&] { return parse_vocab(vocab_spec, vocab_json); });
  for_each_merge_line(merges_txt, [&](const std::string& a, const std::string& b, const std::string&) {
    parts.merges.emplace_back(a, b);
  });
  parts.pre.add_prefix_space = config.flag("add_prefix_space").value_or(false);
  parts.added = implied_added_tokens(config, special_token_names(config, default_names(config, parts.vocab)),
                                     parts.vocab);
  return parts;
}

}  // namespace deltatune::tokenize
