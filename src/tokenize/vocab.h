#pragma once
// A token <-> id table. Ids may have gaps (vocab.json need not be dense); gaps read as "".
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace deltatune::tokenize {

struct StringHash {
  using is_transparent = void;  // lets find() take a string_view without building a string
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

template <typename Value>
using StringMap = std::unordered_map<std::string, Value, StringHash, std::equal_to<>>;

class Vocab {
 public:
  void add(std::string token, int64_t id) {
    if (id >= static_cast<int64_t>(tokens_.size())) tokens_.resize(static_cast<size_t>(id) + 1);
    tokens_[static_cast<size_t>(id)] = token;
    ids_[std::move(token)] = id;
  }
  int64_t find(std::string_view token) const {
    const auto it = ids_.find(token);
    return it == ids_.end() ? -1 : it->second;
  }
  bool contains(std::string_view token) const { return ids_.find(token) != ids_.end(); }
  const std::string& token(int64_t id) const {
    static const std::string none;
    return id >= 0 && id < static_cast<int64_t>(tokens_.size()) ? tokens_[static_cast<size_t>(id)] : none;
  }
  int64_t size() const { return static_cast<int64_t>(tokens_.size()); }
  size_t entries() const { return ids_.size(); }

 private:
  StringMap<int64_t> ids_;
  std::vector<std::string> tokens_;
};

}  // namespace deltatune::tokenize
