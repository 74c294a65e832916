#pragma once
// Many deltas over one frozen base in one batch (serving): each example names its delta, or none for
// the base alone; the batch runs once through the shared base weights, and each delta's hooks act on
// the rows that named it (those rows are gathered, passed through the delta's hook, and put back), so
// every row comes out as it would running alone with its delta.
//
// Deltas that act through linear-layer hooks can share a batch: LoRA (and DoRA), IA3, adapters,
// Compacter, the low-rank adapter, and combinations of those. Prefix and prompt tuning change the
// sequence every example attends over, and BitFit-like deltas edit the base's own tensors, so they are
// refused with a ConfigError saying so; so is a delta whose method says it cannot
// (Delta::supports_mixed_batch). Deltas that carry a task head must all carry the same one.
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "deltatune/delta.h"
#include "deltatune/model.h"

namespace deltatune::serve {

class MixedBatch {
 public:
  explicit MixedBatch(TransformerModel& model);
  ~MixedBatch();  // detaches every delta: the model is the base again
  MixedBatch(const MixedBatch&) = delete;
  MixedBatch& operator=(const MixedBatch&) = delete;

  // Attaches `delta` (not yet attached) under `name`.
  void add(const std::string& name, std::unique_ptr<delta::Delta> delta);
  // Loads a saved delta folder (our format or PEFT's) under `name`, with its task head if it has one.
  void add_saved(const std::string& name, const std::filesystem::path& dir);
  // Detaches the delta named `name` (no call may be running); the others keep serving. False when
  // there is none. The shared task head stays on the model.
  bool remove(const std::string& name);
  std::vector<std::string> names() const;
  delta::Delta& get(const std::string& name);

  // example_deltas[b] names row b's delta ("" for the base). Between calls every delta is idle: a
  // plain model.forward() gives the base. Calls may run concurrently (each keeps its rows in its own
  // ForwardContext: input.context, or a fresh one); add() and add_saved() must not overlap them.
  ModelOutput forward(const ModelInput& input, const std::vector<std::string>& example_deltas);

 private:
  struct Entry;
  // Attaches via `attach` and takes over the hooks it installed; undoes everything if it fails.
  void adopt(const std::string& name, const std::function<std::unique_ptr<delta::Delta>()>& attach);

  TransformerModel& model_;
  std::vector<std::unique_ptr<Entry>> entries_;
  std::map<std::string, Tensor> head_;  // the task head shared by the deltas that carry one
  std::string head_owner_;
};

}  // namespace deltatune::serve
