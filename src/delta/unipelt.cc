// UniPELT (Mao et al., 2022): a Pfeiffer adapter, prefix tuning and LoRA in one delta, each scaled
// by its own gate. A gate is one scalar per example, per layer, per submodule:
//   g = mean over the example's real (non-pad) tokens of sigmoid(h W_g^T + b_g),  W_g [1, H]
//   adapter  y -> y + g_A * adapter(y)           g_A from the adapter's input y (ffn.down's output)
//   prefix   P_K, P_V -> g_P * P_K, g_P * P_V     g_P from the layer's input
//   lora     W x -> W x + g_L * B A x             g_L from the linear layer's input x; it replaces
//                                                alpha / r (the LoRA part runs with alpha = r)
// Config: {"method": "unipelt", "variant": "APL"} (letters: A adapter, P prefix, L LoRA; "AP" and
// "APL" are the paper's variants, any non-empty subset works). Each part takes its defaults from the
// paper (adapter: pfeiffer, reduction_factor 16; prefix: 10 tokens, MLP reparameterisation while
// training; lora: r 8 on attn.q and attn.v) and may be overridden by an "adapter", "prefix" or "lora"
// object of that method's own fields.
//
// The parts are the ordinary adapter, prefix and LoRA deltas: UniPELT attaches them and wraps the
// hooks they installed with gated ones, so their code (and their parameter names) is shared. The gate
// parameters are <module>.adapter_gate.*, <module>.lora_gate.* and <layers>.<l>.prefix_gate.*.
//
// A prefix gate that is exactly zero (a saturated sigmoid) also masks the prefix out for that example:
// zero keys would otherwise still take a share of the attention, and a closed gate should leave the
// base model. (In decoders the real tokens' positions still start after the prefix, as for prefix
// tuning alone, so there only closed adapter and LoRA gates give the base exactly.) Saved like any delta (the
// prefix collapsed, as prefix tuning saves it); not mergeable, since the gates depend on the input. The
// attention mask reaches the gates through an embedding hook that only looks at it; prompt tokens prepended
// later count as real tokens.
#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <sstream>

#include "delta/composite.h"
#include "delta/methods.h"
#include "deltatune/autograd.h"
#include "deltatune/delta_method.h"
#include "deltatune/error.h"
#include "deltatune/gates.h"

namespace deltatune::delta {
namespace {

struct GateParams {
  Tensor weight, bias;  // [1, H], [1]
};

// What the gates of one UniPELT share: the mask of the forward in progress (kept in the call's
// ForwardContext, keyed by this object, so concurrent calls keep their own) and the recorded sums.
struct GateContext {
  std::mutex recording_mutex;  // concurrent calls add to the same sums
  bool recording = false;
  struct Sum {
    int64_t layer = -1;
    std::string submodule, module;
    double total = 0;
    int64_t examples = 0;
  };
  std::map<std::string, Sum> sums;  // by module/submodule key

  // The real-token mask for hidden states [B, T]: the captured one, with ones in front for positions
  // prepended after it was seen (prompt tokens); all ones when it does not fit (a cached decode step).
  Tensor mask_for(int64_t batch, int64_t length) const {
    const Tensor* captured = ForwardContext::current().find<Tensor>(this);
    const Tensor mask = captured ? *captured : Tensor();
    if (!mask.defined() || mask.dim() != 2 || mask.size(0) != batch || mask.size(1) > length)
      return Tensor::ones({batch, length});
    if (mask.size(1) == length) return mask;
    return ops::concat({Tensor::ones({batch, length - mask.size(1)}), mask}, 1);
  }

