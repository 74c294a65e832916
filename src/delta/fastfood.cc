#include "delta/fastfood.h"

#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "deltatune/error.h"
#include "deltatune/ops.h"
#include "deltatune/random.h"

namespace deltatune::delta {

FastfoodProjection::FastfoodProjection(int64_t dim, int64_t size, uint64_t seed) : dim_(dim), size_(size) {
  if (dim < 1 || size < 1)
    throw ConfigError("fastfood: needs a positive dimension and size, got " + std::to_string(dim) + " and " +
                      std::to_string(size));
  padded_ = 1;
  while (padded_ < std::max(dim, size)) padded_ *= 2;
  Generator gen(seed);
  const size_t length = size_t(padded_);
  std::vector<float> signs(length), gaussian(length);
  for (float& s : signs) s = gen.uniform() < 0.5f ? -1.0f : 1.0f;
  std::vector<int64_t> perm(length);
  std::iota(perm.begin(), perm.end(), int64_t(0));
  for (int64_t i = padded_ - 1; i > 0; --i)
    std::swap(perm[size_t(i)], perm[size_t(gen.below(uint64_t(i + 1)))]);
  double squares = 0;
  for (float& g : gaussian) {
    g = gen.normal();
    squares += double(g) * g;
  }
  signs_ = Tensor::from_floats(signs, {padded_});
  gaussian_ = Tensor::from_floats(gaussian, {padded_});
  permutation_ = Tensor::from_ints(perm, {padded_});
  scale_ = float(std::sqrt(double(size) / double(padded_)) / std::sqrt(double(padded_) * squares));
}

Tensor FastfoodProjection::apply(const Tensor& z) const {
  if (z.dim() != 1 || z.size(0) != dim_)
    throw ShapeError("fastfood: z must be [" + std::to_string(dim_) + "], got " + shape_str(z.shape()));
  Tensor x = dim_ < padded_ ? ops::concat({z, Tensor::zeros({padded_ - dim_})}, 0) : z;
  x = ops::hadamard_transform(ops::mul(x, signs_));
  x = ops::embedding(x.reshape({padded_, 1}), permutation_).reshape({padded_});  // Π: a row gather
  x = ops::hadamard_transform(ops::mul(x, gaussian_));
  return ops::mul_scalar(x.slice(0, 0, size_), scale_);
}

}  // namespace deltatune::delta
