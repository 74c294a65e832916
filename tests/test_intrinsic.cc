// Intrinsic-subspace tuning (src/delta/intrinsic.cc, delta/fastfood.h, deltatune/subspace.h): the
// Fastfood projection is a fixed linear map drawn from its seed; gradients reach z through it; a saved
// intrinsic delta (z and the seed) reloads to the same outputs; a few coordinates learn the sentiment
// task; a PCA subspace fitted on deltas spans them, and tuning in it trains d numbers.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>

#include "cli_run.h"
#include "delta/fastfood.h"
#include "delta_fixtures.h"
#include "deltatune/autograd.h"
#include "deltatune/delta.h"
#include "deltatune/delta_io.h"
#include "deltatune/error.h"
#include "deltatune/ops.h"
#include "deltatune/subspace.h"
#include "deltatune/threads.h"
#include "deltatune/trainer.h"
#include "golden.h"
#include "small_task.h"
#include "temp_dir.h"

namespace fs = std::filesystem;
using namespace deltatune;
using nlohmann::json;

namespace {

const fs::path kBert = fs::path(DELTATUNE_ASSETS) / "models" / "bert-mini";

json intrinsic_lora(int64_t dim, bool said = false) {
  return {{"method", "intrinsic"},
          {"dim", dim},
          {"said", said},
          {"delta", {{"method", "lora"}, {"r", 2}, {"targets", {"attn.q", "attn.v"}}}}};
}

std::unique_ptr<TransformerModel> classifier(uint64_t seed = 3) {
  LoadOptions load;
  load.head = HeadKind::SequenceClassification;
  load.num_labels = 2;
  load.seed = seed;
  load.verbose = false;
  return load_pretrained(kBert, load);
}

Tensor random_vector(int64_t n, uint64_t seed) {
  Generator gen(seed);
  return Tensor::randn({n}, gen);
}

// The delta's parameter `name`.
Tensor param(delta::Delta& d, const std::string& name) {
  for (auto& [n, t] : d.parameters())
    if (n == name) return t;
  throw Error("no parameter " + name);
}

}  // namespace

TEST(Fastfood, IsAFixedLinearMapDrawnFromItsSeed) {
  const delta::FastfoodProjection p(12, 1000, 42), same(12, 1000, 42), other(12, 1000, 43);
  const Tensor a = random_vector(12, 1), b = random_vector(12, 2);
  EXPECT_EQ(p.apply(a).to_floats(), same.apply(a).to_floats());
  EXPECT_NE(p.apply(a).to_floats(), other.apply(a).to_floats());
  ASSERT_EQ(p.apply(a).shape(), (Shape{1000}));
  // Linear: P(a + 2b) = Pa + 2Pb.
  std::vector<float> lhs = p.apply(ops::add(a, ops::mul_scalar(b, 2))).to_floats();
  std::vector<float> pa = p.apply(a).to_floats(), pb = p.apply(b).to_floats();
  for (size_t i = 0; i < lhs.size(); ++i) EXPECT_NEAR(lhs[i], pa[i] + 2 * pb[i], 1e-5);
  // Its columns have norm sqrt(n / L) (L = 1024 here): a coordinate moves the delta by about one.
  Tensor e = Tensor::zeros({12});
  e.f32()[5] = 1;
  std::vector<float> col = p.apply(e).to_floats();
  double sq = 0;
  for (float v : col) sq += double(v) * v;
  EXPECT_NEAR(std::sqrt(sq), std::sqrt(1000.0 / 1024.0), 0.2);
}

TEST(Intrinsic, GradientsReachZ) {
  set_num_threads(2);
  for (bool said : {false, true}) {
    auto model = golden::load_model("bert-mini");
    auto d = delta::make_delta(intrinsic_lora(6, said));
    d->seed = 5;
    d->attach(*model);
    delta::freeze_for_delta(*model, {d.get()}, {});
    Tensor z = param(*d, "intrinsic.z");
    z.copy_(random_vector(6, 9));  // away from 0, where LoRA's B = 0 hides A's share
    const auto batch = test_support::make_batch(*model);
    Tensor loss = test_support::loss_of(*model, batch);
    loss.backward();
    ASSERT_TRUE(z.grad().defined());
    std::vector<float> analytic = z.grad().to_floats();
    const float eps = 1e-2f;
    for (int64_t j = 0; j < 6; j += 2) {
      NoGradGuard no_grad;
      const float keep = z.f32()[j];
      z.f32()[j] = keep + eps;
      const double up = test_support::loss_of(*model, batch).item();
      z.f32()[j] = keep - eps;
      const double down = test_support::loss_of(*model, batch).item();
      z.f32()[j] = keep;
      const double numeric = (up - down) / (2 * eps);
      EXPECT_NEAR(analytic[size_t(j)], numeric, 2e-3 + 2e-2 * std::abs(numeric))
          << "said " << said << " z" << j;
    }
    // Only z (and SAID's scales) are the delta's parameters, and the inner LoRA got no gradient buffer.
    EXPECT_EQ(d->parameters().size(), said ? 2u : 1u);
    if (said) EXPECT_TRUE(param(*d, "intrinsic.said_scales").grad().defined());
  }
}

