// Bottleneck adapters: a small down-projection, an activation and an up-projection.
//   houlsby   sequential, after the attention output and after the feed-forward output:
//             y -> y + s * up(act(down(y)))   (Houlsby et al.)
//   pfeiffer  sequential, after the feed-forward output only (Pfeiffer et al.)
//   parallel  added to the feed-forward output from the feed-forward input (He et al.):
//             ffn(x) -> ffn(x) + s * up(act(down(x)))
// The bottleneck is given directly or as hidden / reduction_factor. The up-projection starts at zero,
// so an attached adapter is the identity. residual: false makes a sequential adapter replace y.
// projection: dense (default), lowrank (each weight a rank-`rank` product: the low-rank adapter) or
// phm (Compacter's hypercomplex layers, `phm_dim` n, factors of rank `rank`, rules shared by every
// adapter when shared_phm_rule); see adapter_projection.h. Method names with their defaults:
//   compacter        houlsby placement, phm, reduction_factor 32, gelu (Mahabadi et al.)
//   compacter++      the same after the feed-forward only (pfeiffer placement)
//   lowrank_adapter  houlsby placement, lowrank with rank 1
// Parameters: <module>.adapter.down.* and .adapter.up.* (weight, or weight_left/weight_right and
// phm_rule; bias), where <module> is the linear layer the adapter follows (attn.o, ffn.down); shared
// PHM rules are adapter.phm_rule.down / .up. Our format only: PEFT has no adapters.
#include <algorithm>
#include <cmath>

#include "delta/adapter_projection.h"
#include "delta/methods.h"
#include "deltatune/autograd.h"
#include "deltatune/delta.h"
#include "deltatune/delta_method.h"
#include "deltatune/error.h"

namespace deltatune::delta {
namespace {

struct AdapterWeights {
  Projection down, up;
};

struct AdapterBlock {
  AdapterWeights w;
  nn::Activation act;
  float scaling = 1.0f;
  float dropout = 0.0f;
  Tensor run(const Tensor& x, bool training) const {
    Tensor h = act(ops::linear(x, w.down.materialise(), w.down.bias));
    if (training && dropout > 0.0f) h = ops::dropout(h, dropout, true, ForwardContext::current().dropout_rng);
    return ops::mul_scalar(ops::linear(h, w.up.materialise(), w.up.bias), scaling);
  }
};

// Sequential: after the layer's output.
struct SequentialHook : nn::LinearHook {
  AdapterBlock block;
  bool residual = true;
  Tensor post(nn::Linear& layer, const Tensor& x, const Tensor& y) override {
    Tensor a = block.run(y, layer.training());
    return residual ? ops::add(y, a) : a;
  }
};

// Parallel: the feed-forward input is caught on the first feed-forward linear, the adapter's output
// added to the last one's. The caught input belongs to the call (ForwardContext), keyed by the pair's
// shared state.
struct ParallelState {};
struct CaptureHook : nn::LinearHook {
  std::shared_ptr<ParallelState> state;
  Tensor pre(nn::Linear& layer, const Tensor& x) override {
    ForwardContext::current().slot<Tensor>(state.get()) = x;
    return x;
  }
};
struct ParallelHook : nn::LinearHook {
  AdapterBlock block;
  std::shared_ptr<ParallelState> state;
  Tensor post(nn::Linear& layer, const Tensor& x, const Tensor& y) override {
    ForwardContext& call = ForwardContext::current();
    Tensor* caught = call.find<Tensor>(state.get());
    if (!caught || !caught->defined())
      throw Error(
          "parallel adapter on a feed-forward output whose input was not seen (is the up-projection "
          "hooked?)");
    Tensor in = *caught;
    call.erase(state.get());
    return ops::add(y, block.run(in, layer.training()));
  }
};

class Adapter : public Delta {
 public:
  // `method` picks the defaults: "adapter", "compacter", "compacter++" or "lowrank_adapter".
  Adapter(const nlohmann::json& c, const std::string& method) : config_(c), method_(method) {
    const bool compacter = method == "compacter" || method == "compacter++";
    variant_ = c.value("variant", std::string(method == "compacter++" ? "pfeiffer" : "houlsby"));
    projection_name_ = c.value("projection", std::string(compacter                     ? "phm"
                                                         : method == "lowrank_adapter" ? "lowrank"
                                                                                       : "dense"));
    projection_.kind = projection_kind(projection_name_);
    projection_.rank = c.value("rank", int64_t(1));
    projection_.phm_dim = c.value("phm_dim", int64_t(4));
    shared_rule_ = c.value("shared_phm_rule", true);
    if (projection_.rank < 1) throw ConfigError(method + ": rank must be at least 1");
    if (projection_.phm_dim < 1) throw ConfigError(method + ": phm_dim must be at least 1");
    if (variant_ != "houlsby" && variant_ != "pfeiffer" && variant_ != "parallel")
      throw ConfigError("adapter: unknown variant '" + variant_ +
                        "' (supported: houlsby, pfeiffer, parallel)");
    if (c.contains("bottleneck") && !c["bottleneck"].is_null()) {
      if (!c["bottleneck"].is_number_integer()) throw ConfigError("adapter: bottleneck must be an integer");
      bottleneck_ = c["bottleneck"].get<int64_t>();
      if (bottleneck_ < 1)
        throw ConfigError("adapter: bottleneck must be at least 1, got " + std::to_string(bottleneck_));
    }
    reduction_ = c.value("reduction_factor", compacter ? 32.0 : 16.0);
    if (reduction_ <= 0) throw ConfigError("adapter: reduction_factor must be positive");
    activation_ = c.value("activation", std::string(compacter ? "gelu" : "relu"));
    nn::activation(activation_);  // validates the name
    residual_ = c.value("residual", true);
    scaling_ = c.value("scaling", 1.0);
    dropout_ = c.value("dropout", 0.0);
    if (dropout_ < 0 || dropout_ >= 1) throw ConfigError("adapter: dropout must be in [0, 1)");
    if (c.contains("targets") && !c["targets"].is_null() && variant_ != "parallel")
      targets_ = c["targets"];
    else if (variant_ == "houlsby")
      targets_ = {"attn.o", "ffn.down"};
    else
      targets_ = {"ffn.down"};
    seed = c.value("seed", uint64_t(0));
  }

