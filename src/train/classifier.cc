// Loading a trained classifier (base model + delta + labels) for evaluation and prediction.
#include "deltatune/delta_io.h"
#include "deltatune/trainer.h"
#include "train/files.h"

namespace fs = std::filesystem;

namespace deltatune::train {

nlohmann::json read_train_config(const fs::path& path) {
  fs::path delta_dir = path.lexically_normal();
  if (!delta_dir.has_filename()) delta_dir = delta_dir.parent_path();
  for (const fs::path& dir : {delta_dir, delta_dir.parent_path()}) {
    if (!fs::is_regular_file(dir / "train_config.json")) continue;
    try {
      return nlohmann::json::parse(train_detail::read_file(dir / "train_config.json"));
    } catch (const nlohmann::json::parse_error&) {
      return nullptr;  // only a source of defaults: ignore a damaged one
    }
  }
  return nullptr;
}

Classifier load_classifier(const fs::path& model_dir, const fs::path& delta_path,
                           const data::LabelMap* labels) {
  fs::path delta_dir = delta_path.lexically_normal();  // "run/delta/" -> "run/delta": parents are found
  if (!delta_dir.empty() && !delta_dir.has_filename()) delta_dir = delta_dir.parent_path();
  if (!fs::is_directory(model_dir)) throw IoError(model_dir.string() + ": model folder does not exist");
  Classifier c;
  if (!delta_dir.empty()) {
    const fs::path labels_file = find_labels_file(delta_dir);
    c.labels = data::LabelMap::load(labels_file);
    // The delta records the head size it was trained with; both files must agree.
    delta::DeltaRequirements req = delta::peek_delta(delta_dir);
    if (req.num_labels && *req.num_labels != c.labels.size())
      throw IoError(labels_file.string() + ": " + std::to_string(c.labels.size()) +
                    " labels but the delta's head has " + std::to_string(*req.num_labels) + " outputs");
    c.train_config = read_train_config(delta_dir);
  } else if (labels) {
    c.labels = *labels;
  } else {
    throw ConfigError("load_classifier: without a delta the label names must be given");
  }
  LoadOptions options;
  options.head = HeadKind::SequenceClassification;
  options.num_labels = c.labels.size();
  options.verbose = false;  // the head is replaced by the delta's (or knowingly left untrained)
  c.model = load_pretrained(model_dir, options);
  c.tokenizer = Tokenizer::load(model_dir);
  if (!delta_dir.empty()) c.trained = load_trained(delta_dir, *c.model);
  c.model->set_training(false);
  return c;
}

}  // namespace deltatune::train
