// memory_stats.h: the bytes held by tensor storage, as bench splits a step's peak with them.
#include <gtest/gtest.h>

#include "deltatune/memory_stats.h"
#include "deltatune/ops.h"
#include "deltatune/tensor.h"

using namespace deltatune;

TEST(TensorMemory, CountsWhatTensorsHoldAndTheirPeak) {
  const size_t before = tensor_memory().live_bytes;
  reset_tensor_memory_peak();
  EXPECT_EQ(tensor_memory().peak_bytes, before);
  {
    // A heap block and a block large enough to be mapped on its own (over 32 MiB).
    Tensor small = Tensor::zeros({1000});
    Tensor large = Tensor::zeros({9 << 20});
    EXPECT_EQ(tensor_memory().live_bytes, before + 4000 + (size_t(36) << 20));
    Tensor view = large.slice(0, 0, 10);  // a view shares the storage: nothing new
    EXPECT_EQ(tensor_memory().live_bytes, before + 4000 + (size_t(36) << 20));
  }
  EXPECT_EQ(tensor_memory().live_bytes, before);
  EXPECT_EQ(tensor_memory().peak_bytes, before + 4000 + (size_t(36) << 20));
  {  // an op's result counts while it is held; a temporary it made and freed shows in the peak only
    Tensor a = Tensor::ones({256, 256});
    reset_tensor_memory_peak();
    Tensor b = ops::add(ops::mul(a, a), a);
    EXPECT_EQ(tensor_memory().live_bytes, before + 2 * 256 * 256 * 4);
    EXPECT_GE(tensor_memory().peak_bytes, before + 3 * 256 * 256 * 4);
  }
  reset_tensor_memory_peak();
  EXPECT_EQ(tensor_memory().peak_bytes, before);
}
