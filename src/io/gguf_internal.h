#pragma once
// What the GGUF reader, writer and dequantiser share inside the library.
#include <cstddef>

#include "deltatune/gguf.h"

namespace deltatune::gguf {

constexpr char kMagic[4] = {'G', 'G', 'U', 'F'};
constexpr uint64_t kDefaultAlignment = 32;

// Bytes of one scalar of `t`; 0 for String and Array (and unknown ids).
size_t value_scalar_size(ValueType t);

}  // namespace deltatune::gguf
