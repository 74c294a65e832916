#pragma once
// Deltas made of other deltas (UniPELT, combinations), and the hook bookkeeping they share: which
// hooks a delta installed (found by comparing the model's hook lists before and after its attach) and
// swapping a hook for a wrapper in place, so the wrapped delta's own detach still finds its hook.
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "deltatune/delta.h"

namespace deltatune::delta {

// A delta whose parts are deltas in their own right (a combination's members, UniPELT's parts).
class CompositeDelta {
 public:
  virtual ~CompositeDelta() = default;
  virtual std::vector<Delta*> members() = 0;
};

// The hooks a model holds at one moment.
struct HookSnapshot {
  std::set<const void*> linear, attention, embedding;
  static HookSnapshot of(TransformerModel& model);
};

// Hooks installed since `before`: (layer path, hook) for linear layers, and the model-level ones.
struct NewHooks {
  std::vector<std::pair<nn::Linear*, std::shared_ptr<nn::LinearHook>>> linear;
  std::vector<std::string> linear_paths;  // parallel to `linear`
  std::vector<std::shared_ptr<AttentionHook>> attention;
  std::vector<std::shared_ptr<EmbeddingHook>> embedding;
};
NewHooks hooks_since(TransformerModel& model, const HookSnapshot& before);

// Puts `with` where `what` is in `list` (no-op when absent).
template <class H, class W>
void swap_hook(std::vector<std::shared_ptr<H>>& list, const std::shared_ptr<W>& what,
               const std::shared_ptr<H>& with) {
  for (auto& h : list)
    if (h.get() == static_cast<const void*>(what.get())) h = with;
}

}  // namespace deltatune::delta
