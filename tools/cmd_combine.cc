// deltatune combine --model M --delta A --delta B --weights 0.7,0.3 --type svd --out DIR: several
// LoRA deltas made into one LoRA delta with PEFT's add_weighted_adapter semantics
// (include/deltatune/lora_arithmetic.h). The result is an ordinary LoRA delta: train, eval,
// predict, merge and serve take it like any other.
#include <cstdio>
#include <filesystem>
#include <optional>

#include "command.h"
#include "deltatune/data.h"
#include "deltatune/delta_io.h"
#include "deltatune/error.h"
#include "deltatune/lora_arithmetic.h"
#include "deltatune/run_folder.h"
#include "deltatune/trainer.h"
#include "model_loading.h"

namespace {
using deltatune::cli::ExitError;
namespace delta = deltatune::delta;

struct Options {
  std::string model_dir, out, type = "svd", majority_sign = "total", format = "deltatune";
  std::vector<std::string> deltas;
  std::vector<double> weights;
  int64_t svd_rank = 0;
  double svd_clamp = -1, density = 1.0;
  uint64_t seed = 0;
  bool dare_rescale = false, overwrite = false;
};

// Every source must be a delta (checked before loading anything: a full or head run's saved weights
// would replace the model's); lora_weights then says which are not LoRA.
void check_sources_are_deltas(const std::vector<std::string>& deltas) {
  for (const auto& d : deltas) {
    const std::string method = delta::peek_delta(d).method;
    if (delta::saves_model_weights(method))
      throw ExitError{"combine: " + d + " is a '" + method + "' run (model weights, not a LoRA delta)"};
  }
}

// The sources' class names (labels.json in a delta folder or its run folder), which the combination
// carries so that eval and predict can name its classes: one map, or none when no source has one.
std::optional<deltatune::data::LabelMap> source_labels(const std::vector<std::string>& deltas) {
  std::optional<deltatune::data::LabelMap> labels;
  std::string first;
  for (const auto& d : deltas) {
    std::filesystem::path file;
    try {
      file = deltatune::train::find_labels_file(d);
    } catch (const deltatune::IoError&) {
      continue;  // no labels beside this delta (a PEFT adapter, a language-model delta)
    }
    deltatune::data::LabelMap map = deltatune::data::LabelMap::load(file);
    if (!labels) {
      labels = map;
      first = file.string();
    } else if (map.names() != labels->names() || map.integer_labels() != labels->integer_labels()) {
      throw ExitError{"combine: the sources' label maps disagree (" + first + " and " + file.string() +
                      "): deltas of different classes cannot be combined"};
    }
  }
  return labels;
}

bool same_values(const deltatune::Tensor& a, const deltatune::Tensor& b) {
  if (a.shape() != b.shape()) return false;
  deltatune::Tensor x = a.float32().contiguous(), y = b.float32().contiguous();
  for (int64_t i = 0; i < x.numel(); ++i)
    if (x.f32()[i] != y.f32()[i]) return false;
  return true;
}

void run(const Options& o) {
  if (o.deltas.size() < 1) throw ExitError{"combine: give at least one --delta"};
  std::vector<double> weights = o.weights;
  if (weights.empty()) weights.assign(o.deltas.size(), 1.0);  // PEFT needs weights; 1 each is the plain sum
  if (weights.size() != o.deltas.size())
    throw ExitError{"combine: " + std::to_string(o.deltas.size()) + " deltas but " +
                    std::to_string(weights.size()) +
                    " weights (--weights takes one per --delta, in the same order)"};
  deltatune::check_writable_folder(o.out, "--out");
  if (deltatune::holds_files(o.out) && !o.overwrite)
    throw ExitError{"combine: '" + o.out +
                    "' exists and is not empty (pass --overwrite to replace its delta files)"};

  check_sources_are_deltas(o.deltas);
  const std::optional<deltatune::data::LabelMap> labels = source_labels(o.deltas);

  // The first delta decides the task head the model loads with; every delta is read over the same base.
  auto loaded = deltatune::cli::load_model(o.model_dir, "", o.deltas[0]);
  std::vector<delta::LoraWeights> loras;
  loras.push_back(delta::lora_weights(*loaded.deltas[0]));
  loaded.deltas[0]->detach();
  // A delta saved with a task head (a classifier) keeps the first delta's head in the combination.
  std::map<std::string, deltatune::Tensor*> params;
  for (auto& [name, t] : loaded.model->named_parameters()) params[name] = t;
  std::map<std::string, deltatune::Tensor> head;
  if (delta::peek_delta(o.deltas[0]).head)
    for (const auto& name : loaded.model->head_parameters())
      if (params.count(name)) head[name] = params[name]->clone();
  for (size_t i = 1; i < o.deltas.size(); ++i) {
    delta::SavedDelta saved = delta::load_delta(o.deltas[i], *loaded.model);
    loras.push_back(delta::lora_weights(*saved.delta));
    saved.delta->detach();
    for (auto& [name, t] : saved.head) {
      auto it = head.find(name);
      if (it != head.end() && !same_values(it->second, t))
        std::fprintf(stderr,
                     "deltatune: warning: %s has its own %s; the combination keeps the first delta's\n",
                     o.deltas[i].c_str(), name.c_str());
    }
  }
  for (auto& [name, t] : head) params[name]->copy_(t);  // a later load replaced the head weights
  for (size_t i = 0; i < loras.size(); ++i)
    if (loras[i].config.value("bias", std::string("none")) != "none")
      std::fprintf(stderr,
                   "deltatune: warning: %s trained biases (bias = %s); LoRA arithmetic combines the "
                   "A and B factors only, as PEFT does, so those biases are not in the combination\n",
                   o.deltas[i].c_str(), loras[i].config.value("bias", std::string()).c_str());

  delta::CombineOptions c;
  c.type = o.type;
  if (o.svd_rank > 0) c.svd_rank = o.svd_rank;
  if (o.svd_clamp >= 0) c.svd_clamp = o.svd_clamp;
  c.density = o.density;
  c.majority_sign_method = o.majority_sign;
  c.seed = o.seed;
  c.dare_rescale = o.dare_rescale;
  delta::CombinedLora combined = delta::combine_loras(loras, weights, c);

  auto d = delta::make_delta(combined.config);
  d->attach(*loaded.model);
  d->load_parameters(combined.parameters());
  std::filesystem::create_directories(o.out);
  if (o.format == "peft")
    delta::save_peft(o.out, *d, *loaded.model, head);
  else
    delta::save_delta(o.out, *d, *loaded.model, head);
  if (labels) labels->save(std::filesystem::path(o.out) / "labels.json");
  std::printf("combined %zu LoRA deltas (%s) into one of rank %lld over %zu modules: wrote %s (%s format)\n",
              o.deltas.size(), o.type.c_str(), static_cast<long long>(combined.r), combined.modules.size(),
              o.out.c_str(), o.format.c_str());
}

void setup(CLI::App& app) {
  auto o = std::make_shared<Options>();
  app.add_option("--model", o->model_dir, "The base model folder the deltas were trained on")->required();
  app.add_option("--delta", o->deltas,
                 "A LoRA delta folder (ours or PEFT's); repeat, in the order of --weights")
      ->required();
  app.add_option("--weights", o->weights, "One weight per delta, comma-separated (default: 1 each)")
      ->delimiter(',');
  app.add_option(
         "--type", o->type,
         "How to combine, PEFT's combination_type: svd, linear, cat, ties, ties_svd, dare_linear, dare_ties, "
         "dare_linear_svd, dare_ties_svd, magnitude_prune, magnitude_prune_svd")
      ->capture_default_str();
  app.add_option("--svd-rank", o->svd_rank,
                 "svd types: the rank of the result (default: the largest input rank)");
  app.add_option("--svd-clamp", o->svd_clamp,
                 "svd types: clamp the factors to this quantile of their values (0-1)");
  app.add_option("--density", o->density, "ties, dare and magnitude_prune types: the fraction of values kept")
      ->capture_default_str();
  app.add_option("--majority-sign", o->majority_sign, "ties types: total or frequency")
      ->capture_default_str();
  app.add_option("--seed", o->seed, "dare types: the seed of the random pruning masks")
      ->capture_default_str();
  app.add_flag("--dare-rescale", o->dare_rescale,
               "dare types: divide kept values by the density (the DARE paper; PEFT does not)");
  app.add_option("--format", o->format, "Write our format (deltatune) or PEFT's adapter format (peft)")
      ->check(CLI::IsMember({"deltatune", "peft"}))
      ->capture_default_str();
  app.add_option("--out,--output", o->out, "Folder to write the combined delta to")->required();
  deltatune::cli::add_threads_option(app);
  app.add_flag("--overwrite", o->overwrite, "Replace the delta files in a non-empty --out");
  app.footer(
      "The result is a normal LoRA delta (alpha = r), as PEFT's add_weighted_adapter makes it. linear and "
      "the "
      "ties/dare/magnitude types need equal ranks; cat adds the ranks and is exact (its weight change is the "
      "weighted sum); svd types approximate the weighted sum of the weight changes at --svd-rank. The "
      "sources' "
      "labels.json (beside a delta or in its run folder) is copied with it; their label maps must agree.");
  app.callback([o] {
    try {
      run(*o);
    } catch (const deltatune::ConfigError& e) {
      throw ExitError{e.what()};
    }
  });
}
deltatune::cli::Register reg(
    "combine", "Combine LoRA deltas into one (PEFT's add_weighted_adapter: svd, cat, ties, dare, ...)",
    setup);
}  // namespace