  // g [B] = mean over real tokens of sigmoid(h w^T + b), h [B, T, H] (or [B, H]).
  Tensor gate(const Tensor& h, const GateParams& p, const Sum& where) {
    Tensor hs = h.dim() == 2 ? h.unsqueeze(1) : h;
    if (hs.dim() != 3) throw ShapeError("unipelt: gate input " + shape_str(h.shape()) + " is not [B, T, H]");
    const int64_t batch = hs.size(0), length = hs.size(1);
    Tensor s = ops::sigmoid(ops::linear(hs, p.weight, p.bias)).reshape({batch, length});
    Tensor m = mask_for(batch, length);
    std::vector<float> mv = m.to_floats(), counts(size_t(batch), 0.0f);
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t t = 0; t < length; ++t) counts[size_t(b)] += mv[size_t(b * length + t)];
      counts[size_t(b)] = std::max(counts[size_t(b)], 1.0f);
    }
    Tensor g = ops::div(ops::sum(ops::mul(s, m), {1}), Tensor::from_floats(counts, {batch}));
    if (recording) {
      std::lock_guard<std::mutex> lock(recording_mutex);
      Sum& sum = sums[where.module + "/" + where.submodule];
      if (sum.examples == 0)
        sum.layer = where.layer, sum.submodule = where.submodule, sum.module = where.module;
      for (float v : g.to_floats()) sum.total += v;
      sum.examples += batch;
    }
    return g;
  }
};

// Watches the embeddings' mask; changes nothing.
struct MaskCapture : EmbeddingHook {
  std::shared_ptr<GateContext> ctx;
  void extend(Tensor&, Tensor& mask) override { ForwardContext::current().slot<Tensor>(ctx.get()) = mask; }
};

// A linear hook (adapter or LoRA) whose change to the output is scaled by a gate.
struct GatedLinearHook : nn::LinearHook {
  std::shared_ptr<nn::LinearHook> inner;
  std::shared_ptr<GateContext> ctx;
  GateParams params;
  GateContext::Sum where;
  bool from_output = false;  // the adapter's input is the layer's output

  Tensor pre(nn::Linear& layer, const Tensor& x) override {
    return inner->enabled ? inner->pre(layer, x) : x;
  }
  Tensor post(nn::Linear& layer, const Tensor& x, const Tensor& y) override {
    if (!inner->enabled) return y;
    Tensor changed = inner->post(layer, x, y);
    Tensor g = ctx->gate(from_output ? y : x, params, where);
    Shape gs(size_t(y.dim()), 1);
    gs[0] = y.size(0);
    return ops::add(y, ops::mul(ops::sub(changed, y), g.reshape(gs)));
  }
};

// The prefix hook with its keys and values scaled by a per-layer gate.
struct GatedPrefixHook : AttentionHook {
  std::shared_ptr<AttentionHook> inner;
  std::shared_ptr<GateContext> ctx;
  std::vector<GateParams> params;  // per layer
  std::vector<GateContext::Sum> where;

  void extend(int64_t layer, const Tensor& hidden, Tensor& k, Tensor& v, Tensor& key_mask) override {
    if (!inner->enabled) return;
    inner->extend(layer, hidden, k, v, key_mask);
    if (layer < 0 || layer >= int64_t(params.size())) return;
    const int64_t p = inner->length(), s = k.size(2), batch = k.size(0);
    Tensor g = ctx->gate(hidden, params[size_t(layer)], where[size_t(layer)]);
    Tensor g4 = g.reshape({batch, 1, 1, 1});
    k = ops::concat({ops::mul(k.slice(2, 0, p), g4), k.slice(2, p, s)}, 2);
    v = ops::concat({ops::mul(v.slice(2, 0, p), g4), v.slice(2, p, s)}, 2);
    std::vector<float> gv = g.to_floats();
    if (std::none_of(gv.begin(), gv.end(), [](float x) { return x == 0.0f; })) return;
    std::vector<float> open(size_t(batch * p));
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t i = 0; i < p; ++i) open[size_t(b * p + i)] = gv[size_t(b)] == 0.0f ? 0.0f : 1.0f;
    Tensor km = key_mask.float32();
    key_mask = ops::concat({Tensor::from_floats(open, {batch, p}), km.slice(1, p, km.size(1))}, 1);
  }
  int64_t length() const override { return inner->enabled ? inner->length() : 0; }
};

