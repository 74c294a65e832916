// The fast Walsh-Hadamard transform: log2(n) butterfly passes in place, rows in parallel.
#include "ops/cpu/cpu_backend.h"

namespace deltatune::ops {

void CpuBackend::hadamard(float* x, int64_t rows, int64_t n) const {
#pragma omp parallel for if (rows > 1 && rows * n > (1 << 16))
  for (int64_t r = 0; r < rows; ++r) {
    float* row = x + r * n;
    for (int64_t half = 1; half < n; half *= 2)
      for (int64_t start = 0; start < n; start += 2 * half)
        for (int64_t i = start; i < start + half; ++i) {
          const float a = row[i], b = row[i + half];
          row[i] = a + b;
          row[i + half] = a - b;
        }
  }
}

}  // namespace deltatune::ops
