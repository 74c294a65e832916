#pragma once
// Activation (gradient) checkpointing, as torch.utils.checkpoint and transformers'
// gradient_checkpointing_enable(): a block's forward runs without recording, keeping only its input;
// the backward runs the block again with recording on and back-propagates through that copy. The
// activations of one block at a time are alive in the backward instead of every block's, for about
// one more forward pass of compute. TransformerModel::gradient_checkpointing applies it per block.
#include <functional>

#include "deltatune/tensor.h"

namespace deltatune {

using BlockFn = std::function<Tensor(const Tensor&)>;

// `forward(x)` now, unrecorded; when the result's gradient arrives, `replay(x)` (the same computation:
// same random draws, same state) runs recorded and is back-propagated: its parameters accumulate their
// gradients there, and x's flows on. Without grad mode this is forward(x). The block may use only
// x and tensors that need no gradient or are leaves (parameters): a replay that reaches a tensor
// recorded before it (a value one block hands the next outside x) is an Error, not a wrong gradient.
Tensor checkpoint(const BlockFn& forward, BlockFn replay, const Tensor& x);

}  // namespace deltatune
