// Optimizers, gradient clipping and lr schedules against torch 1.13 runs recorded by
// scripts/make_optimizer_fixtures.py (tests/data/optimizer/*.json).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "deltatune/autograd.h"
#include "deltatune/error.h"
#include "deltatune/ops.h"
#include "deltatune/optim.h"
#include "deltatune/safetensors.h"

using namespace deltatune;
using nlohmann::json;

namespace {

json load_fixture(const std::string& name) {
  const std::string path = std::string(DELTATUNE_TEST_DATA) + "/optimizer/" + name + ".json";
  std::ifstream in(path);
  if (!in) throw std::runtime_error("missing fixture " + path);
  return json::parse(in);
}

Shape shape_of(const json& j) { return j.get<Shape>(); }
std::vector<float> floats(const json& j) { return j.get<std::vector<float>>(); }

// Parameters and an optimizer built as the fixture's torch run was.
struct FixtureRun {
  std::map<std::string, Tensor> params;
  std::unique_ptr<Optimizer> opt;
  std::optional<LrSchedule> schedule;
};

FixtureRun make_run(const json& c) {
  FixtureRun run;
  for (const json& p : c["params"]) {
    Tensor t = Tensor::from_floats(floats(p["init"]), shape_of(p["shape"]));
    t.set_requires_grad();
    run.params.emplace(p["name"].get<std::string>(), t);
  }
  std::vector<ParamGroup> groups;
  for (const json& g : c["groups"]) {
    ParamGroup group;
    for (const json& n : g["params"]) group.params.emplace_back(n.get<std::string>(), run.params.at(n));
    if (g.contains("lr")) group.lr = g["lr"].get<double>();
    if (g.contains("weight_decay")) group.weight_decay = g["weight_decay"].get<double>();
    groups.push_back(std::move(group));
  }
  const json& o = c["options"];
  if (c["optimizer"] == "sgd") {
    SGDOptions opts;
    opts.lr = o.value("lr", opts.lr);
    opts.momentum = o.value("momentum", 0.0);
    opts.dampening = o.value("dampening", 0.0);
    opts.weight_decay = o.value("weight_decay", 0.0);
    opts.nesterov = o.value("nesterov", false);
    run.opt = std::make_unique<SGD>(std::move(groups), opts);
  } else {
    AdamWOptions opts;
    opts.lr = o.value("lr", opts.lr);
    opts.beta1 = o.value("beta1", opts.beta1);
    opts.beta2 = o.value("beta2", opts.beta2);
    opts.eps = o.value("eps", opts.eps);
    opts.weight_decay = o.value("weight_decay", opts.weight_decay);
    opts.amsgrad = o.value("amsgrad", false);
    run.opt = std::make_unique<AdamW>(std::move(groups), opts);
  }
  if (c.contains("schedule")) {
    const json& s = c["schedule"];
    run.schedule =
        LrSchedule::from_name(s["name"].get<std::string>(), s["num_warmup_steps"], s["num_training_steps"]);
  }
  return run;
}

// Sets the fixture's gradients for step `i` (null: no gradient) and takes the step.
void take_step(FixtureRun& run, const json& step) {
  for (auto& [name, p] : run.params) {
    const json& g = step["grads"][name];
    if (g.is_null())
      p.zero_grad();
    else
      p.set_grad(Tensor::from_floats(floats(g), p.shape()));
  }
  if (run.schedule) run.opt->set_lr_multiplier(run.schedule->multiplier(run.opt->step_count()));
  run.opt->step();
}

// Bit-exact comparison, reporting the largest difference when not.
void expect_same(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t differing = 0;
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0) ++differing;
    worst = std::max(worst, std::abs(double(got[i]) - double(want[i])));
  }
  EXPECT_LE(worst, 1e-6) << what;
  EXPECT_EQ(differing, 0u) << what << ": " << differing << " of " << got.size()
                           << " elements differ from torch (largest difference " << worst << ")";
}

class TorchFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(TorchFixture, ParamsAndStateMatchTorch) {
  const json c = load_fixture(GetParam());
  FixtureRun run = make_run(c);
  const json& steps = c["steps"];
  for (size_t i = 0; i < steps.size(); ++i) {
    take_step(run, steps[i]);
    const json& lrs = steps[i]["lrs"];
    for (size_t g = 0; g < lrs.size(); ++g)
      EXPECT_DOUBLE_EQ(run.opt->group_lr(g), lrs[g].get<double>()) << "step " << i << " group " << g;
    for (auto& [name, p] : run.params)
      expect_same(p.to_floats(), floats(steps[i]["params"][name]), "step " + std::to_string(i) + " " + name);
  }
  EXPECT_EQ(run.opt->step_count(), int64_t(steps.size()));

  // State under the checkpoint names, same values and per-parameter step counts as torch's.
  const auto state = run.opt->state_tensors();
  for (const auto& [key, value] : c["final_state"].items()) {
    ASSERT_TRUE(state.count(key)) << key;
    if (value.is_number())
      EXPECT_EQ(state.at(key).to_ints()[0], value.get<int64_t>()) << key;
    else
      expect_same(state.at(key).to_floats(), floats(value), key);
  }
  // Beyond torch's: the optimizer's "step", and for SGD (which counts none) each parameter's step.
  for (const auto& [key, t] : state)
    if (!c["final_state"].contains(key))
      EXPECT_TRUE(key == "step" || (c["optimizer"] == "sgd" && key.starts_with("step."))) << key;
  EXPECT_EQ(state.at("step").to_ints()[0], int64_t(steps.size()));
}

INSTANTIATE_TEST_SUITE_P(Optimizer, TorchFixture,
                         ::testing::Values("sgd_plain", "sgd_momentum", "sgd_nesterov", "adamw",
                                           "adamw_amsgrad", "adamw_linear_schedule"));

// Resuming from saved state (through fresh copies of the tensors) continues exactly as an
// uninterrupted run does.
class Resume : public ::testing::TestWithParam<std::string> {};

TEST_P(Resume, SaveLoadContinuesIdentically) {
  const json c = load_fixture(GetParam());
  const json& steps = c["steps"];
  const size_t split = 3;

  FixtureRun first = make_run(c);
  for (size_t i = 0; i < split; ++i) take_step(first, steps[i]);
  std::map<std::string, Tensor> saved;
  for (const auto& [key, t] : first.opt->state_tensors()) saved.emplace(key, t.clone());

  FixtureRun resumed = make_run(c);
  for (auto& [name, p] : resumed.params) p.copy_(first.params.at(name));
  resumed.opt->load_state_tensors(saved);
  EXPECT_EQ(resumed.opt->step_count(), int64_t(split));
  for (size_t i = split; i < steps.size(); ++i) take_step(resumed, steps[i]);

  for (auto& [name, p] : resumed.params)
    expect_same(p.to_floats(), floats(steps.back()["params"][name]), "resumed " + name);
}

// The state goes through a safetensors file as a trainer checkpoint would keep it.
TEST(Optimizer, StateRoundTripsThroughSafetensors) {
  const json c = load_fixture("adamw_amsgrad");
  const json& steps = c["steps"];
  FixtureRun first = make_run(c);
  for (size_t i = 0; i < 4; ++i) take_step(first, steps[i]);
  const std::filesystem::path file = std::filesystem::temp_directory_path() /
                                     ("deltatune_optim_" + std::to_string(::getpid()) + ".safetensors");
  write_safetensors(file, first.opt->state_tensors());

  FixtureRun resumed = make_run(c);
  for (auto& [name, p] : resumed.params) p.copy_(first.params.at(name));
  resumed.opt->load_state_tensors(read_safetensors(file).tensors);
  std::filesystem::remove(file);
  for (size_t i = 4; i < steps.size(); ++i) take_step(resumed, steps[i]);
  for (auto& [name, p] : resumed.params)
    expect_same(p.to_floats(), floats(steps.back()["params"][name]), "resumed " + name);
}

INSTANTIATE_TEST_SUITE_P(Optimizer, Resume,
                         ::testing::Values("sgd_momentum", "sgd_nesterov", "adamw", "adamw_amsgrad",
                                           "adamw_linear_schedule"));

Tensor param(const std::vector<float>& values) {
  Tensor t = Tensor::from_floats(values, {int64_t(values.size())});
  t.set_requires_grad();
  return t;
}

