// Mixed-delta batches: every linear hook a delta installs is wrapped in a RowHook that runs the
// delta's hook on the rows naming that delta only (gathered along the batch axis, then put back in
// place); the other rows pass through untouched, bit for bit. Which rows name a delta is the call's
// own state: kept in its ForwardContext under the delta's entry, so concurrent calls never share it.
#include "deltatune/mixed_batch.h"

#include <algorithm>
#include <set>
#include <tuple>

#include "delta/composite.h"
#include "deltatune/autograd.h"
#include "deltatune/delta_io.h"
#include "deltatune/error.h"

namespace deltatune::serve {
namespace {

// The rows of a call's batch that use one delta (sorted).
struct Rows {
  std::vector<int64_t> index;
  int64_t batch = 0;
  bool all() const { return int64_t(index.size()) == batch; }
};

// Runs of consecutive rows: (start, length, in `rows`).
std::vector<std::tuple<int64_t, int64_t, bool>> runs(const Rows& rows) {
  std::vector<bool> in(size_t(rows.batch), false);
  for (int64_t r : rows.index) in[size_t(r)] = true;
  std::vector<std::tuple<int64_t, int64_t, bool>> out;
  for (int64_t b = 0; b < rows.batch;) {
    int64_t e = b;
    while (e < rows.batch && in[size_t(e)] == in[size_t(b)]) ++e;
    out.emplace_back(b, e - b, in[size_t(b)]);
    b = e;
  }
  return out;
}

Tensor gather(const Tensor& t, const Rows& rows) {
  std::vector<Tensor> parts;
  for (auto [start, length, in] : runs(rows))
    if (in) parts.push_back(t.slice(0, start, start + length));
  return parts.size() == 1 ? parts[0] : ops::concat(parts, 0);
}

// `base` with the rows in `rows` replaced by `sub`'s, in order.
Tensor scatter(const Tensor& base, const Tensor& sub, const Rows& rows) {
  std::vector<Tensor> parts;
  int64_t taken = 0;
  for (auto [start, length, in] : runs(rows)) {
    if (in) {
      parts.push_back(sub.slice(0, taken, taken + length));
      taken += length;
    } else {
      parts.push_back(base.slice(0, start, start + length));
    }
  }
  return ops::concat(parts, 0);
}

// The same, written into `base` in place where nothing records (a server's forward): a linear's
// output is its own fresh tensor, and the batch is then copied once in all rather than once per delta.
Tensor scatter_output(const Tensor& base, const Tensor& sub, const Rows& rows) {
  if (grad_enabled() || base.dtype() != sub.dtype()) return scatter(base, sub, rows);
  int64_t taken = 0;
  Tensor out = base;
  for (auto [start, length, in] : runs(rows))
    if (in) {
      out.slice(0, start, start + length).copy_(sub.slice(0, taken, taken + length));
      taken += length;
    }
  return out;
}

struct RowHook : nn::LinearHook {
  std::shared_ptr<nn::LinearHook> inner;
  const void* entry = nullptr;  // the delta's entry: the key of its rows in the call's context

