// A union of deltas trained, saved and loaded as one: {"method": "combination", "deltas": [{...},
// {...}]} (make_delta also takes a bare JSON list of configs as the same thing).
//
// Order. The members attach in a fixed order by stage (each method's Delta::attach_stage), whatever
// the order of the list, so a combination means the same thing however it is written (members of one
// stage keep the listed order):
//   1. bitfit, ln, last-layers   the model's own tensors (the base every other delta sees)
//   2. prompt                    the input embeddings
//   3. prefix                    attention keys and values
//   4. lora, diff_pruning, mask  added to W x (the weight's product, parallel to it)
//   5. ia3                       scales a layer's output (a LoRA on the same layer is scaled with it)
//   6. adapter, compacter, ...   sequential adapters wrap the layer's complete output, last
//   7. unipelt, combination      anything else, in the listed order
// On one linear layer the hooks run in that order too (LoRA, then IA3, then an adapter).
//
// Parameters keep the members' own names (a BitFit bias is the model's name, so the saved fingerprint
// leaves it out as for BitFit alone). Two members training the same tensor is a config error.
#include <algorithm>
#include <set>

#include "delta/composite.h"
#include "delta/methods.h"
#include "deltatune/delta_method.h"
#include "deltatune/error.h"
#include "deltatune/ops.h"

namespace deltatune::delta {
namespace {

class Combination : public Delta, public CompositeDelta {
 public:
  explicit Combination(const nlohmann::json& c) : config_(c) {
    const nlohmann::json list = c.is_array() ? c : c.value("deltas", nlohmann::json());
    if (!list.is_array() || list.empty())
      throw ConfigError("combination: \"deltas\" must be a non-empty list of delta configs");
    std::vector<std::pair<int, std::unique_ptr<Delta>>> made;
    for (size_t i = 0; i < list.size(); ++i) {
      if (!list[i].is_object() || !list[i].contains("method"))
        throw ConfigError("combination: deltas[" + std::to_string(i) +
                          "] must be a delta config with a \"method\"");
      try {
        auto d = make_delta(list[i]);
        const int rank = d->attach_stage();
        made.emplace_back(rank, std::move(d));
      } catch (const ConfigError& e) {
        throw ConfigError("combination: deltas[" + std::to_string(i) + "]: " + e.what());
      }
    }
    std::stable_sort(made.begin(), made.end(), [](auto& a, auto& b) { return a.first < b.first; });
    for (auto& [_, d] : made) members_.push_back(std::move(d));
    seed = c.is_object() ? c.value("seed", uint64_t(0)) : 0;
  }

  std::string method() const override { return "combination"; }

  std::vector<Delta*> members() override {
    std::vector<Delta*> out;
    for (auto& d : members_) out.push_back(d.get());
    return out;
  }

  void attach(TransformerModel& model) override {
    if (model_) throw Error("combination delta '" + name + "' is already attached");
    size_t done = 0;
    try {
      for (auto& d : members_) {
        d->name = name;
        d->seed = seed + done;  // distinct but reproducible per member
        d->attach(model);
        ++done;
      }
      std::set<std::string> names;
      std::set<const void*> tensors;
      for (auto& d : members_)
        for (auto& [n, t] : d->parameters())
          if (!names.insert(n).second || !tensors.insert(t.impl()).second)
            throw ConfigError("combination: two members train the same tensor '" + n + "' (" +
                              describe_members() + ")");
    } catch (...) {
      for (size_t i = std::min(done, members_.size()); i-- > 0;) members_[i]->detach();
      throw;
    }
    model_ = &model;
    set_enabled(enabled_);
  }

  void detach() override {
    for (auto it = members_.rbegin(); it != members_.rend(); ++it) (*it)->detach();
    model_ = nullptr;
  }

  void set_enabled(bool on) override {
    enabled_ = on;
    for (auto& d : members_) d->set_enabled(on);
  }

  std::vector<std::pair<std::string, Tensor>> parameters() override {
    std::vector<std::pair<std::string, Tensor>> out;
    for (auto& d : members_)
      for (auto& p : d->parameters()) out.push_back(p);
    return out;
  }
  std::vector<std::pair<std::string, Tensor>> saved_parameters() override {
    std::vector<std::pair<std::string, Tensor>> out;
    for (auto& d : members_)
      for (auto& p : d->saved_parameters()) out.push_back(p);
    return out;
  }

  // Each member reads back its own part of a save (diff pruning's sparse form, for one).
  std::vector<std::string> saved_names() override {
    std::vector<std::string> out;
    for (auto& d : members_)
      for (auto& n : d->saved_names()) out.push_back(n);
    return out;
  }
  void load_saved(const std::map<std::string, Tensor>& values) override {
    std::set<std::string> used;
    for (auto& d : members_) {
      std::map<std::string, Tensor> part;
      for (auto& n : d->saved_names())
        if (auto it = values.find(n); it != values.end()) part[n] = it->second, used.insert(n);
      d->load_saved(part);
    }
    for (auto& [n, _] : values)
      if (!used.count(n))
        throw ConfigError("delta parameter '" + n + "' belongs to no member of this combination (" +
                          describe_members() + ")");
  }
  Tensor regularizer() override {
    Tensor total;
    for (auto& d : members_)
      if (Tensor r = d->regularizer(); r.defined()) total = total.defined() ? ops::add(total, r) : r;
    return total;
  }

  nlohmann::json config() const override { return describe(false); }
  nlohmann::json saved_config() const override { return describe(true); }

  // A combination shares a mixed batch when every member does; it is neither merged nor PEFT's.
  bool supports_mixed_batch() const override {
    return std::all_of(members_.begin(), members_.end(), [](auto& d) { return d->supports_mixed_batch(); });
  }

  std::vector<std::string> attached_modules() const override {
    std::vector<std::string> out;
    for (auto& d : members_)
      for (auto& p : d->attached_modules())
        if (std::find(out.begin(), out.end(), p) == out.end()) out.push_back(p);
    return out;
  }

 private:
  nlohmann::json describe(bool saved) const {
    nlohmann::json c = config_.is_object() ? config_ : nlohmann::json::object();
    c["method"] = "combination";
    c["seed"] = seed;
    c["order"] = "bitfit/ln/last-layers, prompt, prefix, lora/diff_pruning/mask, ia3, adapters, others";
    nlohmann::json list = nlohmann::json::array();
    for (auto& d : members_) list.push_back(saved ? d->saved_config() : d->config());
    c["deltas"] = list;
    return c;
  }
  std::string describe_members() const {
    std::string s;
    for (auto& d : members_) s += (s.empty() ? "" : " + ") + d->method();
    return s;
  }

  nlohmann::json config_;
  std::vector<std::unique_ptr<Delta>> members_;
  bool enabled_ = true;
  TransformerModel* model_ = nullptr;
};
}  // namespace

std::unique_ptr<Delta> make_combination(const nlohmann::json& config) {
  return std::make_unique<Combination>(config);
}

DeltaMethod combination_method() {
  return {.name = "combination",
          .make = make_combination,
          .description = "several deltas trained together (give them in a delta config file)"};
}

}  // namespace deltatune::delta