TEST(Optimizer, SkipsParamsWithoutGradAndZeroGradFrees) {
  Tensor a = param({1, 2, 3}), b = param({4, 5});
  AdamW opt(NamedParams{{"a", a}, {"b", b}}, {.lr = 0.1});
  a.set_grad(Tensor::from_floats({1, 1, 1}, {3}));
  opt.step();
  EXPECT_NE(a.to_floats(), (std::vector<float>{1, 2, 3}));
  EXPECT_EQ(b.to_floats(), (std::vector<float>{4, 5}));  // no grad: not even weight decay
  const auto state = opt.state_tensors();
  EXPECT_TRUE(state.count("exp_avg.a"));
  EXPECT_FALSE(state.count("exp_avg.b"));
  EXPECT_FALSE(state.count("step.b"));

  opt.zero_grad();
  EXPECT_FALSE(a.grad().defined());
  EXPECT_FALSE(b.grad().defined());
  const std::vector<float> before = a.to_floats();
  opt.step();  // nothing has a gradient: nothing moves
  EXPECT_EQ(a.to_floats(), before);
  EXPECT_EQ(opt.step_count(), 2);
  EXPECT_EQ(opt.state_tensors().at("step.a").to_ints()[0], 1);
}

TEST(Optimizer, GradientsFromBackward) {
  // A real backward: loss = sum(w * x) gives grad x; plain SGD moves w by -lr * x.
  Tensor w = param({1, 2, 3});
  Tensor x = Tensor::from_floats({0.5f, -1, 2}, {3});
  SGD opt(NamedParams{{"w", w}}, {.lr = 0.1});
  ops::sum_all(ops::mul(w, x)).backward();
  opt.step();
  const auto got = w.to_floats();
  EXPECT_FLOAT_EQ(got[0], 1 - 0.1f * 0.5f);
  EXPECT_FLOAT_EQ(got[1], 2 + 0.1f);
  EXPECT_FLOAT_EQ(got[2], 3 - 0.2f);
}

TEST(Optimizer, LearningRates) {
  Tensor a = param({1}), b = param({2});
  std::vector<ParamGroup> groups;
  groups.push_back({{{"a", a}}, {}, {}});
  groups.push_back({{{"b", b}}, 0.5, 0.0});
  AdamW opt(std::move(groups), {.lr = 0.1, .weight_decay = 0.01});
  EXPECT_EQ(opt.num_groups(), 2u);
  EXPECT_DOUBLE_EQ(opt.lr(), 0.1);
  EXPECT_DOUBLE_EQ(opt.group_lr(1), 0.5);
  EXPECT_DOUBLE_EQ(opt.group_weight_decay(0), 0.01);
  EXPECT_DOUBLE_EQ(opt.group_weight_decay(1), 0.0);
  opt.set_lr_multiplier(0.5);  // relative to each group's initial lr, like LambdaLR
  EXPECT_DOUBLE_EQ(opt.group_lr(0), 0.05);
  EXPECT_DOUBLE_EQ(opt.group_lr(1), 0.25);
  opt.set_lr(0.2);
  EXPECT_DOUBLE_EQ(opt.group_lr(1), 0.2);
  opt.set_lr_multiplier(1.0);
  EXPECT_DOUBLE_EQ(opt.group_lr(1), 0.5);
  EXPECT_THROW(opt.set_lr(-1), ConfigError);
  EXPECT_EQ(opt.parameters().size(), 2u);
  EXPECT_EQ(opt.named_parameters()[1].first, "b");
}

