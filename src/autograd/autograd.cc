#include "deltatune/autograd.h"

#include <algorithm>
#include <atomic>
#include <unordered_map>
#include <unordered_set>

#include "deltatune/checkpoint.h"
#include "deltatune/error.h"
#include "deltatune/ops.h"

namespace deltatune {
namespace {
thread_local bool g_grad_enabled = true;
std::atomic<uint64_t> g_sequence{0};
}  // namespace

bool grad_enabled() { return g_grad_enabled; }
uint64_t recorded_nodes() { return g_sequence.load(); }
GradModeGuard::GradModeGuard(bool enabled) : previous_(g_grad_enabled) { g_grad_enabled = enabled; }
GradModeGuard::~GradModeGuard() { g_grad_enabled = previous_; }

namespace {
// What the tape keeps of an input: a leaf as it is (its gradient buffer lives on it), a computed
// tensor as its metadata and grad_fn only. Backward rules capture the data they need themselves, so
// an intermediate nothing saved is freed as soon as the forward is done with it, not at backward
// (a linear layer's output under a LoRA add, say: the add needs no operand to differentiate).
Tensor edge_of(const Tensor& t) {
  if (!t.defined() || !t.grad_fn()) return t;
  auto impl = std::make_shared<TensorImpl>();
  impl->dtype = t.dtype();
  impl->shape = t.shape();
  impl->strides = t.strides();
  impl->offset = t.offset();
  impl->requires_grad = t.requires_grad();
  impl->grad_fn = t.grad_fn();
  return Tensor(impl);
}
}  // namespace

Tensor record(const char* name, Tensor output, std::vector<Tensor> inputs, BackwardFn backward) {
  if (!g_grad_enabled) return output;
  bool any = false;
  for (const Tensor& t : inputs) any = any || (t.defined() && t.requires_grad());
  if (!any) return output;
  auto node = std::make_shared<Node>();
  node->name = name;
  node->inputs.reserve(inputs.size());
  for (const Tensor& t : inputs) node->inputs.push_back(edge_of(t));
  node->backward = std::move(backward);
  node->sequence = g_sequence.fetch_add(1);
  output.impl()->grad_fn = std::move(node);
  output.impl()->requires_grad = true;
  return output;
}

namespace {
std::atomic<bool> g_rebuild{true};
}  // namespace

void set_rebuild_saved_activations(bool on) { g_rebuild = on; }
bool rebuild_saved_activations() { return g_rebuild; }

void set_rebuild(const Tensor& output, std::function<Tensor()> compute) {
  if (!g_rebuild || !output.defined() || !output.grad_fn()) return;
  auto rebuild = std::make_shared<Rebuild>();
  rebuild->compute = std::move(compute);
  output.impl()->rebuild = std::move(rebuild);
}

SavedTensor::SavedTensor(const Tensor& t) {
  if (!t.defined()) return;
  if (g_rebuild && g_grad_enabled && t.impl()->rebuild) {
    rebuild_ = t.impl()->rebuild;
    ++rebuild_->savers;
  } else {
    kept_ = t.detach();
  }
}

Tensor SavedTensor::get(DType dtype) const {
  if (dtype != DType::F32 && dtype != DType::BF16)
    throw DtypeError(std::string("SavedTensor::get: float32 or bfloat16, not ") + dtype_name(dtype));
  if (!rebuild_) return kept_.to(dtype);
  Rebuild& r = *rebuild_;
  NoGradGuard no_grad;
  if (!r.rebuilt.defined()) r.rebuilt = r.compute().detach();
  if (dtype == DType::BF16 && !r.rebuilt_bf16.defined()) r.rebuilt_bf16 = r.rebuilt.to(DType::BF16).detach();
  Tensor values = dtype == DType::BF16 ? r.rebuilt_bf16 : r.rebuilt;
  if (++r.taken >= r.savers) {  // the last saver has it: free the copies with that rule
    r.rebuilt = Tensor();
    r.rebuilt_bf16 = Tensor();
  }
  return values;
}

namespace {
// `t` is contiguous float32 of `shape`, covers its whole storage, and nothing else refers to it.
bool owns_dense_f32(const Tensor& t, const Shape& shape) {
  return t.uniquely_owned() && t.dtype() == DType::F32 && t.shape() == shape && t.is_contiguous() &&
         t.offset() == 0 && t.device() == Device::CPU &&
         t.storage()->bytes == size_t(t.numel()) * sizeof(float);
}

// Adds g into a leaf's gradient buffer (created on first use, float32, the leaf's shape).
void accumulate_leaf(const Tensor& leaf, const Tensor& g) {
  TensorImpl* impl = leaf.impl();
  if (!impl->grad) {
    // A gradient nobody else holds (a backward rule's fresh result) becomes the buffer as is.
    if (owns_dense_f32(g, leaf.shape())) {
      impl->grad = std::make_shared<TensorImpl>(*g.impl());
      return;
    }
    // A fresh buffer of the leaf's own: later in-place adds must never alias another tensor.
    Tensor owned = Tensor::empty(leaf.shape());
    owned.copy_(g);
    impl->grad = std::make_shared<TensorImpl>(*owned.impl());
    return;
  }
  Tensor existing(impl->grad);
  ops::add_(existing, g);
}
}  // namespace

namespace {
// run_backward's work; nodes recorded before `first_sequence` are refused (a checkpoint's replay must
// not run, and free, the enclosing graph's nodes).
void backward_from(const Tensor& root, const Tensor& grad_output, uint64_t first_sequence) {
  if (!root.requires_grad())
    throw Error("backward: the tensor does not require grad (no input of its graph requires grad)");
  if (grad_output.shape() != root.shape())
    throw ShapeError("backward: gradient " + grad_output.describe() + " does not match output " +
                     root.describe());
  NoGradGuard no_grad;
  if (!root.grad_fn()) {
    accumulate_leaf(root, grad_output);
    return;
  }
  // Collect the graph reachable from the root, then run it in reverse tape order. The nodes are held
  // here so that freeing one node's edges cannot destroy a node still to run.
  std::vector<std::shared_ptr<Node>> nodes;
  std::unordered_set<Node*> seen;
  std::vector<std::shared_ptr<Node>> stack{root.grad_fn()};
  seen.insert(stack.back().get());
  while (!stack.empty()) {
    std::shared_ptr<Node> n = std::move(stack.back());
    stack.pop_back();
    for (const Tensor& in : n->inputs) {
      if (!in.defined()) continue;
      const std::shared_ptr<Node>& next = in.grad_fn();
      if (next && next->sequence < first_sequence)
        throw Error("gradient checkpointing: a checkpointed block uses '" + next->name +
                    "', computed before the block and needing a gradient; only the block's input may "
                    "carry one (run without gradient checkpointing)");
      if (next && seen.insert(next.get()).second) stack.push_back(next);
    }
    nodes.push_back(std::move(n));
  }
  std::sort(nodes.begin(), nodes.end(),
            [](const auto& a, const auto& b) { return a->sequence > b->sequence; });

  std::unordered_map<Node*, Tensor> pending;
  pending[root.grad_fn().get()] = grad_output;
  for (const std::shared_ptr<Node>& node : nodes) {
    Node* n = node.get();
    auto it = pending.find(n);
    if (it == pending.end() || !n->backward) continue;
    Tensor g = std::move(it->second);
    pending.erase(it);
    std::vector<bool> needs(n->inputs.size());
    for (size_t i = 0; i < n->inputs.size(); ++i)
      needs[i] = n->inputs[i].defined() && n->inputs[i].requires_grad();
    std::vector<Tensor> grads = n->backward(g, needs);
    if (grads.size() != n->inputs.size())
      throw Error("backward of " + n->name + " returned " + std::to_string(grads.size()) + " gradients for " +
                  std::to_string(n->inputs.size()) + " inputs");
    for (size_t i = 0; i < grads.size(); ++i) {
      if (!needs[i] || !grads[i].defined()) continue;
      const Tensor& in = n->inputs[i];
      if (grads[i].shape() != in.shape())
        throw ShapeError("backward of " + n->name + ": gradient " + grads[i].describe() + " for input " +
                         in.describe());
      if (Node* next = in.grad_fn().get()) {
        auto p = pending.find(next);
        if (p == pending.end())
          pending.emplace(next, grads[i]);
        else if (owns_dense_f32(p->second, in.shape()))
          ops::add_(p->second, grads[i]);  // no new buffer
        else
          p->second = ops::add(p->second, grads[i]);
      } else {
        accumulate_leaf(in, grads[i]);
      }
    }
    // Free this part of the graph: saved tensors and edges go as soon as they are used.
    n->backward = nullptr;
    n->inputs.clear();
  }
}

}  // namespace

void run_backward(const Tensor& root, const Tensor& grad_output) { backward_from(root, grad_output, 0); }

Tensor checkpoint(const BlockFn& forward, BlockFn replay, const Tensor& x) {
  if (!g_grad_enabled) return forward(x);
  Tensor y;
  {
    NoGradGuard no_grad;
    y = forward(x);
  }
  // A leaf that requires grad, so that the node is recorded even when x needs no gradient (the first
  // block's input): the block's own parameters are not the node's inputs, the replay's backward
  // reaches them itself.
  static const Tensor anchor = Tensor::zeros({}).set_requires_grad(true);
  const Tensor saved = x.detach();
  return record("checkpoint", y, {x, anchor},
                [replay = std::move(replay), saved](const Tensor& g, const std::vector<bool>& needs) {
                  Tensor input = saved.detach();  // a leaf of the replay's own graph
                  if (needs[0]) input.set_requires_grad(true);
                  const uint64_t first = g_sequence.load();
                  Tensor out;
                  {
                    GradModeGuard grad(true);
                    out = replay(input);
                  }
                  if (out.requires_grad()) backward_from(out, g, first);
                  return std::vector<Tensor>{needs[0] ? input.grad() : Tensor(), Tensor()};
                });
}

}  // namespace deltatune
