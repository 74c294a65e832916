#include "mixed_forward.h"

#include <filesystem>

#include "command.h"
#include "deltatune/autograd.h"
#include "deltatune/delta_io.h"
#include "deltatune/error.h"
#include "deltatune/mixed_batch.h"
#include "model_loading.h"

namespace deltatune::cli {

ModelOutput mixed_forward(const std::string& model_dir, const std::string& head,
                          const std::vector<std::string>& specs, const nlohmann::json& example_deltas,
                          const ModelInput& input, const std::string& input_file) {
  std::vector<std::pair<std::string, std::string>> named;
  for (const auto& s : specs) {
    const auto eq = s.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == s.size())
      throw ExitError{"--mixed-delta '" + s + "': expected NAME=DIR"};
    named.emplace_back(s.substr(0, eq), s.substr(eq + 1));
    if (!std::filesystem::is_directory(named.back().second))
      throw ExitError{"--mixed-delta " + s + ": '" + named.back().second + "' is not a delta folder"};
  }
  const int64_t batch = input.input_ids.size(0);
  if (!example_deltas.is_array() || int64_t(example_deltas.size()) != batch)
    throw ExitError{input_file +
                    ": with --mixed-delta, 'deltas' must list one delta name (or null) per row (" +
                    std::to_string(batch) + " rows)"};
  std::vector<std::string> rows;
  for (size_t b = 0; b < example_deltas.size(); ++b) {
    const auto& v = example_deltas[b];
    if (v.is_null())
      rows.emplace_back();
    else if (v.is_string())
      rows.push_back(v.get<std::string>());
    else
      throw ExitError{input_file + ": 'deltas' row " + std::to_string(b) + " must be a delta name or null"};
  }
  if (!std::filesystem::is_directory(model_dir))
    throw ExitError{"model folder '" + model_dir + "' does not exist or is not a folder"};
  LoadOptions options;
  options.verbose = false;
  if (!head.empty()) {
    options.head = parse_head(head);
  } else {
    for (auto& [_, dir] : named) {  // the first delta that carries a head decides it
      const delta::DeltaRequirements req = delta::peek_delta(dir);
      if (req.head) {
        options.head = req.head;
        options.num_labels = req.num_labels;
        break;
      }
    }
  }
  auto model = load_pretrained(model_dir, options);
  for (int64_t id : input.input_ids.to_ints())
    if (id < 0 || id >= model->config.vocab_size)
      throw ExitError{input_file + ": token id " + std::to_string(id) + " is outside the vocabulary (size " +
                      std::to_string(model->config.vocab_size) + ")"};
  serve::MixedBatch mixed(*model);
  try {
    for (auto& [name, dir] : named) mixed.add_saved(name, dir);
    NoGradGuard no_grad;
    return mixed.forward(input, rows);
  } catch (const ConfigError& e) {
    throw ExitError{e.what()};
  }
}

}  // namespace deltatune::cli
