#pragma once
// Reading the JSON files of a tokenizer folder, and tokenizer_config.json's settings.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "deltatune/error.h"
#include "deltatune/json_file.h"
#include "tokenize/added_tokens.h"

namespace deltatune::tokenize {

// tokenizer_config.json, or an empty object when the folder has none.
class TokenizerConfig {
 public:
  TokenizerConfig() = default;
  static TokenizerConfig read(const std::filesystem::path& dir);
  // Settings given as JSON (a GGUF file's tokenizer.ggml.* keys, read into tokenizer_config.json's).
  static TokenizerConfig of(nlohmann::json settings, std::filesystem::path source);

  bool has(std::string_view key) const;
  // A special token setting ("bos_token": "<s>" or {"content": "<s>", ...}); nullopt when absent or null.
  std::optional<std::string> token(std::string_view key) const;
  std::optional<bool> flag(std::string_view key) const;  // nullopt when absent or null
  std::string tokenizer_class() const;                   // "" when absent
  int64_t model_max_length() const;                      // -1 when absent or the HF "unbounded" 1e30
  // "added_tokens_decoder" ({"0": {"content": ..., "special": true, ...}}), as added tokens.
  std::vector<AddedToken> added_tokens() const;
  const std::filesystem::path& file() const { return file_; }

 private:
  nlohmann::json json_ = nlohmann::json::object();
  std::filesystem::path file_;
};

// A token id read from a vocabulary file: an integer in [0, 2^24), else IoError naming the file.
int64_t parse_token_id(const nlohmann::json& value, const std::filesystem::path& file);

// One entry of tokenizer.json's "added_tokens" (or of added_tokens_decoder, with the id given apart).
AddedToken parse_added_token(const nlohmann::json& entry, int64_t id);

// The seven special token names tokenizer_config.json may set.
struct SpecialTokenNames {
  std::optional<std::string> pad, unk, bos, eos, cls, sep, mask;
};
// The names set in the config; a key the config lacks keeps the value in `defaults`, a null clears it.
SpecialTokenNames special_token_names(const TokenizerConfig& config, SpecialTokenNames defaults);

// Runs `body`, turning nlohmann's errors (a missing key, a wrong type) into an IoError naming `file`.
template <typename Body>
auto with_file_context(const std::filesystem::path& file, Body&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const nlohmann::json::exception& e) {
    throw IoError(file.string() + ": malformed tokenizer file: " + e.what());
  }
}

}  // namespace deltatune::tokenize
