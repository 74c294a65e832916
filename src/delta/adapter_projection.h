#pragma once
// The weight of an adapter's down- or up-projection, made one of three ways:
//   dense    W [out, in] stored as is (Houlsby, Pfeiffer, parallel adapters)
//   lowrank  W = L R with L [out, r], R [r, in] (the low-rank adapter of the Compacter paper)
//   phm      W = sum_i A_i ⊗ B_i, a parameterised hypercomplex multiplication layer (Compacter):
//            n rule matrices A_i [n, n] (shared by every adapter of the delta when shared_phm_rule)
//            and B_i [out/n, in/n] = s_i t_i, factorised to rank r.
// Projections whose output must start at zero (the up-projection) zero their left factor.
#include <string>
#include <utility>
#include <vector>

#include "deltatune/random.h"
#include "deltatune/tensor.h"

namespace deltatune::delta {

enum class ProjectionKind { Dense, LowRank, Phm };
ProjectionKind projection_kind(const std::string& name);  // "dense", "lowrank", "phm"; ConfigError else

struct ProjectionShape {
  ProjectionKind kind = ProjectionKind::Dense;
  int64_t rank = 1;     // lowrank and phm factors
  int64_t phm_dim = 4;  // n
};

struct Projection {
  Tensor weight;       // dense
  Tensor left, right;  // lowrank: [out, r], [r, in]; phm: [n, out/n, r], [n, r, in/n]
  Tensor rule;         // phm: [n, n, n]; possibly shared with other projections
  bool shared_rule = false;
  Tensor bias;  // [out]

  // The [out, in] weight (recorded, so gradients reach the factors).
  Tensor materialise() const;
  // Own parameters under `prefix` ("<module>.adapter.down"): a shared rule is listed by its owner.
  void append_parameters(const std::string& prefix, std::vector<std::pair<std::string, Tensor>>& out) const;
};

// A fresh projection [out, in]: torch's Linear initialisation for dense weights and biases, scaled
// uniform factors otherwise; `zero_output` starts it at zero (the adapter is then the identity).
// `rule` is the shared PHM rule to use (undefined: a projection-local one is created).
Projection make_projection(const ProjectionShape& shape, int64_t out, int64_t in, bool zero_output,
                           Generator& gen, const Tensor& rule = Tensor());
// A PHM rule tensor [n, n, n] (Glorot-uniform).
Tensor make_phm_rule(int64_t n, Generator& gen);

}  // namespace deltatune::delta
