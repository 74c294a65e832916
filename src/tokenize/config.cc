#include "tokenize/config.h"

#include <charconv>
#include <fstream>
#include <sstream>

namespace deltatune::tokenize {

using nlohmann::json;

TokenizerConfig TokenizerConfig::of(json settings, std::filesystem::path source) {
  TokenizerConfig config;
  config.json_ = std::move(settings);
  config.file_ = std::move(source);
  return config;
}

TokenizerConfig TokenizerConfig::read(const std::filesystem::path& dir) {
  TokenizerConfig config;
  config.file_ = dir / "tokenizer_config.json";
  if (std::filesystem::exists(config.file_)) {
    config.json_ = read_json_file(config.file_);
    if (!config.json_.is_object()) throw IoError(config.file_.string() + ": expected a JSON object");
  }
  // Older checkpoints keep the special token names in special_tokens_map.json; the config wins.
  const std::filesystem::path map_file = dir / "special_tokens_map.json";
  if (std::filesystem::exists(map_file)) {
    const json map = read_json_file(map_file);
    if (!map.is_object()) throw IoError(map_file.string() + ": expected a JSON object");
    for (const auto& [key, value] : map.items()) {
      if (!config.json_.contains(key)) config.json_[key] = value;
    }
  }
  return config;
}

bool TokenizerConfig::has(std::string_view key) const { return json_.contains(key); }

std::optional<std::string> TokenizerConfig::token(std::string_view key) const {
  return with_file_context(file_, [&]() -> std::optional<std::string> {
    const auto it = json_.find(key);
    if (it == json_.end() || it->is_null()) return std::nullopt;
    if (it->is_object()) return it->at("content").get<std::string>();  // a serialised AddedToken
    return it->get<std::string>();
  });
}

std::optional<bool> TokenizerConfig::flag(std::string_view key) const {
  return with_file_context(file_, [&]() -> std::optional<bool> {
    const auto it = json_.find(key);
    if (it == json_.end() || it->is_null()) return std::nullopt;
    return it->get<bool>();
  });
}

std::string TokenizerConfig::tokenizer_class() const {
  const auto it = json_.find("tokenizer_class");
  return it != json_.end() && it->is_string() ? it->get<std::string>() : "";
}

int64_t TokenizerConfig::model_max_length() const {
  const auto it = json_.find("model_max_length");
  if (it == json_.end() || !it->is_number()) return -1;
  const double value = it->get<double>();
  return value > 0 && value < 1e18 ? static_cast<int64_t>(value) : -1;
}

std::vector<AddedToken> TokenizerConfig::added_tokens() const {
  return with_file_context(file_, [&] {
    std::vector<AddedToken> tokens;
    const auto it = json_.find("added_tokens_decoder");
    if (it == json_.end() || it->is_null()) return tokens;
    for (const auto& [key, entry] : it->items()) {
      int64_t id = -1;
      const auto [end, error] = std::from_chars(key.data(), key.data() + key.size(), id);
      if (error != std::errc() || end != key.data() + key.size() || id < 0) {
        throw IoError(file_.string() + ": added_tokens_decoder: \"" + key + "\" is not a token id");
      }
      tokens.push_back(parse_added_token(entry, id));
    }
    return tokens;
  });
}

int64_t parse_token_id(const json& value, const std::filesystem::path& file) {
  constexpr int64_t kLimit = int64_t{1} << 24;  // far above any real vocabulary; keeps tables small
  if (!value.is_number_integer() || value.get<int64_t>() < 0 || value.get<int64_t>() >= kLimit) {
    throw IoError(file.string() + ": token id " + value.dump() + " is not an integer in [0, 2^24)");
  }
  return value.get<int64_t>();
}

AddedToken parse_added_token(const json& entry, int64_t id) {
  AddedToken token;
  token.id = id;
  token.content = entry.at("content").get<std::string>();
  token.special = entry.value("special", false);
  token.normalized = entry.value("normalized", !token.special);  // HF's default
  token.lstrip = entry.value("lstrip", false);
  token.rstrip = entry.value("rstrip", false);
  token.single_word = entry.value("single_word", false);
  return token;
}

SpecialTokenNames special_token_names(const TokenizerConfig& config, SpecialTokenNames defaults) {
  const auto pick = [&](const char* key, std::optional<std::string>& name) {
    if (config.has(key)) name = config.token(key);
  };
  pick("pad_token", defaults.pad);
  pick("unk_token", defaults.unk);
  pick("bos_token", defaults.bos);
  pick("eos_token", defaults.eos);
  pick("cls_token", defaults.cls);
  pick("sep_token", defaults.sep);
  pick("mask_token", defaults.mask);
  return defaults;
}

}  // namespace deltatune::tokenize