  // The rows of the call in progress that use the delta; nullptr when none do (or a plain forward).
  const Rows* rows() const {
    const Rows* r = ForwardContext::current().find<Rows>(entry);
    return r && !r->index.empty() && inner->enabled ? r : nullptr;
  }
  static void check(const Tensor& x, const Rows& rows) {
    if (x.dim() == 0 || x.size(0) != rows.batch)
      throw ShapeError("mixed batch: a linear layer saw " + shape_str(x.shape()) + " for a batch of " +
                       std::to_string(rows.batch) + " (the batch axis must come first)");
  }
  Tensor pre(nn::Linear& layer, const Tensor& x) override {
    const Rows* r = rows();
    if (!r) return x;
    check(x, *r);
    if (r->all()) return inner->pre(layer, x);
    return scatter(x, inner->pre(layer, gather(x, *r)), *r);
  }
  Tensor post(nn::Linear& layer, const Tensor& x, const Tensor& y) override {
    const Rows* r = rows();
    if (!r) return y;
    check(y, *r);
    if (r->all()) return inner->post(layer, x, y);
    return scatter_output(y, inner->post(layer, gather(x, *r), gather(y, *r)), *r);
  }
};

}  // namespace

struct MixedBatch::Entry {
  std::string name;
  std::unique_ptr<delta::Delta> delta;
  std::vector<std::pair<nn::Linear*, std::shared_ptr<RowHook>>> hooks;
};

MixedBatch::MixedBatch(TransformerModel& model) : model_(model) {}

MixedBatch::~MixedBatch() {
  for (auto it = entries_.rbegin(); it != entries_.rend(); ++it) {
    for (auto& [layer, hook] : (*it)->hooks) delta::swap_hook(layer->hooks, hook, hook->inner);
    (*it)->delta->detach();
  }
}

bool MixedBatch::remove(const std::string& name) {
  auto it = std::find_if(entries_.begin(), entries_.end(), [&](auto& e) { return e->name == name; });
  if (it == entries_.end()) return false;
  for (auto& [layer, hook] : (*it)->hooks) delta::swap_hook(layer->hooks, hook, hook->inner);
  (*it)->delta->detach();
  entries_.erase(it);
  return true;
}

std::vector<std::string> MixedBatch::names() const {
  std::vector<std::string> out;
  for (auto& e : entries_) out.push_back(e->name);
  return out;
}

delta::Delta& MixedBatch::get(const std::string& name) {
  for (auto& e : entries_)
    if (e->name == name) return *e->delta;
  throw ConfigError("mixed batch: no delta named '" + name + "' (have: " + nlohmann::json(names()).dump() +
                    ")");
}

void MixedBatch::adopt(const std::string& name,
                       const std::function<std::unique_ptr<delta::Delta>()>& attach) {
  if (name.empty()) throw ConfigError("mixed batch: a delta needs a non-empty name (\"\" is the base)");
  for (auto& e : entries_)
    if (e->name == name) throw ConfigError("mixed batch: two deltas named '" + name + "'");
  std::map<std::string, const void*> params_before;
  for (auto& [n, t] : model_.named_parameters()) params_before[n] = t->impl();
  const delta::HookSnapshot before = delta::HookSnapshot::of(model_);
  auto entry = std::make_unique<Entry>();
  entry->name = name;
  entry->delta = attach();
  delta::NewHooks added = delta::hooks_since(model_, before);
  std::string why;
  if (!added.attention.empty() || !added.embedding.empty())
    why = "it hooks attention or the embeddings (prefix, prompt tuning, UniPELT), not only linear layers";
  std::set<std::string> changed;
  for (auto& [n, t] : model_.named_parameters())
    if (params_before.count(n) && params_before[n] != t->impl()) changed.insert(n);
  if (why.empty() && !changed.empty()) {
    // A task head loaded with the delta is fine when it is the head already in use.
    bool only_head = true;
    for (auto& n : changed) only_head = only_head && head_.count(n);
    if (!only_head) why = "it changes the base model's own tensors (e.g. " + *changed.begin() + ")";
  }
  if (why.empty() && added.linear.empty()) why = "it installs no linear-layer hook";
  if (why.empty() && !entry->delta->supports_mixed_batch()) why = "its method does not support mixed batches";
  if (!why.empty()) {
    entry->delta->detach();
    throw ConfigError("mixed batch: the " + entry->delta->method() + " delta '" + name +
                      "' cannot share a batch: " + why);
  }
  for (auto& [layer, hook] : added.linear) {
    auto wrapped = std::make_shared<RowHook>();
    wrapped->owner = hook->owner;
    wrapped->inner = hook;
    wrapped->entry = entry.get();
    delta::swap_hook(layer->hooks, hook, std::static_pointer_cast<nn::LinearHook>(wrapped));
    entry->hooks.emplace_back(layer, wrapped);
  }
  entries_.push_back(std::move(entry));
}

void MixedBatch::add(const std::string& name, std::unique_ptr<delta::Delta> d) {
  if (!d) throw ConfigError("mixed batch: no delta given for '" + name + "'");
  d->name = name;
  adopt(name, [&]() {
    d->attach(model_);
    return std::move(d);
  });
}

void MixedBatch::add_saved(const std::string& name, const std::filesystem::path& dir) {
  // Checked before loading: a full or head run's weights would replace the shared model's.
  const std::string method = delta::peek_delta(dir).method;
  if (delta::saves_model_weights(method))
    throw ConfigError("mixed batch: '" + name + "' (" + dir.string() + ") is a '" + method +
                      "' run, whose weights replace the model's; only deltas share one model");
  std::map<std::string, Tensor> head_before;
  for (auto& [n, t] : model_.named_parameters()) head_before[n] = *t;
  std::map<std::string, Tensor> head;
  auto restore_head = [&] {
    for (auto& [n, _] : head)
      if (Tensor* p = model_.find_parameter(n)) *p = head_before[n];
  };
  try {
    adopt(name, [&]() {
      delta::SavedDelta saved = delta::load_delta(dir, model_);
      saved.delta->name = name;
      head = saved.head;
      if (!head.empty() && !head_.empty()) {
        // Every delta's head must be the one already serving.
        for (auto& [n, t] : head) {
          auto it = head_.find(n);
          bool same = it != head_.end() && it->second.shape() == t.shape();
          if (same) {
            auto a = it->second.to_floats(), b = t.to_floats();
            same = a == b;
          }
          if (!same) {
            saved.delta->detach();
            restore_head();
            throw ConfigError("mixed batch: delta '" + name + "' (" + dir.string() +
                              ") carries its own task head ('" + n +
                              "'); deltas in one batch must share the head");
          }
        }
      }
      if (!head.empty() && head_.empty()) {
        head_ = head;
        head_owner_ = name;
      }
      return std::move(saved.delta);
    });
  } catch (...) {
    if (head_owner_ == name) head_.clear(), head_owner_.clear();
    restore_head();
    throw;
  }
}

ModelOutput MixedBatch::forward(const ModelInput& input, const std::vector<std::string>& example_deltas) {
  const int64_t batch = input.input_ids.dim() == 2 ? input.input_ids.size(0) : -1;
  if (int64_t(example_deltas.size()) != batch)
    throw ConfigError("mixed batch: " + std::to_string(example_deltas.size()) +
                      " delta names for a batch of " + std::to_string(batch) + " examples");
  std::map<const Entry*, Rows> rows;
  for (auto& e : entries_) rows[e.get()].batch = batch;
  for (int64_t b = 0; b < batch; ++b) {
    const std::string& n = example_deltas[size_t(b)];
    if (n.empty()) continue;
    auto it = std::find_if(entries_.begin(), entries_.end(), [&](auto& e) { return e->name == n; });
    if (it == entries_.end())
      throw ConfigError("mixed batch: example " + std::to_string(b) + " names the delta '" + n +
                        "', which is not loaded (have: " + nlohmann::json(names()).dump() + ")");
    rows[it->get()].index.push_back(b);
  }
  ForwardContext own;  // a call without a context of its own: dropout (training only) seeded by default
  ModelInput call = input;
  if (!call.context) call.context = &own;
  struct Idle {  // whatever happens, the context names no rows afterwards: the deltas are idle again
    ForwardContext& context;
    const std::map<const Entry*, Rows>& rows;
    ~Idle() {
      for (auto& [entry, _] : rows) context.erase(entry);
    }
  } idle{*call.context, rows};
  for (auto& [entry, r] : rows) call.context->slot<Rows>(entry) = r;
  return model_.forward(call);
}

}  // namespace deltatune::serve
