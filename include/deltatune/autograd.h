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

// How many nodes have been recorded since the start of the process (all threads): tests use it to
// check what a forward puts on the tape.
uint64_t recorded_nodes();

// Runs backward from `root` with the given output gradient.
void run_backward(const Tensor& root, const Tensor& grad_output);

}  // namespace deltatune