TEST(Optimizer, RejectsBadConstruction) {
  Tensor a = param({1}), b = param({2});
  EXPECT_THROW(SGD(NamedParams{}, {}), ConfigError);
  EXPECT_THROW(SGD(NamedParams{{"a", a}, {"a", b}}, {}), ConfigError);
  EXPECT_THROW(SGD(NamedParams{{"a", a}, {"b", a}}, {}), ConfigError);
  EXPECT_THROW(SGD(NamedParams{{"", a}}, {}), ConfigError);
  EXPECT_THROW(SGD(NamedParams{{"a", Tensor()}}, {}), ConfigError);
  EXPECT_THROW(SGD(NamedParams{{"a", ops::mul_scalar(a, 2)}}, {}), ConfigError);  // not a leaf
  EXPECT_THROW(SGD(NamedParams{{"a", Tensor::zeros({2}, DType::F16)}}, {}), DtypeError);
  EXPECT_THROW(SGD(NamedParams{{"a", a}}, {.lr = -1}), ConfigError);
  EXPECT_THROW(SGD(NamedParams{{"a", a}}, {.nesterov = true}), ConfigError);
  EXPECT_THROW(SGD(NamedParams{{"a", a}}, {.momentum = 0.9, .dampening = 0.1, .nesterov = true}),
               ConfigError);
  EXPECT_THROW(AdamW(NamedParams{{"a", a}}, {.beta1 = 1.0}), ConfigError);
  EXPECT_THROW(AdamW(NamedParams{{"a", a}}, {.eps = -1}), ConfigError);
  EXPECT_THROW(AdamW(NamedParams{{"a", a}}, {.weight_decay = -0.1}), ConfigError);
  try {
    AdamW(NamedParams{{"a", a}}, {.lr = -2});
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("learning rate"), std::string::npos) << e.what();
  }
}

TEST(Optimizer, GradientShapeMismatchThrows) {
  Tensor a = param({1, 2});
  SGD opt(NamedParams{{"a", a}}, {.lr = 0.1});
  a.set_grad(Tensor::zeros({3}));
  EXPECT_THROW(opt.step(), ShapeError);
}

TEST(Optimizer, LoadStateValidatesBeforeReplacing) {
  Tensor a = param({1, 2});
  AdamW opt(NamedParams{{"a", a}}, {.lr = 0.1});
  a.set_grad(Tensor::from_floats({1, -1}, {2}));
  opt.step();
  auto good = opt.state_tensors();
  auto with = [&](const std::string& key, const Tensor& t) {
    auto s = good;
    s[key] = t;
    return s;
  };
  auto without = [&](const std::string& key) {
    auto s = good;
    s.erase(key);
    return s;
  };
  EXPECT_THROW(opt.load_state_tensors(with("exp_avg.nope", Tensor::zeros({2}))), ConfigError);
  EXPECT_THROW(opt.load_state_tensors(with("momentum.a", Tensor::zeros({2}))), ConfigError);
  EXPECT_THROW(opt.load_state_tensors(with("garbage", Tensor::zeros({2}))), ConfigError);
  EXPECT_THROW(opt.load_state_tensors(with("exp_avg.a", Tensor::zeros({3}))), ShapeError);
  EXPECT_THROW(opt.load_state_tensors(without("exp_avg_sq.a")), ConfigError);
  EXPECT_THROW(opt.load_state_tensors(without("step.a")), ConfigError);
  EXPECT_THROW(opt.load_state_tensors(without("step")), ConfigError);
  try {
    opt.load_state_tensors(with("exp_avg.nope", Tensor::zeros({2})));
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("exp_avg.nope"), std::string::npos) << e.what();
  }
  // The failures changed nothing.
  const auto after = opt.state_tensors();
  ASSERT_EQ(after.size(), good.size());
  for (const auto& [key, t] : good) EXPECT_EQ(after.at(key).to_floats(), t.to_floats()) << key;

  // State is copied in both directions: changing a saved tensor does not reach the optimizer.
  const std::vector<float> exp_avg = good.at("exp_avg.a").to_floats();
  opt.load_state_tensors(good);
  good.at("exp_avg.a").fill_(42);
  EXPECT_EQ(opt.state_tensors().at("exp_avg.a").to_floats(), exp_avg);
  opt.state_tensors().at("exp_avg.a").fill_(7);
  EXPECT_EQ(opt.state_tensors().at("exp_avg.a").to_floats(), exp_avg);

  // Empty state (a fresh start) loads.
  opt.load_state_tensors({{"step", Tensor::from_ints({0}, {})}});
  EXPECT_EQ(opt.state_tensors().size(), 1u);
}

// --- gradient clipping ---

class ClipFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(ClipFixture, MatchesTorch) {
  const json c = load_fixture(GetParam());
  std::vector<Tensor> params;
  std::vector<std::string> names;
  for (const auto& [name, shape] : c["shapes"].items()) {
    Tensor p = Tensor::zeros(shape_of(shape));
    p.set_requires_grad();
    if (!c["grads"][name].is_null()) p.set_grad(Tensor::from_floats(floats(c["grads"][name]), p.shape()));
    params.push_back(p);
    names.push_back(name);
  }
  const float total = clip_grad_norm(params, c["max_norm"].get<double>());
  const double want = c["total_norm"].get<double>();
  EXPECT_NEAR(total, want, 1e-6 * want);
  for (size_t i = 0; i < params.size(); ++i) {
    const json& clipped = c["clipped"][names[i]];
    if (clipped.is_null()) {
      EXPECT_FALSE(params[i].grad().defined());
      continue;
    }
    const auto got = params[i].grad().to_floats();
    const auto ref = floats(clipped);
    ASSERT_EQ(got.size(), ref.size());
    for (size_t k = 0; k < got.size(); ++k) EXPECT_NEAR(got[k], ref[k], 1e-6) << names[i] << "[" << k << "]";
  }
}

INSTANTIATE_TEST_SUITE_P(Optimizer, ClipFixture, ::testing::Values("clip_clipped", "clip_unclipped"));

TEST(ClipGradNorm, EdgeCases) {
  Tensor a = param({3, 4});
  EXPECT_EQ(clip_grad_norm({a}, 1.0), 0.0f);  // no gradients
  a.set_grad(Tensor::from_floats({3, 4}, {2}));
  EXPECT_FLOAT_EQ(clip_grad_norm({a}, 1.0), 5.0f);
  const auto g = a.grad().to_floats();
  EXPECT_NEAR(g[0], 0.6f, 1e-6);
  EXPECT_NEAR(g[1], 0.8f, 1e-6);
  // A non-finite norm is reported, so the caller can skip the step.
  a.set_grad(Tensor::from_floats({NAN, 1}, {2}));
  EXPECT_TRUE(std::isnan(clip_grad_norm({a}, 1.0)));
}

// --- schedules ---

TEST(LrSchedule, MatchesTransformersThroughLambdaLR) {
  const json c = load_fixture("schedules");
  for (const json& s : c["cases"]) {
    const LrSchedule schedule =
        LrSchedule::from_name(s["name"].get<std::string>(), s["num_warmup_steps"], s["num_training_steps"]);
    EXPECT_EQ(schedule.name(), s["name"].get<std::string>());
    const auto want = s["multipliers"].get<std::vector<double>>();
    for (size_t step = 0; step < want.size(); ++step)
      EXPECT_DOUBLE_EQ(schedule.multiplier(int64_t(step)), want[step])
          << s["name"] << " warmup " << s["num_warmup_steps"] << " total " << s["num_training_steps"]
          << " step " << step;
  }
}

TEST(LrSchedule, FormulasAndErrors) {
  const LrSchedule linear(LrSchedule::Kind::Linear, 10, 110);
  EXPECT_DOUBLE_EQ(linear.multiplier(0), 0.0);
  EXPECT_DOUBLE_EQ(linear.multiplier(5), 0.5);
  EXPECT_DOUBLE_EQ(linear.multiplier(10), 1.0);
  EXPECT_DOUBLE_EQ(linear.multiplier(60), 0.5);
  EXPECT_DOUBLE_EQ(linear.multiplier(110), 0.0);
  EXPECT_DOUBLE_EQ(linear.multiplier(500), 0.0);
  const LrSchedule cosine(LrSchedule::Kind::Cosine, 0, 100);
  EXPECT_DOUBLE_EQ(cosine.multiplier(50), 0.5);
  EXPECT_NEAR(cosine.multiplier(100), 0.0, 1e-15);
  EXPECT_DOUBLE_EQ(LrSchedule::from_name("constant", 5, 10).multiplier(0),
                   1.0);  // no warmup, as transformers

  try {
    LrSchedule::from_name("polynomial", 0, 10);
    FAIL();
  } catch (const ConfigError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("polynomial"), std::string::npos) << msg;
    for (const std::string& name : LrSchedule::names()) EXPECT_NE(msg.find(name), std::string::npos) << msg;
  }
  EXPECT_THROW(LrSchedule(LrSchedule::Kind::Linear, -1, 10), ConfigError);
  EXPECT_THROW(LrSchedule(LrSchedule::Kind::Linear, 0, -10), ConfigError);
  EXPECT_THROW(linear.multiplier(-1), Error);
}

}  // namespace