  std::string method() const override { return method_; }

  void attach(TransformerModel& model) override {
    if (model_) throw Error("adapter delta '" + name + "' is already attached");
    auto spec = TargetSpec::from_json(targets_, config_.value("exclude", nlohmann::json()),
                                      config_.value("layers", nlohmann::json()));
    paths_ = resolve_targets(model, spec);
    std::vector<std::string> inputs;  // parallel: the feed-forward input layer of each block
    if (variant_ == "parallel") {
      auto up_spec =
          TargetSpec::from_json(nlohmann::json{"ffn.up"}, config_.value("exclude", nlohmann::json()),
                                config_.value("layers", nlohmann::json()));
      inputs = resolve_targets(model, up_spec);
      if (inputs.size() != paths_.size())
        throw ConfigError(
            "adapter: parallel adapters need one feed-forward input and output per block (found " +
            std::to_string(inputs.size()) + " inputs, " + std::to_string(paths_.size()) + " outputs)");
    }
    Generator gen(seed);
    std::map<std::string, AdapterWeights> previous;
    for (auto& [p, w] : weights_) previous[p] = w;
    weights_.clear();
    if (projection_.kind == ProjectionKind::Phm && shared_rule_ && !shared_down_rule_.defined()) {
      shared_down_rule_ = make_phm_rule(projection_.phm_dim, gen);
      shared_up_rule_ = make_phm_rule(projection_.phm_dim, gen);
    }
    for (size_t i = 0; i < paths_.size(); ++i) {
      const std::string& path = paths_[i];
      auto* layer = static_cast<nn::Linear*>(model.find_module(path));
      const int64_t hidden = layer->out_features;
      const int64_t in = variant_ == "parallel"
                             ? static_cast<nn::Linear*>(model.find_module(inputs[i]))->in_features
                             : hidden;
      const int64_t r = bottleneck_ > 0
                            ? bottleneck_
                            : std::max<int64_t>(1, int64_t(std::lround(double(hidden) / reduction_)));
      AdapterWeights w;
      auto prev = previous.find(path);
      if (prev != previous.end() && prev->second.down.bias.shape() == Shape{r} &&
          prev->second.up.bias.shape() == Shape{hidden}) {
        w = prev->second;
      } else {  // the up-projection starts at zero: the adapter starts as the identity
        w.down = make_projection(projection_, r, in, false, gen, shared_down_rule_);
        w.up = make_projection(projection_, hidden, r, true, gen, shared_up_rule_);
      }
      weights_.emplace_back(path, w);
      AdapterBlock block{w, nn::activation(activation_), float(scaling_), float(dropout_)};
      if (variant_ == "parallel") {
        auto state = std::make_shared<ParallelState>();
        auto capture = std::make_shared<CaptureHook>();
        capture->state = state;
        auto hook = std::make_shared<ParallelHook>();
        hook->block = block;
        hook->state = state;
        install(static_cast<nn::Linear*>(model.find_module(inputs[i])), capture);
        install(layer, hook);
      } else {
        auto hook = std::make_shared<SequentialHook>();
        hook->block = block;
        hook->residual = residual_;
        install(layer, hook);
      }
    }
    model_ = &model;
  }