nlohmann::json merged(nlohmann::json base, const nlohmann::json& overrides) {
  if (overrides.is_object())
    for (auto& [k, v] : overrides.items()) base[k] = v;
  return base;
}

// The part of a module path after the block index ("attention.self.query" -> "query").
std::string leaf_name(const std::string& path) { return path.substr(path.rfind('.') + 1); }

class UniPelt : public Delta, public CompositeDelta {
 public:
  explicit UniPelt(const nlohmann::json& c) : config_(c) {
    std::string v = c.value("variant", std::string("APL"));
    std::transform(v.begin(), v.end(), v.begin(), [](unsigned char ch) { return char(std::toupper(ch)); });
    for (char ch : v)
      if (ch != 'A' && ch != 'P' && ch != 'L')
        throw ConfigError("unipelt: unknown variant '" + c.value("variant", std::string()) +
                          "' (use letters of A = adapter, P = prefix, L = LoRA: \"AP\" or \"APL\")");
    use_adapter_ = v.find('A') != std::string::npos;
    use_prefix_ = v.find('P') != std::string::npos;
    use_lora_ = v.find('L') != std::string::npos;
    if (!use_adapter_ && !use_prefix_ && !use_lora_)
      throw ConfigError("unipelt: the variant names no part (use \"AP\" or \"APL\")");
    variant_ = std::string(use_adapter_ ? "A" : "") + (use_prefix_ ? "P" : "") + (use_lora_ ? "L" : "");
    for (const char* part : {"adapter", "prefix", "lora"})
      if (c.contains(part) && !c[part].is_object())
        throw ConfigError(std::string("unipelt: \"") + part + "\" must be an object of " + part +
                          " settings");
    if (use_adapter_)
      adapter_ = make_adapter(
          merged({{"variant", "pfeiffer"}, {"reduction_factor", 16}}, c.value("adapter", nlohmann::json())));
    if (use_prefix_)
      prefix_ = make_prefix(
          merged({{"num_virtual_tokens", 10}, {"projection", true}}, c.value("prefix", nlohmann::json())));
    if (use_lora_) {
      nlohmann::json lc =
          merged({{"r", 8}, {"targets", {"attn.q", "attn.v"}}}, c.value("lora", nlohmann::json()));
      if (!lc.contains("alpha") && !lc.contains("lora_alpha"))
        lc["alpha"] = lc.value("r", 8);  // the gate scales it
      lora_ = make_lora(lc);
    }
    seed = c.value("seed", uint64_t(0));
  }

  std::string method() const override { return "unipelt"; }

  // Its LoRA is scaled by a gate computed from each input, and the gates read the input embeddings:
  // it cannot be folded into fixed weights nor share a mixed batch. PEFT has no UniPELT.
  void merge_into(TransformerModel&) override {
    throw ConfigError(
        "merge: UniPELT's LoRA is scaled by a gate computed from each input, so it cannot be "
        "folded into fixed weights; use the delta as it is (deltatune eval/predict --delta)");
  }

  std::vector<Delta*> members() override {
    std::vector<Delta*> out;
    for (Delta* d : {adapter_.get(), prefix_.get(), lora_.get()})
      if (d) out.push_back(d);
    return out;
  }

  void attach(TransformerModel& model) override {
    if (model_) throw Error("unipelt delta '" + name + "' is already attached");
    ctx_ = ctx_ ? ctx_ : std::make_shared<GateContext>();
    Generator gen(seed * 7919 + 17);
    uint64_t part_seed = seed;
    try {
      if (adapter_) attach_linear_part(model, *adapter_, "adapter", true, ++part_seed, gen);
      if (prefix_) attach_prefix(model, ++part_seed, gen);
      if (lora_) attach_linear_part(model, *lora_, "lora", false, ++part_seed, gen);
    } catch (...) {
      model_ = &model;
      detach();
      throw;
    }
    capture_ = std::make_shared<MaskCapture>();
    capture_->owner = name;
    capture_->ctx = ctx_;
    model.embedding_hooks.push_back(capture_);
    model_ = &model;
    set_enabled(enabled_);
  }

