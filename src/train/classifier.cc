// A run's settings found beside its delta, and the classifier view of the one loader (deltatune/loading.h).
#include "deltatune/delta_io.h"
#include "deltatune/json_file.h"
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
      return read_json_file(dir / "train_config.json");
    } catch (const IoError&) {
      return nullptr;  // only a source of defaults: ignore a damaged one
    }
  }
  return nullptr;
}

Classifier load_classifier(const fs::path& model_dir, const fs::path& delta_dir,
                           const data::LabelMap* labels) {
  LoadRequest request;
  request.model_dir = model_dir;
  request.delta = delta_dir;
  request.classifier = true;
  request.labels = labels;
  request.tokenizer = true;
  return load_with_delta(request);
}

}  // namespace deltatune::train
