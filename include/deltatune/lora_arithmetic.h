#pragma once
// LoRA arithmetic: several LoRA deltas combined into one, with the semantics of PEFT's
// LoraModel.add_weighted_adapter (PEFT 0.17+), so a combination made here equals PEFT's:
//
//   cat        A = [w_1 s_1 A_1; w_2 s_2 A_2; ...] (rows), B = [B_1, B_2, ...] (columns): rank = sum of
//              ranks, and ΔW = Σ w_i s_i B_i A_i exactly.
//   linear     A = Σ sign(w_i) sqrt(|w_i s_i|) A_i, B = Σ sqrt(|w_i s_i|) B_i (the same rank required).
//              Not the weighted sum of the ΔW's: cross terms B_i A_j remain (as in PEFT).
//   ties, dare_linear, dare_ties, magnitude_prune
//              the same per-factor weights, with PEFT's merge of the A's (and of the B's) element-wise:
//              magnitude pruning to `density` (ties, magnitude_prune), random pruning (DARE), TIES' sign
//              election ("total": sign of the sum, "frequency": sign of the count) and disjoint mean.
//   svd        ΔW = Σ w_i s_i ΔW_i with ΔW_i = s_i B_i A_i as PEFT's get_delta_weight returns it (so a
//              scaling s_i != 1 counts twice, exactly as PEFT does), then a truncated SVD to `svd_rank`
//              (default: the largest input rank): B = U_r S_r, A = V_r^T.
//   ties_svd, dare_linear_svd, dare_ties_svd, magnitude_prune_svd
//              the element-wise merge applied to the weighted ΔW_i, then the truncated SVD.
// s_i is each adapter's alpha/r (alpha/sqrt(r) with rsLoRA) for that module. The result has
// alpha = r (scaling 1), no rank or alpha patterns, and targets the union of the inputs' modules; a
// module missing from an adapter simply has no contribution from it. DoRA adapters are refused.
//
// Random pruning (DARE) draws its masks from our seeded generator (reproducible, not torch's
// numbers). PEFT's random_pruning computes the 1/density rescale but discards it, so by default the
// kept values are not rescaled either; dare_rescale = true divides them by density as the DARE paper does.
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "deltatune/delta.h"
#include "deltatune/tensor.h"

namespace deltatune::delta {

// A LoRA's factors per target module: A [r, in], B [out, r], and its scaling (alpha / r). On an
// embedding table (PEFT's lora_embedding_A [r, vocab] and lora_embedding_B [dim, r]) in = vocab and
// out = dim, so the arithmetic below treats both alike, as PEFT's add_weighted_adapter does.
struct LoraFactors {
  Tensor A, B;
  double scaling = 1.0;
  Tensor magnitude;        // DoRA's magnitude vector [out]; undefined for plain LoRA
  bool embedding = false;  // the factors of an embedding table
};
// The factors of each linear layer an attached LoRA (or DoRA) delta adapts: its own tensors, not
// copies, with rank/alpha patterns and rsLoRA applied to the scaling. LoRA on embedding tables
// (lora_embedding_A/B) is not included.
std::map<std::string, LoraFactors> lora_factors(Delta& lora);
// The same for the embedding tables it adapts (embedding = true).
std::map<std::string, LoraFactors> lora_embedding_factors(Delta& lora);
struct LoraWeights {
  nlohmann::json config;                       // the delta's config (ours)
  int64_t r = 0;                               // the config's rank
  std::map<std::string, LoraFactors> modules;  // module path -> factors
};
// Reads an attached LoRA delta's factors (copies), embedding tables included. Throws ConfigError for
// other methods and DoRA.
LoraWeights lora_weights(Delta& lora);

struct CombineOptions {
  std::string type = "svd";         // combination_types()
  std::optional<int64_t> svd_rank;  // svd types: the target rank (default: the largest input rank)
  std::optional<double> svd_clamp;  // svd types: clamp U S and V^T to this quantile of their values
  double density = 1.0;             // pruning types: the fraction of values kept (>= 1: no pruning)
  std::string majority_sign_method = "total";  // "total" or "frequency"
  uint64_t seed = 0;                           // DARE's random masks
  bool dare_rescale = false;  // DARE: divide kept values by density (PEFT effectively does not)
};
const std::vector<std::string>& combination_types();

struct CombinedLora {
  nlohmann::json config;  // our LoRA config: r, alpha = r, targets (module paths)
  int64_t r = 0;
  std::map<std::string, LoraFactors> modules;
  // The parameters by PEFT's names (<path>.lora_A.weight, <path>.lora_B.weight; an embedding table's
  // <path>.lora_embedding_A, <path>.lora_embedding_B), for load_parameters.
  std::map<std::string, Tensor> parameters() const;
};
// Combines LoRAs (one weight each). Throws ConfigError on bad options, rank mismatches that the type
// does not allow, or factor shapes that disagree between adapters.
CombinedLora combine_loras(const std::vector<LoraWeights>& loras, const std::vector<double>& weights,
                           const CombineOptions& options);

// The element-wise merges (PEFT's merge_utils) on same-shaped float tensors, exposed for tests.
Tensor magnitude_prune_tensor(const Tensor& t, double density);
Tensor random_prune_tensor(const Tensor& t, double density, bool rescale, uint64_t seed);
Tensor merge_task_tensors(const std::string& method, const std::vector<Tensor>& tensors,
                          const std::vector<double>& weights, double density,
                          const std::string& majority_sign_method, uint64_t seed, bool dare_rescale);

// Truncated SVD of a float matrix M [m, n] (LAPACK's sgesdd, as torch.linalg.svd): M ≈ U_k diag(S_k) V_k^T.
// Returns {U_k S_k [m, k], V_k^T [k, n]} with singular values in decreasing order.
std::pair<Tensor, Tensor> truncated_svd(const Tensor& m, int64_t k);

}  // namespace deltatune::delta
