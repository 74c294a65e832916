#pragma once
// Bytes held by tensors on the CPU: what the library itself allocated for tensor storage (both the
// heap blocks and the directly mapped large ones), as torch.cuda.memory_allocated() and
// max_memory_allocated() report for a GPU. The process's peak RSS adds the code, the allocator's
// slack and memory tensors do not own (a mapped checkpoint); this is the part a model's design
// decides, so bench splits a step's peak with it: the state at rest (weights, optimizer moments),
// what the forward keeps for the backward, and what the backward adds on top.
//
//   reset_tensor_memory_peak();
//   Tensor loss = model.forward(batch) ...;
//   size_t saved = tensor_memory().live_bytes - at_rest;
//   loss.backward();
//   size_t peak = tensor_memory().peak_bytes;
//
// Counted at allocation, by the size asked for (fresh mapped pages count before they are touched);
// storage the library did not allocate (a mapped checkpoint, a numpy array it wraps) is not counted.
#include <cstddef>

namespace deltatune {

struct TensorMemory {
  size_t live_bytes = 0;  // held by CPU tensor storage now
  size_t peak_bytes = 0;  // the most held at once since the process started or the last reset
};

TensorMemory tensor_memory();
// Starts a new peak from what is held now.
void reset_tensor_memory_peak();

}  // namespace deltatune