  void detach() override {
    if (!model_) return;
    for (auto& [layer, gated] : linear_) swap_hook(layer->hooks, gated, gated->inner);
    for (auto& gated : prefix_hooks_) swap_hook(model_->attention_hooks, gated, gated->inner);
    for (Delta* d : members()) d->detach();
    remove_hook(model_->embedding_hooks, std::static_pointer_cast<EmbeddingHook>(capture_));
    linear_.clear();
    prefix_hooks_.clear();
    gate_names_.clear();  // the gates themselves stay in gates_ for a re-attach
    capture_.reset();
    model_ = nullptr;
  }

  void set_enabled(bool on) override {
    enabled_ = on;
    for (Delta* d : members()) d->set_enabled(on);
    if (capture_) capture_->enabled = on;
  }

  std::vector<std::pair<std::string, Tensor>> parameters() override { return collect(false); }
  std::vector<std::pair<std::string, Tensor>> saved_parameters() override { return collect(true); }

  nlohmann::json config() const override { return describe(false); }
  nlohmann::json saved_config() const override { return describe(true); }

  std::vector<std::string> attached_modules() const override {
    std::vector<std::string> out;
    for (const Delta* d : {adapter_.get(), prefix_.get(), lora_.get()})
      if (d)
        for (auto& p : d->attached_modules())
          if (std::find(out.begin(), out.end(), p) == out.end()) out.push_back(p);
    return out;
  }

  void record(bool on) {
    if (!ctx_) ctx_ = std::make_shared<GateContext>();
    std::lock_guard<std::mutex> lock(ctx_->recording_mutex);
    if (on) ctx_->sums.clear();
    ctx_->recording = on;
  }
  std::vector<GateMean> means() const {
    std::vector<GateMean> out;
    if (!ctx_) return out;
    std::lock_guard<std::mutex> lock(ctx_->recording_mutex);
    for (auto& [_, s] : ctx_->sums)
      out.push_back(
          {s.layer, s.submodule, s.module, s.examples ? s.total / double(s.examples) : 0.0, s.examples});
    return out;
  }

 private:
  // A gate Linear(in, 1), torch's default initialisation; kept across re-attaches.
  GateParams gate_params(const std::string& key, int64_t in, Generator& gen) {
    auto it = gates_.find(key);
    if (it != gates_.end() && it->second.weight.size(1) == in) return it->second;
    const float bound = 1.0f / std::sqrt(float(in));
    GateParams p{Tensor::uniform({1, in}, gen, -bound, bound), Tensor::uniform({1}, gen, -bound, bound)};
    gates_[key] = p;
    return p;
  }

  void attach_linear_part(TransformerModel& model, Delta& part, const std::string& kind, bool from_output,
                          uint64_t part_seed, Generator& gen) {
    part.name = name;
    part.seed = part_seed;
    const HookSnapshot before = HookSnapshot::of(model);
    part.attach(model);
    NewHooks added = hooks_since(model, before);
    for (size_t i = 0; i < added.linear.size(); ++i) {
      auto& [layer, hook] = added.linear[i];
      const std::string& path = added.linear_paths[i];
      auto gated = std::make_shared<GatedLinearHook>();
      gated->owner = name;
      gated->inner = hook;
      gated->ctx = ctx_;
      gated->from_output = from_output;
      const std::string key = path + "." + kind + "_gate";
      gated->params = gate_params(key, from_output ? layer->out_features : layer->in_features, gen);
      gated->where = {layer_index(model, path), kind == "lora" ? "lora." + leaf_name(path) : kind, path, 0,
                      0};
      swap_hook(layer->hooks, hook, std::static_pointer_cast<nn::LinearHook>(gated));
      linear_.emplace_back(layer, gated);
      gate_names_.emplace_back(key, gated->params);
    }
  }

