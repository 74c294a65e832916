#include "model_loading.h"

#include <filesystem>

#include "command.h"
#include "deltatune/error.h"

namespace deltatune::cli {

HeadKind parse_head(const std::string& head) {
  if (head == "causal-lm") return HeadKind::CausalLM;
  if (head == "masked-lm") return HeadKind::MaskedLM;
  if (head == "sequence-classification" || head == "classification") return HeadKind::SequenceClassification;
  if (head == "none") return HeadKind::None;
  throw ExitError{"unknown head '" + head + "' (supported: causal-lm, masked-lm, sequence-classification, none)"};
}

LoadedModel load_model(const std::string& model_dir, const std::string& head, const std::string& delta) {
  if (!std::filesystem::is_directory(model_dir))
    throw ExitError{"model folder '" + model_dir + "' does not exist or is not a folder"};
  LoadOptions options;
  if (!head.empty()) options.head = parse_head(head);
  LoadedModel loaded;
  loaded.model = load_pretrained(model_dir, options);
  if (!delta.empty()) throw ExitError{"--delta is not supported yet in this build"};
  return loaded;
}

}  // namespace deltatune::cli