  void detach() override {
    hooks_.remove_all();
    model_ = nullptr;
  }

  void set_enabled(bool on) override {
    enabled_ = on;
    hooks_.set_enabled(on);
  }

  std::vector<std::pair<std::string, Tensor>> parameters() override {
    std::vector<std::pair<std::string, Tensor>> out;
    if (shared_down_rule_.defined() && !weights_.empty()) {
      out.emplace_back("adapter.phm_rule.down", shared_down_rule_);
      out.emplace_back("adapter.phm_rule.up", shared_up_rule_);
    }
    for (auto& [path, w] : weights_) {
      w.down.append_parameters(path + ".adapter.down", out);
      w.up.append_parameters(path + ".adapter.up", out);
    }
    return out;
  }

  nlohmann::json config() const override {
    nlohmann::json c = config_;
    c["method"] = method_;
    c["variant"] = variant_;
    c["projection"] = projection_name_;
    if (projection_.kind != ProjectionKind::Dense) c["rank"] = projection_.rank;
    if (projection_.kind == ProjectionKind::Phm) {
      c["phm_dim"] = projection_.phm_dim;
      c["shared_phm_rule"] = shared_rule_;
    }
    if (bottleneck_ > 0)
      c["bottleneck"] = bottleneck_;
    else
      c["reduction_factor"] = reduction_;
    c["activation"] = activation_;
    c["residual"] = residual_;
    c["scaling"] = scaling_;
    c["dropout"] = dropout_;
    c["targets"] = targets_;
    return c;
  }

  std::vector<std::string> attached_modules() const override { return paths_; }

  // What an adapter knows of itself: its nonlinearity rules out merging, and PEFT has no adapters;
  // it acts through linear-layer hooks alone, so it shares mixed batches, wrapping a layer's output last.
  bool supports_mixed_batch() const override { return true; }
  int attach_stage() const override { return 6; }

 private:
  void install(nn::Linear* layer, std::shared_ptr<nn::LinearHook> hook) {
    hooks_.install(layer, std::move(hook), name, enabled_);
  }

  nlohmann::json config_;
  std::string method_, variant_, activation_, projection_name_;
  ProjectionShape projection_;
  bool shared_rule_ = true;
  Tensor shared_down_rule_, shared_up_rule_;
  int64_t bottleneck_ = 0;
  double reduction_ = 16.0, scaling_ = 1.0, dropout_ = 0.0;
  bool residual_ = true, enabled_ = true;
  nlohmann::json targets_;
  TransformerModel* model_ = nullptr;
  std::vector<std::string> paths_;
  std::vector<std::pair<std::string, AdapterWeights>> weights_;
  LinearHooks hooks_;
};
}  // namespace

std::unique_ptr<Delta> make_adapter(const nlohmann::json& config) {
  return std::make_unique<Adapter>(config, "adapter");
}
std::unique_ptr<Delta> make_compacter(const nlohmann::json& config) {
  return std::make_unique<Adapter>(config, "compacter");
}
std::unique_ptr<Delta> make_compacter_pp(const nlohmann::json& config) {
  return std::make_unique<Adapter>(config, "compacter++");
}
std::unique_ptr<Delta> make_lowrank_adapter(const nlohmann::json& config) {
  return std::make_unique<Adapter>(config, "lowrank_adapter");
}

DeltaMethod adapter_method() {
  return {.name = "adapter",
          .make = make_adapter,
          .description = "Houlsby adapter (after attention and feed-forward), reduction factor 16"};
}
DeltaMethod compacter_method() {
  return {.name = "compacter",
          .make = make_compacter,
          .description = "Compacter: PHM adapter, Houlsby placement, reduction factor 32"};
}
DeltaMethod compacter_pp_method() {
  return {.name = "compacter++",
          .make = make_compacter_pp,
          .description = "Compacter++: PHM adapter after the feed-forward, reduction factor 32"};
}
DeltaMethod lowrank_adapter_method() {
  return {
      .name = "lowrank_adapter", .make = make_lowrank_adapter, .description = "low-rank (rank 1) adapter"};
}

}  // namespace deltatune::delta