  void attach_prefix(TransformerModel& model, uint64_t part_seed, Generator& gen) {
    prefix_->name = name;
    prefix_->seed = part_seed;
    const HookSnapshot before = HookSnapshot::of(model);
    prefix_->attach(model);
    for (auto& hook : hooks_since(model, before).attention) {
      auto gated = std::make_shared<GatedPrefixHook>();
      gated->owner = name;
      gated->inner = hook;
      gated->ctx = ctx_;
      for (int64_t l = 0; l < model.config.num_layers; ++l) {
        const std::string path = model.layers_path() + "." + std::to_string(l);
        const std::string key = path + ".prefix_gate";
        gated->params.push_back(gate_params(key, model.config.hidden_size, gen));
        gated->where.push_back({l, "prefix", path, 0, 0});
        gate_names_.emplace_back(key, gated->params.back());
      }
      swap_hook(model.attention_hooks, hook, std::static_pointer_cast<AttentionHook>(gated));
      prefix_hooks_.push_back(gated);
    }
  }

  std::vector<std::pair<std::string, Tensor>> collect(bool saved) {
    std::vector<std::pair<std::string, Tensor>> out;
    for (Delta* d : members())
      for (auto& p : saved ? d->saved_parameters() : d->parameters()) out.push_back(p);
    if (model_)
      for (auto& [key, p] : gate_names_) {
        out.emplace_back(key + ".weight", p.weight);
        out.emplace_back(key + ".bias", p.bias);
      }
    return out;
  }

  nlohmann::json describe(bool saved) const {
    nlohmann::json c = config_;
    c["method"] = "unipelt";
    c["variant"] = variant_;
    c["seed"] = seed;
    auto part = [&](const std::unique_ptr<Delta>& d, const char* key) {
      if (!d) return c.erase(key), void();
      nlohmann::json pc = saved ? d->saved_config() : d->config();
      pc.erase("method");
      pc.erase("seed");
      c[key] = pc;
    };
    part(adapter_, "adapter");
    part(prefix_, "prefix");
    part(lora_, "lora");
    return c;
  }

  nlohmann::json config_;
  std::string variant_;
  bool use_adapter_ = false, use_prefix_ = false, use_lora_ = false, enabled_ = true;
  std::unique_ptr<Delta> adapter_, prefix_, lora_;
  std::shared_ptr<GateContext> ctx_;
  std::shared_ptr<MaskCapture> capture_;
  std::map<std::string, GateParams> gates_;
  std::vector<std::pair<std::string, GateParams>> gate_names_;  // in attach order
  std::vector<std::pair<nn::Linear*, std::shared_ptr<GatedLinearHook>>> linear_;
  std::vector<std::shared_ptr<GatedPrefixHook>> prefix_hooks_;
  TransformerModel* model_ = nullptr;
};

// Every UniPELT inside `d` (itself, or members of combinations).
void find_unipelts(Delta& d, std::vector<UniPelt*>& out) {
  if (auto* u = dynamic_cast<UniPelt*>(&d)) return out.push_back(u), void();
  if (auto* c = dynamic_cast<CompositeDelta*>(&d))
    for (Delta* m : c->members()) find_unipelts(*m, out);
}

std::string fixed(double v, int digits = 3) {
  std::ostringstream s;
  s.setf(std::ios::fixed);
  s.precision(digits);
  s << v;
  return s.str();
}

}  // namespace

std::unique_ptr<Delta> make_unipelt(const nlohmann::json& config) {
  return std::make_unique<UniPelt>(config);
}

DeltaMethod unipelt_method() {
  return {
      .name = "unipelt", .make = make_unipelt, .description = "UniPELT (APL): gated adapter + prefix + LoRA"};
}

