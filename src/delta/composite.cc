#include "delta/composite.h"

namespace deltatune::delta {

HookSnapshot HookSnapshot::of(TransformerModel& model) {
  HookSnapshot s;
  for (auto& [_, m] : model.named_modules())
    if (auto* l = dynamic_cast<nn::Linear*>(m))
      for (auto& h : l->hooks) s.linear.insert(h.get());
  for (auto& h : model.attention_hooks) s.attention.insert(h.get());
  for (auto& h : model.embedding_hooks) s.embedding.insert(h.get());
  return s;
}

NewHooks hooks_since(TransformerModel& model, const HookSnapshot& before) {
  NewHooks out;
  for (auto& [path, m] : model.named_modules())
    if (auto* l = dynamic_cast<nn::Linear*>(m))
      for (auto& h : l->hooks)
        if (!before.linear.count(h.get())) {
          out.linear.emplace_back(l, h);
          out.linear_paths.push_back(path);
        }
  for (auto& h : model.attention_hooks)
    if (!before.attention.count(h.get())) out.attention.push_back(h);
  for (auto& h : model.embedding_hooks)
    if (!before.embedding.count(h.get())) out.embedding.push_back(h);
  return out;
}

}  // namespace deltatune::delta
