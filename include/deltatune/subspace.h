#pragma once
// A shared intrinsic subspace (Qin et al.'s IPT idea): the trained deltas of one method on several
// tasks, flattened to vectors, span a low-dimensional subspace in which a new task can be tuned with
// d numbers. IPT learns it with an auto-encoder; this is the simple variant, PCA: with the handful of
// deltas one has (fewer than the dimension of the delta by orders of magnitude) the auto-encoder has
// little to learn from, while PCA is closed-form, deterministic and optimal among linear subspaces
// for reconstruction. So
//   theta = mean + basis^T z,   basis [d, n] the top d principal directions (orthonormal rows)
// and `{"method": "intrinsic", "subspace": DIR}` trains z alone (src/delta/intrinsic.cc).
//
//   Subspace s = fit_subspace({"runs/a/delta", "runs/b/delta", "runs/c/delta"}, 2);
//   save_subspace("subspaces/lora", s);   // subspace.json + subspace.safetensors
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "deltatune/tensor.h"

namespace deltatune::delta {

struct Subspace {
  nlohmann::json delta_config;                        // the deltas' method and sizes (their config)
  std::vector<std::pair<std::string, Shape>> layout;  // parameter names and shapes, in flattened order
  Tensor mean;                                        // [n]: the deltas' mean
  Tensor basis;                                       // [d, n]: orthonormal principal directions
  std::vector<double> singular_values;                // [d], of the centred deltas
  std::vector<std::string> sources;                   // the delta folders it was fitted on
  int64_t dim() const { return basis.defined() ? basis.size(0) : 0; }
};

// PCA (LAPACK's SVD) over the saved deltas in `delta_dirs` (our format, one method and one set of
// parameter shapes; task heads left out). dim is at most the number of deltas less one (the rank of
// the centred set). Errors name the folder and what differs.
Subspace fit_subspace(const std::vector<std::filesystem::path>& delta_dirs, int64_t dim);
void save_subspace(const std::filesystem::path& dir, const Subspace& subspace);
Subspace load_subspace(const std::filesystem::path& dir);

}  // namespace deltatune::delta
