#pragma once
// What one forward pass owns alone, so that several threads can run one model on different inputs at
// once (a server answering requests concurrently): the dropout generator of the call, and the values
// the hooks of one call hand each other (a mixed batch's rows per delta, a parallel adapter's captured
// input, UniPELT's mask). The model's weights, its deltas' parameters, its hooks and its training flag
// are shared: they must not change while calls run.
//
//   ForwardContext call(step_seed);  // a caller that wants reproducible dropout seeds its own
//   ModelInput in;
//   in.input_ids = ids;
//   in.context = &call;
//   model.forward(in);
//
// A context serves one call at a time; consecutive calls may share one (the trainer makes one per
// micro-batch, seeded from (seed, step, micro-batch), its rows keyed by the examples' indices:
// Generator::key_rows). Without one, a forward makes its own, seeded from the model's count of such
// calls.
#include <any>
#include <cstdint>
#include <map>

#include "deltatune/random.h"

namespace deltatune {

class ForwardContext {
 public:
  static constexpr uint64_t kDefaultDropoutSeed = 1234;
  explicit ForwardContext(uint64_t dropout_seed = kDefaultDropoutSeed) : dropout_rng(dropout_seed) {}

  // Every dropout mask (the model's, LoRA's, adapters') and every sampled gate of the call.
  Generator dropout_rng;

  // The call's value of type T kept by `owner` (a hook's shared state), created empty on first use.
  template <class T>
  T& slot(const void* owner) {
    std::any& value = slots_[owner];
    if (!value.has_value()) value = T{};
    return std::any_cast<T&>(value);
  }
  // The value if `owner` keeps one, else nullptr.
  template <class T>
  T* find(const void* owner) {
    auto it = slots_.find(owner);
    return it == slots_.end() ? nullptr : std::any_cast<T>(&it->second);
  }
  void erase(const void* owner) { slots_.erase(owner); }

  // The call in progress on this thread (what hooks read); outside any model forward (a layer called
  // directly), the thread's own context.
  static ForwardContext& current();

 private:
  std::map<const void*, std::any> slots_;
};

// Makes `context` the current one of this thread for its lifetime (TransformerModel::forward).
class ForwardScope {
 public:
  explicit ForwardScope(ForwardContext& context);
  ~ForwardScope();
  ForwardScope(const ForwardScope&) = delete;
  ForwardScope& operator=(const ForwardScope&) = delete;

 private:
  ForwardContext* previous_;
};

}  // namespace deltatune
