#include "serve/model_groups.h"

#include <algorithm>

#include "deltatune/autograd.h"
#include "deltatune/delta_io.h"
#include "deltatune/nn.h"
#include "deltatune/trainer.h"

namespace deltatune::serve {
namespace fs = std::filesystem;

namespace {
std::string folder_name(const fs::path& dir) {
  fs::path p = dir.lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  return p.filename().string();
}

// A delta MixedBatch refuses for what it is (not for a fault in its files): it gets a model of its own.
bool cannot_share(const ConfigError& e) {
  const std::string what = e.what();
  return what.find("cannot share a batch") != std::string::npos ||
         what.find("must share the head") != std::string::npos;
}
}  // namespace

ModelOutput ModelGroup::forward(const ModelInput& input, const std::vector<std::string>& row_deltas) {
  NoGradGuard no_grad;
  if (mixed) return mixed->forward(input, row_deltas);
  return model->forward(input);
}

ModelGroups::ModelGroups(const EngineOptions& options) : options_(options) {
  if (!fs::is_directory(options.model_dir))
    throw IoError("model folder '" + options.model_dir.string() + "' does not exist or is not a folder");
  base_name_ = options.base_name.empty() ? folder_name(options.model_dir) : options.base_name;
  auto base = std::make_unique<ModelGroup>();
  LoadOptions load;
  load.verbose = false;
  load.quantize = options.quantize;
  base->model = load_pretrained(options.model_dir, load);
  base->model->set_training(false);
  use_precision(*base->model, options.bf16, options.quantize);
  base->mixed = std::make_unique<MixedBatch>(*base->model);
  tokenizer_ = Tokenizer::load(options.model_dir);
  auto entry = std::make_shared<DeltaEntry>();
  entry->info = {base_name_, "", "base", head_name(base->model->head), true};
  entry->group = base.get();
  groups_.push_back(std::move(base));
  entries_[base_name_] = entry;
}

ModelGroups::~ModelGroups() {
  // Deltas detach (MixedBatch's destructor) before the models they hook go.
  for (auto& g : groups_) g->mixed.reset();
}

ModelGroup& ModelGroups::solo_group(const fs::path& dir, std::optional<HeadKind> head, bool classifier) {
  LoadRequest request;
  request.model_dir = options_.model_dir;
  request.delta = dir;
  request.head = head;
  request.classifier = classifier;
  request.quantize = options_.quantize;
  LoadedModel loaded = load_with_delta(request);
  use_precision(*loaded.model, options_.bf16, options_.quantize, loaded.trained.model_parameters);
  auto group = std::make_unique<ModelGroup>();
  group->model = std::move(loaded.model);
  group->solo = std::move(loaded.trained);
  groups_.push_back(std::move(group));
  return *groups_.back();
}

ModelGroup& ModelGroups::group_for_classifier(const std::string& name, const fs::path& dir,
                                              const delta::DeltaRequirements& req) {
  auto group = std::make_unique<ModelGroup>();
  LoadOptions load;
  load.head = HeadKind::SequenceClassification;
  load.num_labels = req.num_labels;
  load.verbose = false;               // the delta brings the head's weights
  load.quantize = options_.quantize;  // never the float32 body in full, even for a moment
  group->model = load_pretrained(options_.model_dir, load);
  group->model->set_training(false);
  // The base's tensors (bfloat16 ones too) and quantised weights serve this model: only its head is
  // its own.
  TransformerModel& base = *groups_.front()->model;
  for (auto& [n, t] : base.named_parameters())
    if (Tensor* mine = group->model->find_parameter(n); mine && t->defined() && mine->shape() == t->shape())
      *mine = *t;
  for (auto& [path, module] : base.named_modules()) {
    auto* from = dynamic_cast<nn::Linear*>(module);
    auto* to = dynamic_cast<nn::Linear*>(group->model->find_module(path));
    if (from && from->quantized && to && to->quantized && to->quantized->rows == from->quantized->rows &&
        to->quantized->cols == from->quantized->cols)
      to->quantized = from->quantized;
  }
  group->mixed = std::make_unique<MixedBatch>(*group->model);
  try {
    group->mixed->add_saved(name, dir);
  } catch (const ConfigError& e) {
    if (!cannot_share(e)) throw;
    return solo_group(dir, HeadKind::SequenceClassification, true);
  }
  groups_.push_back(std::move(group));
  return *groups_.back();
}

void ModelGroups::add(const std::string& name, const fs::path& dir) {
  if (name.empty()) throw ConfigError("a delta needs a non-empty name");
  {
    std::lock_guard lock(mutex_);
    if (entries_.count(name)) throw ConfigError("a model named '" + name + "' is already loaded");
  }
  if (!fs::is_directory(dir)) throw IoError(dir.string() + ": delta folder does not exist");
  delta::check_delta_fits(dir, options_.model_dir);
  const delta::DeltaRequirements req = delta::peek_delta(dir);
  ModelGroup& base = *groups_.front();
  auto entry = std::make_shared<DeltaEntry>();
  entry->info = {name, dir.string(), req.method.empty() ? "peft" : req.method,
                 head_name(req.head.value_or(base.model->head)), true};
  if (req.head == HeadKind::SequenceClassification) {
    ModelGroup& group = group_for_classifier(name, dir, req);
    entry->group = &group;
    entry->row_name = group.mixed ? name : "";
    entry->info.shares_batch = false;
    entry->labels = data::LabelMap::load(train::find_labels_file(dir));
    const nlohmann::json run = train::read_train_config(dir);
    const int64_t wanted = run.is_object() ? run.value("max-length", int64_t(128)) : 128;
    entry->max_length = train::effective_max_length(*group.model, wanted);
  } else {
    if (req.head && *req.head != base.model->head)
      throw ConfigError("delta '" + name + "' (" + dir.string() + ") is a " + head_name(*req.head) +
                        " delta, but the base model serves " + head_name(base.model->head));
    try {
      if (delta::saves_model_weights(req.method))
        throw ConfigError("mixed batch: '" + name +
                          "' cannot share a batch: its weights replace the model's");
      base.mixed->add_saved(name, dir);
      entry->group = &base;
      entry->row_name = name;
    } catch (const ConfigError& e) {
      if (!cannot_share(e)) throw;
      entry->group = &solo_group(dir, base.model->head, false);
      entry->info.shares_batch = false;
    }
  }
  std::lock_guard lock(mutex_);
  entries_[name] = entry;
}

std::shared_ptr<DeltaEntry> ModelGroups::acquire(const std::string& name) {
  std::lock_guard lock(mutex_);
  auto it = entries_.find(name);
  if (it == entries_.end() || it->second->retiring) {
    std::vector<std::string> names;
    for (auto& [n, e] : entries_)
      if (!e->retiring) names.push_back(n);
    throw UnknownModel("the model '" + name + "' does not exist (loaded: " + nlohmann::json(names).dump() +
                       ")");
  }
  ++it->second->in_flight;
  return it->second;
}

void ModelGroups::release(DeltaEntry& entry) {
  std::lock_guard lock(mutex_);
  --entry.in_flight;
}

void ModelGroups::retire(const std::string& name) {
  std::lock_guard lock(mutex_);
  auto it = entries_.find(name);
  if (it == entries_.end() || it->second->retiring)
    throw UnknownModel("the model '" + name + "' does not exist");
  if (name == base_name_) throw ConfigError("the base model '" + name + "' cannot be unloaded");
  it->second->retiring = true;
}

void ModelGroups::remove_retired() {
  std::lock_guard lock(mutex_);
  for (auto it = entries_.begin(); it != entries_.end();) {
    DeltaEntry& e = *it->second;
    if (!e.retiring || e.in_flight > 0) {
      ++it;
      continue;
    }
    ModelGroup* group = e.group;
    if (group->mixed && !e.row_name.empty()) group->mixed->remove(e.row_name);
    it = entries_.erase(it);
    const bool used =
        std::any_of(entries_.begin(), entries_.end(), [&](auto& kv) { return kv.second->group == group; });
    if (!used && group != groups_.front().get()) {
      group->mixed.reset();
      groups_.remove_if([&](auto& g) { return g.get() == group; });
    }
  }
}

std::vector<ModelInfo> ModelGroups::list() const {
  std::lock_guard lock(mutex_);
  std::vector<ModelInfo> out;
  out.push_back(entries_.at(base_name_)->info);
  for (auto& [n, e] : entries_)
    if (n != base_name_ && !e->retiring) out.push_back(e->info);
  return out;
}

}  // namespace deltatune::serve
