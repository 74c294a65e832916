#pragma once
// The models a server runs and the deltas on them (deltatune/serve.h). The base group holds the base
// model and every delta that can share its batches (a MixedBatch). A delta that cannot share a batch
// gets a model of its own (loaded with it, as `generate` and `predict` load it). A classifier delta
// brings its own task head: it gets a model with that head whose other tensors are the base model's
// own (shared, not copied).
//
// Deltas are added and removed on the scheduler thread only (no forward runs then); any thread may
// look one up. A delta being removed is refused to new requests and unloaded once nothing it serves is
// in flight.
#include <atomic>
#include <filesystem>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "deltatune/data.h"
#include "deltatune/delta_io.h"
#include "deltatune/loading.h"
#include "deltatune/mixed_batch.h"
#include "deltatune/serve.h"
#include "deltatune/tokenizer.h"

namespace deltatune::serve {

struct ModelGroup {
  std::unique_ptr<TransformerModel> model;
  std::unique_ptr<MixedBatch> mixed;  // the deltas that share this model's batches; null: a solo model
  AppliedDelta solo;                  // a solo model's delta
  // One forward in which row b runs with the delta named row_deltas[b] ("" the base).
  ModelOutput forward(const ModelInput& input, const std::vector<std::string>& row_deltas);
};

struct DeltaEntry {
  ModelInfo info;
  ModelGroup* group = nullptr;
  std::string row_name;      // its name in group->mixed; "" for the base or a solo model
  data::LabelMap labels;     // a classifier's classes
  int64_t max_length = 128;  // a classifier's input limit (its run's max-length, as predict uses)
  std::atomic<int64_t> in_flight{0};
  std::atomic<bool> retiring{false};
};

class ModelGroups {
 public:
  explicit ModelGroups(const EngineOptions& options);
  ~ModelGroups();

  // Scheduler thread only.
  void add(const std::string& name, const std::filesystem::path& dir);
  void remove_retired();  // unloads retiring deltas with nothing in flight

  // Any thread. acquire counts a request in flight on the delta (release ends it); it throws
  // UnknownModel for a name not (or no longer) served.
  std::shared_ptr<DeltaEntry> acquire(const std::string& name);
  void release(DeltaEntry& entry);
  void retire(const std::string& name);  // UnknownModel, or a ConfigError for the base
  std::vector<ModelInfo> list() const;
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const std::string& base_name() const { return base_name_; }

 private:
  ModelGroup& group_for_classifier(const std::string& name, const std::filesystem::path& dir,
                                   const delta::DeltaRequirements& req);
  ModelGroup& solo_group(const std::filesystem::path& dir, std::optional<HeadKind> head, bool classifier);

  EngineOptions options_;
  std::string base_name_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::list<std::unique_ptr<ModelGroup>> groups_;  // front: the base group
  mutable std::mutex mutex_;                       // guards entries_
  std::map<std::string, std::shared_ptr<DeltaEntry>> entries_;
};

}  // namespace deltatune::serve