bool has_gates(Delta& d) {
  std::vector<UniPelt*> u;
  find_unipelts(d, u);
  return !u.empty();
}

void record_gates(Delta& d, bool on) {
  std::vector<UniPelt*> u;
  find_unipelts(d, u);
  for (auto* x : u) x->record(on);
}

std::vector<GateMean> gate_means(Delta& d) {
  std::vector<UniPelt*> u;
  find_unipelts(d, u);
  std::vector<GateMean> out;
  for (auto* x : u)
    for (auto& g : x->means()) out.push_back(g);
  std::stable_sort(out.begin(), out.end(), [](const GateMean& a, const GateMean& b) {
    return a.layer != b.layer ? a.layer < b.layer : a.submodule < b.submodule;
  });
  return out;
}

namespace {
// Submodule columns in a stable order: adapter, prefix, then the LoRA ones.
std::vector<std::string> columns(const std::vector<GateMean>& gates) {
  std::vector<std::string> cols;
  for (const char* fixed_col : {"adapter", "prefix"})
    for (auto& g : gates)
      if (g.submodule == fixed_col) {
        cols.push_back(fixed_col);
        break;
      }
  for (auto& g : gates)
    if (std::find(cols.begin(), cols.end(), g.submodule) == cols.end()) cols.push_back(g.submodule);
  return cols;
}
}  // namespace

nlohmann::json gates_json(const std::vector<GateMean>& gates) {
  std::map<int64_t, nlohmann::json> rows;
  std::map<std::string, std::pair<double, int64_t>> col_sum;
  int64_t examples = 0;
  for (auto& g : gates) {
    auto& row = rows[g.layer];
    row["layer"] = g.layer;
    row[g.submodule] = g.mean;
    col_sum[g.submodule].first += g.mean;
    col_sum[g.submodule].second += 1;
    examples = std::max(examples, g.examples);
  }
  nlohmann::json out;
  out["layers"] = nlohmann::json::array();
  for (auto& [_, r] : rows) out["layers"].push_back(r);
  nlohmann::json mean = nlohmann::json::object();
  for (auto& [col, s] : col_sum) mean[col] = s.first / double(s.second);
  out["mean"] = mean;
  out["examples"] = examples;
  out["gates"] = nlohmann::json::array();
  for (auto& g : gates)
    out["gates"].push_back(
        {{"layer", g.layer}, {"submodule", g.submodule}, {"module", g.module}, {"mean", g.mean}});
  return out;
}

std::string gates_table(const std::vector<GateMean>& gates) {
  const std::vector<std::string> cols = columns(gates);
  std::map<int64_t, std::map<std::string, double>> rows;
  for (auto& g : gates) rows[g.layer][g.submodule] = g.mean;
  auto cell = [](const std::string& s, size_t w) {
    return std::string(w > s.size() ? w - s.size() : 0, ' ') + s;
  };
  std::vector<size_t> width;
  for (auto& c : cols) width.push_back(std::max<size_t>(c.size(), 6));
  std::string out = cell("layer", 6);
  for (size_t i = 0; i < cols.size(); ++i) out += "  " + cell(cols[i], width[i]);
  out += "\n";
  std::map<std::string, std::pair<double, int>> sums;
  for (auto& [layer, r] : rows) {
    out += cell(std::to_string(layer), 6);
    for (size_t i = 0; i < cols.size(); ++i) {
      auto it = r.find(cols[i]);
      out += "  " + cell(it == r.end() ? "-" : fixed(it->second), width[i]);
      if (it != r.end()) sums[cols[i]].first += it->second, sums[cols[i]].second += 1;
    }
    out += "\n";
  }
  out += cell("mean", 6);
  for (size_t i = 0; i < cols.size(); ++i) {
    auto& s = sums[cols[i]];
    out += "  " + cell(s.second ? fixed(s.first / s.second) : "-", width[i]);
  }
  return out + "\n";
}

}  // namespace deltatune::delta
