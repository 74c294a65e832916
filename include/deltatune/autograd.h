#pragma once
// Reverse-mode autograd. Each recorded op adds a Node that holds its inputs and a backward rule;
// only ops that touch a tensor requiring grad are recorded (the tape), and only while grad mode is
// on. backward() runs the nodes in reverse creation order from a scalar, accumulates gradients into
// leaves that require grad (frozen tensors never get a buffer), and frees the graph as it goes.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "deltatune/tensor.h"

namespace deltatune {

// A backward rule gets the output's gradient and which inputs need one; it returns one gradient per
// input (undefined where not needed). Rules run in no-grad mode and may use any op.
using BackwardFn = std::function<std::vector<Tensor>(const Tensor& grad_out, const std::vector<bool>& needs)>;

struct Node {
  std::string name;            // the op, for error messages and debugging
  std::vector<Tensor> inputs;  // edges to where gradients flow (computed inputs without their data)
  BackwardFn backward;
  uint64_t sequence = 0;  // creation order: the tape position
};

bool grad_enabled();
// Sets grad mode for a scope and restores the previous mode at its end (like torch.set_grad_enabled):
// off for evaluation, optimizer steps and backward rules; on for a checkpointed block's recomputation
// inside a backward rule.
class GradModeGuard {
 public:
  explicit GradModeGuard(bool enabled);
  ~GradModeGuard();
  GradModeGuard(const GradModeGuard&) = delete;
  GradModeGuard& operator=(const GradModeGuard&) = delete;

 private:
  bool previous_;
};
// The common case, recording off (torch.no_grad).
class NoGradGuard : public GradModeGuard {
 public:
  NoGradGuard() : GradModeGuard(false) {}
};

// Records `output` as produced by `name` from `inputs` if grad mode is on and any input requires grad.
// Captured tensors in `backward` must not include `output` itself (use output.detach()).
Tensor record(const char* name, Tensor output, std::vector<Tensor> inputs, BackwardFn backward);

// --- Saved tensors and cheap recomputation (torch's saved tensors, with selective recomputation) ---
// A backward rule that needs a tensor's values keeps a SavedTensor of it. Usually that is the tensor
// itself. But an activation's or a norm's output is cheap to compute again from inputs the tape
// keeps anyway (the activation's input, the norm's input), so such an op marks its recorded output
// with a Rebuild: the rules that save it then keep the recipe, not the values, and the output's
// memory is freed once the forward is done with it. The first rule to need it in the backward
// rebuilds it, bit for bit (the same kernel on the same input), and the rebuilt copy is shared with
// every other rule that saved it until the last one has taken it. In full fine-tuning of bert-base
// this frees the FFN's GELU outputs and the layer norms' outputs: a quarter of what the forward
// keeps, for a few element-wise passes more in the backward.
struct Rebuild {
  std::function<Tensor()> compute;  // runs in no-grad mode, in the backward
  int savers = 0;                   // SavedTensors holding this recipe
  int taken = 0;                    // of them, how many have had the values
  Tensor rebuilt;                   // shared between the savers until the last has taken it
  Tensor rebuilt_bf16;              // its bfloat16 rounding, likewise, once a saver asked for it
};

// `output` (an op's result, just recorded) can be rebuilt by `compute` from tensors that op's own
// backward keeps. No effect while rebuilding is off or `output` is not recorded.
void set_rebuild(const Tensor& output, std::function<Tensor()> compute);

// On by default. Off, every saved tensor keeps its values (tests compare the two; a step then
// holds more memory for a few element-wise passes less).
void set_rebuild_saved_activations(bool on);
bool rebuild_saved_activations();

class SavedTensor {
 public:
  SavedTensor() = default;
  explicit SavedTensor(const Tensor& t);  // the values of t, or t's Rebuild when it has one
  bool defined() const { return kept_.defined() || rebuild_ != nullptr; }
  // The values, in float32 or rounded to bfloat16 (for the BF16 kernel's weight gradients): rebuilt,
  // and rounded, once across the savers. Each rule calls it once.
  Tensor get(DType dtype = DType::F32) const;

 private:
  Tensor kept_;  // detached
  std::shared_ptr<Rebuild> rebuild_;
};

// How many nodes have been recorded since the start of the process (all threads): tests use it to
// check what a forward puts on the tape.
uint64_t recorded_nodes();

// Runs backward from `root` with the given output gradient.
void run_backward(const Tensor& root, const Tensor& grad_output);

}  // namespace deltatune
