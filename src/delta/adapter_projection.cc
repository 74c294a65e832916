// Dense, low-rank and PHM (Compacter) adapter projections.
#include "delta/adapter_projection.h"

#include <cmath>

#include "deltatune/error.h"
#include "deltatune/ops.h"

namespace deltatune::delta {

ProjectionKind projection_kind(const std::string& name) {
  if (name == "dense") return ProjectionKind::Dense;
  if (name == "lowrank") return ProjectionKind::LowRank;
  if (name == "phm") return ProjectionKind::Phm;
  throw ConfigError("adapter: unknown projection '" + name + "' (supported: dense, lowrank, phm)");
}

Tensor make_phm_rule(int64_t n, Generator& gen) {
  const float bound = std::sqrt(6.0f / float(n + n));
  return Tensor::uniform({n, n, n}, gen, -bound, bound);
}

Projection make_projection(const ProjectionShape& shape, int64_t out, int64_t in, bool zero_output,
                           Generator& gen, const Tensor& rule) {
  Projection p;
  const float bound = 1.0f / std::sqrt(float(in));
  switch (shape.kind) {
    case ProjectionKind::Dense:
      p.weight = zero_output ? Tensor::zeros({out, in}) : Tensor::uniform({out, in}, gen, -bound, bound);
      break;
    case ProjectionKind::LowRank: {
      const int64_t r = shape.rank;
      // L R keeps a dense weight's scale: R ~ U(±1/sqrt(in)), L ~ U(±1/sqrt(r)).
      const float lb = 1.0f / std::sqrt(float(r));
      p.left = zero_output ? Tensor::zeros({out, r}) : Tensor::uniform({out, r}, gen, -lb, lb);
      p.right = Tensor::uniform({r, in}, gen, -bound, bound);
      break;
    }
    case ProjectionKind::Phm: {
      const int64_t n = shape.phm_dim, r = shape.rank;
      if (out % n != 0 || in % n != 0)
        throw ConfigError("adapter: phm_dim " + std::to_string(n) + " must divide the projection's sizes (" +
                          std::to_string(out) + " x " + std::to_string(in) +
                          "); choose another phm_dim or bottleneck");
      const float lb = 1.0f / std::sqrt(float(r)), rb = 1.0f / std::sqrt(float(in / n));
      p.left = zero_output ? Tensor::zeros({n, out / n, r}) : Tensor::uniform({n, out / n, r}, gen, -lb, lb);
      p.right = Tensor::uniform({n, r, in / n}, gen, -rb, rb);
      p.shared_rule = rule.defined();
      p.rule = rule.defined() ? rule : make_phm_rule(n, gen);
      if (p.rule.shape() != Shape{n, n, n})
        throw ConfigError("adapter: the PHM rule must be [n, n, n] with n = phm_dim " + std::to_string(n));
      break;
    }
  }
  p.bias = zero_output ? Tensor::zeros({out}) : Tensor::uniform({out}, gen, -bound, bound);
  return p;
}

Tensor Projection::materialise() const {
  if (weight.defined()) return weight;
  if (!rule.defined()) return ops::matmul(left, right);  // low-rank
  // sum_i kron(A_i, B_i): element (a*p + i, b*q + j) of term k is A_k[a, b] * B_k[i, j].
  const int64_t n = rule.size(0), p = left.size(1), q = right.size(2);
  Tensor b = ops::matmul(left, right);  // [n, p, q]
  Tensor terms = ops::mul(ops::reshape(rule, {n, n, 1, n, 1}), ops::reshape(b, {n, 1, p, 1, q}));
  return ops::reshape(ops::sum(terms, {0}), {n * p, n * q});
}

void Projection::append_parameters(const std::string& prefix,
                                   std::vector<std::pair<std::string, Tensor>>& out) const {
  if (weight.defined()) out.emplace_back(prefix + ".weight", weight);
  if (left.defined()) out.emplace_back(prefix + ".weight_left", left);
  if (right.defined()) out.emplace_back(prefix + ".weight_right", right);
  if (rule.defined() && !shared_rule) out.emplace_back(prefix + ".phm_rule", rule);
  out.emplace_back(prefix + ".bias", bias);
}

}  // namespace deltatune::delta
