#pragma once
// The Fastfood transform (Le et al., 2013), the random projection of Li et al. (2018) and Aghajanyan
// et al. (2021) use to give a d-dimensional vector z an n-dimensional image without an n x d matrix:
//   P z = c · (H G Π H B [z; 0])[:n],   c = sqrt(n / L) / sqrt(L · Σ G²)
// with L the power of two at or above max(n, d), H the Walsh-Hadamard transform, B random signs, Π a
// random permutation and G Gaussian diagonal scales, all drawn from one seed. Memory is O(L): three
// vectors of length L, never the matrix; applying it costs O(L log L) and is recorded for backward.
#include <cstdint>

#include "deltatune/tensor.h"

namespace deltatune::delta {

class FastfoodProjection {
 public:
  // z of `dim` numbers to `size` numbers; the same (dim, size, seed) gives the same projection.
  FastfoodProjection(int64_t dim, int64_t size, uint64_t seed);
  // z [dim] -> P z [size], recorded when z requires grad.
  Tensor apply(const Tensor& z) const;
  int64_t dim() const { return dim_; }
  int64_t size() const { return size_; }

 private:
  int64_t dim_, size_, padded_;
  Tensor signs_, gaussian_;  // B, G: [L]
  Tensor permutation_;       // Π: int64 [L]
  float scale_ = 1;          // c
};

}  // namespace deltatune::delta