TEST(Intrinsic, ASavedDeltaReloadsToTheSameOutputs) {
  set_num_threads(2);
  const fs::path dir = test_support::temp_dir("intrinsic_save");
  auto model = classifier();
  auto d = delta::make_delta(intrinsic_lora(16, true));
  d->seed = 11;
  d->attach(*model);
  param(*d, "intrinsic.z").copy_(random_vector(16, 4));
  Tensor scales = param(*d, "intrinsic.said_scales");
  EXPECT_EQ(scales.numel(), 16);  // one per LoRA tensor: A and B on q and v in 4 layers
  scales.copy_(Tensor::full(scales.shape(), 1.5f));
  const auto batch = test_support::make_batch(*model);
  const Tensor before = test_support::logits_of(*model, batch);
  delta::save_delta(dir, *d, *model);
  // Only z and the scales are saved: the projection comes back from the seed.
  auto saved = read_safetensors(dir / "delta.safetensors").tensors;
  EXPECT_EQ(saved.size(), 2u);
  EXPECT_EQ(saved.at("intrinsic.z").numel(), 16);

  auto fresh = classifier();
  delta::SavedDelta loaded = delta::load_delta(dir, *fresh);
  const Tensor after = test_support::logits_of(*fresh, batch);
  EXPECT_EQ(before.to_floats(), after.to_floats());
  // And the delta changes the output (z moved the LoRA away from B = 0).
  d->set_enabled(false);
  EXPECT_GT(test_support::max_diff(before, test_support::logits_of(*model, batch)), 1e-4);
}

namespace {
// Trains `config` on 96 sentiment reviews, 8 epochs of batch 16, and returns the accuracy on those
// reviews before and after: whether d numbers move a delta to fit the task. Without `with_head` the
// task head stays at its random initialisation, so what is learnt is z's alone.
std::pair<double, double> fit_accuracy(const json& config, double lr, bool with_head, const fs::path& dir) {
  const uint64_t seed = 7;
  static const fs::path task =
      test_support::write_sentiment_subset(test_support::temp_dir("intrinsic_task"), 96, 0, 0);
  static const test_support::EncodedTask data = test_support::encoded_task(task, kBert);
  auto model = classifier(seed);
  auto d = delta::make_delta(config);
  d->seed = seed;
  d->attach(*model);
  train::TrainTarget target = train::TrainTarget::with_deltas(*model, {d.get()}, "intrinsic");
  if (!with_head) target.model_parameters.clear();
  const double before = train::evaluate(*model, data.train)["accuracy"].get<double>();
  train::TrainOptions o = test_support::small_train_options(dir, seed);
  o.epochs = 8;
  o.batch_size = 16;
  o.lr = lr;
  train::Trainer trainer(target, o);
  trainer.train(data.train, nullptr);
  EXPECT_GT(test_support::max_diff(param(*d, "intrinsic.z"), Tensor::zeros({config["dim"].get<int64_t>()})),
            0);
  return {before, train::evaluate(*model, data.train)["accuracy"].get<double>()};
}
}  // namespace

// Measured (accuracy on the 96 reviews, 0.448 before): d = 8 trained as `train` runs it (with the
// head, which could fit these reviews by itself: this checks the method trains end to end) 0.906;
// d = 500 alone, the head frozen (what z learns by itself) 0.656.
TEST(Intrinsic, FewCoordinatesLearnTheSentimentTask) {
  set_num_threads(2);
  auto [before8, after8] =
      fit_accuracy(intrinsic_lora(8), 3e-2, true, test_support::temp_dir("intrinsic_fit_8"));
  std::printf("d = 8 with the head: %.3f -> %.3f\n", before8, after8);
  EXPECT_GT(after8, 0.75) << "d = 8 and the head, from " << before8;
  auto [before, after] =
      fit_accuracy(intrinsic_lora(500), 1e-1, false, test_support::temp_dir("intrinsic_fit_500"));
  std::printf("d = 500 alone: %.3f -> %.3f\n", before, after);
  EXPECT_GT(after, before + 0.15) << "d = 500 alone";
}

// --- a shared subspace (PCA over trained deltas) ---

namespace {
json small_lora() { return {{"method", "lora"}, {"r", 2}, {"targets", {"attn.q", "attn.v"}}}; }

// Three LoRA deltas saved as training would save them (with a task head), their tensors set to
// common + task-specific values so that they differ in a known way.
std::vector<fs::path> saved_loras(const fs::path& root) {
  std::vector<fs::path> dirs;
  for (uint64_t task = 0; task < 3; ++task) {
    auto model = classifier();
    auto d = delta::make_delta(small_lora());
    d->seed = 1;
    d->attach(*model);
    Generator gen(100 + task);
    for (auto& [name, t] : d->parameters()) t.copy_(Tensor::randn(t.shape(), gen, 0.1f));
    std::map<std::string, Tensor> head;
    for (const auto& n : model->head_parameters()) head[n] = *model->find_parameter(n);
    dirs.push_back(root / ("task" + std::to_string(task)));
    delta::save_delta(dirs.back(), *d, *model, head);
  }
  return dirs;
}

std::vector<float> flat_lora(const fs::path& dir) {
  std::vector<float> out;
  for (auto& [name, t] : read_safetensors(dir / "delta.safetensors").tensors)
    if (name.find("lora_") != std::string::npos) {
      std::vector<float> v = t.to_floats();
      out.insert(out.end(), v.begin(), v.end());
    }
  return out;
}
}  // namespace

