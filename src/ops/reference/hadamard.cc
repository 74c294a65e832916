// The reference Walsh-Hadamard transform: the matrix product itself, y[i] = sum_j (-1)^popcount(i & j)
// x[j], in double. O(n^2), obviously right.
#include <bit>
#include <vector>

#include "ops/reference/reference_backend.h"

namespace deltatune::ops {

void ReferenceBackend::hadamard(float* x, int64_t rows, int64_t n) const {
  std::vector<double> y(static_cast<size_t>(n));
  for (int64_t r = 0; r < rows; ++r) {
    float* row = x + r * n;
    for (int64_t i = 0; i < n; ++i) {
      double s = 0;
      for (int64_t j = 0; j < n; ++j) s += (std::popcount(uint64_t(i & j)) % 2 ? -1.0 : 1.0) * double(row[j]);
      y[size_t(i)] = s;
    }
    for (int64_t i = 0; i < n; ++i) row[i] = float(y[size_t(i)]);
  }
}

}  // namespace deltatune::ops
