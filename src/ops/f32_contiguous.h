// The float32, contiguous form of a tensor that the CPU kernels read as raw floats.
#pragma once

#include "deltatune/autograd.h"
#include "deltatune/tensor.h"

namespace deltatune::ops {

// `t` as float32 and contiguous (no copy when it already is), made off the tape: the ops that call
// this record their own backward, so the conversion must not add a node of its own.
inline Tensor f32_contiguous(const Tensor& t) {
  NoGradGuard no_grad;
  return t.float32().contiguous();
}

}  // namespace deltatune::ops