TEST(Subspace, PcaSpansTheDeltasItWasFittedOn) {
  const fs::path root = test_support::temp_dir("subspace_fit");
  const std::vector<fs::path> dirs = saved_loras(root);
  const delta::Subspace s = delta::fit_subspace(dirs, 2);
  ASSERT_EQ(s.dim(), 2);
  ASSERT_EQ(s.layout.size(), 16u);  // the head is left out
  const int64_t n = s.mean.numel();
  std::vector<float> basis = s.basis.to_floats(), mean = s.mean.to_floats();
  // Orthonormal rows.
  for (int64_t a = 0; a < 2; ++a)
    for (int64_t b = 0; b < 2; ++b) {
      double dot = 0;
      for (int64_t j = 0; j < n; ++j) dot += double(basis[size_t(a * n + j)]) * basis[size_t(b * n + j)];
      EXPECT_NEAR(dot, a == b ? 1.0 : 0.0, 1e-4);
    }
  // Three deltas less their mean span two dimensions: each is mean + basis^T z exactly.
  for (const fs::path& dir : dirs) {
    std::vector<float> x = flat_lora(dir);
    ASSERT_EQ(int64_t(x.size()), n);
    double z[2] = {0, 0};
    for (int64_t a = 0; a < 2; ++a)
      for (int64_t j = 0; j < n; ++j)
        z[a] += (double(x[size_t(j)]) - mean[size_t(j)]) * basis[size_t(a * n + j)];
    double worst = 0;
    for (int64_t j = 0; j < n; ++j) {
      const double back = mean[size_t(j)] + z[0] * basis[size_t(j)] + z[1] * basis[size_t(n + j)];
      worst = std::max(worst, std::abs(back - x[size_t(j)]));
    }
    EXPECT_LT(worst, 1e-4) << dir;
  }
  EXPECT_THROW(delta::fit_subspace(dirs, 3), ConfigError);  // at most the number of deltas less one
  // Saved and loaded back as it was.
  delta::save_subspace(root / "space", s);
  const delta::Subspace back = delta::load_subspace(root / "space");
  EXPECT_EQ(back.basis.to_floats(), basis);
  EXPECT_EQ(back.mean.to_floats(), mean);
  EXPECT_EQ(back.delta_config["method"], "lora");
}

TEST(Subspace, TuningInItTrainsItsCoordinatesAndReloads) {
  set_num_threads(2);
  const fs::path root = test_support::temp_dir("subspace_tune");
  const std::vector<fs::path> dirs = saved_loras(root);
  // The command fits and saves it.
  std::string deltas;
  for (const auto& d : dirs) deltas += " " + cli_test::quote(d.string());
  auto r = cli_test::run("subspace fit --deltas" + deltas + " --dim 2 --out " +
                         cli_test::quote((root / "space").string()));
  ASSERT_EQ(r.code, 0) << r.output;
  ASSERT_TRUE(fs::exists(root / "space" / "subspace.safetensors"));

  auto model = classifier();
  auto d = delta::make_delta({{"method", "intrinsic"}, {"subspace", (root / "space").string()}});
  d->attach(*model);
  ASSERT_EQ(d->parameters().size(), 1u);
  Tensor z = param(*d, "intrinsic.z");
  EXPECT_EQ(z.numel(), 2);
  // z = 0 is the deltas' mean; gradients reach z.
  delta::freeze_for_delta(*model, {d.get()}, {});
  const auto batch = test_support::make_batch(*model);
  z.copy_(Tensor::from_floats({0.5f, -0.3f}, {2}));
  Tensor logits = model->forward(batch.input).logits;
  ops::sum_all(ops::square(logits)).backward();
  ASSERT_TRUE(z.grad().defined());
  EXPECT_GT(std::abs(z.grad().to_floats()[0]) + std::abs(z.grad().to_floats()[1]), 0);
  // Saved: two numbers and the subspace's path; reloaded: the same outputs.
  const Tensor before = test_support::logits_of(*model, batch);
  delta::save_delta(root / "tuned", *d, *model);
  auto fresh = classifier();
  delta::load_delta(root / "tuned", *fresh);
  EXPECT_EQ(test_support::logits_of(*fresh, batch).to_floats(), before.to_floats());
  // More coordinates than the subspace has are refused.
  EXPECT_THROW(
      delta::make_delta({{"method", "intrinsic"}, {"subspace", (root / "space").string()}, {"dim", 3}}),
      ConfigError);
}
