// LoRA arithmetic with PEFT's add_weighted_adapter semantics (see include/deltatune/lora_arithmetic.h).
#include "deltatune/lora_arithmetic.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

#include "delta/methods.h"
#include "delta/module_names.h"
#include "deltatune/autograd.h"
#include "deltatune/error.h"
#include "deltatune/ops.h"
#include "deltatune/random.h"

namespace deltatune::delta {
namespace {

std::vector<float> values_of(const Tensor& t) {
  Tensor c = t.float32().contiguous();
  return std::vector<float>(c.f32(), c.f32() + c.numel());
}

// A stable 64-bit hash (FNV-1a) for deriving DARE's per-tensor seeds from names.
uint64_t fnv1a(const std::string& s, uint64_t h = 1469598103934665603ull) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

bool is_svd_type(const std::string& t) {
  return t == "svd" || (t.size() > 4 && t.substr(t.size() - 4) == "_svd");
}

// The element-wise merge a type uses ("linear" for plain task arithmetic).
std::string merge_method(const std::string& type) {
  if (type == "svd") return "linear";
  if (is_svd_type(type)) return type.substr(0, type.size() - 4);
  return type;
}

}  // namespace

const std::vector<std::string>& combination_types() {
  static const std::vector<std::string> types = {"svd",
                                                 "linear",
                                                 "cat",
                                                 "ties",
                                                 "ties_svd",
                                                 "dare_ties",
                                                 "dare_linear",
                                                 "dare_ties_svd",
                                                 "dare_linear_svd",
                                                 "magnitude_prune",
                                                 "magnitude_prune_svd"};
  return types;
}

namespace {
// An attached LoRA's tensors grouped by module path, by their name suffixes; scaling from its config.
std::map<std::string, LoraFactors> factors_by_suffix(Delta& lora, const std::string& a_suffix,
                                                     const std::string& b_suffix,
                                                     const std::string& magnitude_suffix, bool embedding) {
  const nlohmann::json config = lora.config();
  std::map<std::string, LoraFactors> out;
  for (auto& [name, t] : lora.parameters()) {
    for (const std::string* s : {&a_suffix, &b_suffix, &magnitude_suffix}) {
      const auto path = strip_suffix(name, *s);
      if (!path) continue;
      LoraFactors& f = out[*path];
      (s == &a_suffix ? f.A : s == &b_suffix ? f.B : f.magnitude) = t;
      f.embedding = embedding;
    }
  }
  for (auto& [path, f] : out) f.scaling = lora_shape(config, path).scaling;
  return out;
}
}  // namespace

std::map<std::string, LoraFactors> lora_factors(Delta& lora) {
  return factors_by_suffix(lora, ".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector", false);
}

std::map<std::string, LoraFactors> lora_embedding_factors(Delta& lora) {
  return factors_by_suffix(lora, ".lora_embedding_A", ".lora_embedding_B", "", true);
}

LoraWeights lora_weights(Delta& lora) {
  if (lora.method() != "lora")
    throw ConfigError("LoRA arithmetic needs LoRA deltas, got a '" + lora.method() + "' delta");
  LoraWeights out;
  out.config = lora.config();
  if (out.config.value("dora", false))
    throw ConfigError("LoRA arithmetic does not combine DoRA deltas (their magnitude vectors do not add)");
  out.r = out.config.value("r", int64_t(8));
  std::map<std::string, LoraFactors> factors = lora_factors(lora);
  factors.merge(lora_embedding_factors(lora));
  for (const auto& path : lora.attached_modules()) {
    auto it = factors.find(path);
    if (it == factors.end() || !it->second.A.defined() || !it->second.B.defined())
      throw Error("lora delta: no factors for module " + path);
    LoraFactors f = it->second;
    f.A = f.A.float32().clone();
    f.B = f.B.float32().clone();
    out.modules[path] = std::move(f);
  }
  if (out.modules.empty()) throw ConfigError("lora delta: it is not attached to any module");
  return out;
}

std::map<std::string, Tensor> CombinedLora::parameters() const {
  std::map<std::string, Tensor> out;
  for (const auto& [path, f] : modules) {
    out[path + (f.embedding ? ".lora_embedding_A" : ".lora_A.weight")] = f.A;
    out[path + (f.embedding ? ".lora_embedding_B" : ".lora_B.weight")] = f.B;
  }
  return out;
}

Tensor magnitude_prune_tensor(const Tensor& t, double density) {
  if (density < 0) throw ConfigError("density must be >= 0, got " + std::to_string(density));
  std::vector<float> v = values_of(t);
  if (density >= 1) return Tensor::from_floats(v, t.shape());
  const size_t k = size_t(density * double(v.size()));  // as PEFT: int(density * numel)
  std::vector<size_t> order(v.size());
  std::iota(order.begin(), order.end(), size_t(0));
  if (k < v.size()) {
    std::nth_element(order.begin(), order.begin() + std::ptrdiff_t(k), order.end(),
                     [&](size_t a, size_t b) { return std::fabs(v[a]) > std::fabs(v[b]); });
    for (size_t i = k; i < order.size(); ++i) v[order[i]] = 0.0f;
  }
  return Tensor::from_floats(v, t.shape());
}

Tensor random_prune_tensor(const Tensor& t, double density, bool rescale, uint64_t seed) {
  if (density < 0) throw ConfigError("density must be >= 0, got " + std::to_string(density));
  std::vector<float> v = values_of(t);
  if (density >= 1) return Tensor::from_floats(v, t.shape());
  Generator gen(seed);
  for (float& x : v) {
    const bool keep = double(gen.uniform()) < density;  // Bernoulli(density)
    x = keep ? (rescale && density > 0 ? float(double(x) / density) : x) : 0.0f;
  }
  return Tensor::from_floats(v, t.shape());
}

Tensor merge_task_tensors(const std::string& method, const std::vector<Tensor>& tensors,
                          const std::vector<double>& weights, double density,
                          const std::string& majority_sign_method, uint64_t seed, bool dare_rescale) {
  if (tensors.empty() || tensors.size() != weights.size()) throw Error("merge: one weight per tensor needed");
  const Shape shape = tensors[0].shape();
  for (const auto& t : tensors)
    if (t.shape() != shape) throw ConfigError("merge: the tensors to merge differ in shape");
  if (majority_sign_method != "total" && majority_sign_method != "frequency")
    throw ConfigError("majority_sign_method must be 'total' or 'frequency', got '" + majority_sign_method +
                      "'");
  const bool magnitude = method == "ties" || method == "magnitude_prune";
  const bool random = method == "dare_linear" || method == "dare_ties";
  const bool elect = method == "ties" || method == "dare_ties";
  if (!magnitude && !random && method != "linear")
    throw ConfigError("merge: unknown method '" + method + "'");

  std::vector<std::vector<float>> task;
  for (size_t i = 0; i < tensors.size(); ++i) {
    Tensor t =
        magnitude ? magnitude_prune_tensor(tensors[i], density)
        : random  ? random_prune_tensor(tensors[i], density, dare_rescale,
                                        seed * 0x9E3779B97F4A7C15ull + uint64_t(i) * 0xBF58476D1CE4E5B9ull + 1)
                  : tensors[i];
    task.push_back(values_of(t));
  }
  const size_t n = task[0].size();
  std::vector<float> out(n, 0.0f);
  for (size_t j = 0; j < n; ++j) {
    if (!elect) {
      double s = 0;
      for (size_t i = 0; i < task.size(); ++i) s += double(task[i][j]) * weights[i];
      out[j] = float(s);
      continue;
    }
    // TIES: the majority sign of the (pruned, unweighted) values, then the mean of the weighted
    // values that agree with it. A zero has sign 0 and never agrees.
    double magnitude_sum = 0;
    for (size_t i = 0; i < task.size(); ++i) {
      const float x = task[i][j];
      magnitude_sum += majority_sign_method == "total" ? double(x) : double((x > 0) - (x < 0));
    }
    const int majority = magnitude_sum >= 0 ? 1 : -1;
    double s = 0;
    int64_t kept = 0;
    for (size_t i = 0; i < task.size(); ++i) {
      const float x = task[i][j];
      if (((x > 0) - (x < 0)) == majority) {
        s += double(x) * weights[i];
        ++kept;
      }
    }
    out[j] = float(s / double(std::max<int64_t>(kept, 1)));
  }
  return Tensor::from_floats(out, shape);
}

// Why LAPACK: the SVD is its divide-and-conquer driver sgesdd (OpenBLAS, which we link, ships it).
// A 4096 x 4096 layer's delta takes ~20 CPU seconds, where the hand-written one-sided Jacobi SVD this
// replaces took ~30 CPU minutes (O(n^3) per sweep, single-threaded). It is also what torch.linalg.svd
// calls on the CPU, in single precision like PEFT's float32 delta, so the combination follows PEFT.
extern "C" void sgesdd_(const char* jobz, const int* m, const int* n, float* a, const int* lda, float* s,
                        float* u, const int* ldu, float* vt, const int* ldvt, float* work, const int* lwork,
                        int* iwork, int* info);

std::pair<Tensor, Tensor> truncated_svd(const Tensor& mat, int64_t k) {
  if (mat.dim() != 2) throw Error("truncated_svd: a matrix is needed");
  const int64_t rows = mat.size(0), cols = mat.size(1), mn = std::min(rows, cols), kk = std::min(k, mn);
  std::vector<float> us(size_t(rows * kk), 0.0f), vt(size_t(kk * cols), 0.0f);
  if (kk > 0) {
    // Row-major M is column-major M^T = V S U^T, so LAPACK's "U" [cols, mn] holds V^T's rows (row-major)
    // and its "VT" [mn, rows] holds U's rows.
    std::vector<float> a = values_of(mat), s(static_cast<size_t>(mn)), v(size_t(cols * mn)),
                       u(size_t(mn * rows));
    const int m = int(cols), n = int(rows), ld_u = int(cols), ld_vt = int(mn);
    std::vector<int> iwork(size_t(8 * mn));
    int lwork = -1, info = 0;
    float query = 0;
    sgesdd_("S", &m, &n, a.data(), &m, s.data(), v.data(), &ld_u, u.data(), &ld_vt, &query, &lwork,
            iwork.data(), &info);
    lwork = int(query * 1.001f) + 1;  // the size comes back as a float: allow for its rounding
    std::vector<float> work(size_t(std::max(lwork, 1)));
    sgesdd_("S", &m, &n, a.data(), &m, s.data(), v.data(), &ld_u, u.data(), &ld_vt, work.data(), &lwork,
            iwork.data(), &info);
    if (info != 0) throw Error("truncated_svd: LAPACK sgesdd failed (info " + std::to_string(info) + ")");
    std::copy(v.begin(), v.begin() + kk * cols, vt.begin());
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t r = 0; r < kk; ++r) us[size_t(i * kk + r)] = u[size_t(i * mn + r)] * s[size_t(r)];
  }
  return {Tensor::from_floats(us, {rows, kk}), Tensor::from_floats(vt, {kk, cols})};
}

namespace {

// torch.quantile with linear interpolation.
double quantile(std::vector<float> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double pos = q * double(v.size() - 1);
  const size_t lo = size_t(std::floor(pos)), hi = std::min(v.size() - 1, lo + 1);
  return double(v[lo]) + (pos - double(lo)) * (double(v[hi]) - double(v[lo]));
}

Tensor clamp_tensor(const Tensor& t, double lo, double hi) {
  std::vector<float> v = values_of(t);
  for (float& x : v) x = float(std::clamp(double(x), lo, hi));
  return Tensor::from_floats(v, t.shape());
}

Tensor scaled(const Tensor& t, double s) {
  std::vector<float> v = values_of(t);
  for (float& x : v) x = float(double(x) * s);
  return Tensor::from_floats(v, t.shape());
}

}  // namespace

CombinedLora combine_loras(const std::vector<LoraWeights>& loras, const std::vector<double>& weights,
                           const CombineOptions& o) {
  const auto& types = combination_types();
  if (std::find(types.begin(), types.end(), o.type) == types.end())
    throw ConfigError("unknown combination type '" + o.type +
                      "' (supported: " + nlohmann::json(types).dump() + ")");
  if (loras.empty()) throw ConfigError("combine: no LoRA deltas given");
  if (weights.size() != loras.size())
    throw ConfigError("combine: " + std::to_string(loras.size()) + " deltas but " +
                      std::to_string(weights.size()) + " weights");
  if (o.density < 0 || o.density > 1) throw ConfigError("combine: density must be in [0, 1]");
  if (o.majority_sign_method != "total" && o.majority_sign_method != "frequency")
    throw ConfigError("combine: majority_sign_method must be 'total' or 'frequency'");
  if (o.svd_clamp && (*o.svd_clamp < 0 || *o.svd_clamp > 1))
    throw ConfigError("combine: svd_clamp must be in [0, 1]");
  if (o.svd_rank && *o.svd_rank < 1) throw ConfigError("combine: svd_rank must be at least 1");

  const std::string method = merge_method(o.type);
  int64_t new_rank = 0;
  if (o.type == "cat") {
    for (const auto& l : loras) new_rank += l.r;
  } else if (is_svd_type(o.type)) {
    for (const auto& l : loras) new_rank = std::max(new_rank, l.r);
    if (o.svd_rank) new_rank = *o.svd_rank;
  } else {
    new_rank = loras[0].r;
    for (const auto& l : loras)
      if (l.r != new_rank)
        throw ConfigError("combine: all deltas must have the same rank r for '" + o.type + "' (got " +
                          std::to_string(loras[0].r) + " and " + std::to_string(l.r) + "); use cat or svd");
  }

  std::set<std::string> paths;
  for (const auto& l : loras)
    for (const auto& [p, _] : l.modules) paths.insert(p);

  CombinedLora out;
  out.r = new_rank;
  for (const auto& path : paths) {
    std::vector<const LoraFactors*> fs;
    std::vector<double> w;
    std::vector<size_t> which;
    for (size_t i = 0; i < loras.size(); ++i) {
      auto it = loras[i].modules.find(path);
      if (it == loras[i].modules.end()) continue;
      fs.push_back(&it->second);
      w.push_back(weights[i]);
      which.push_back(i);
    }
    const int64_t in = fs[0]->A.size(1), outf = fs[0]->B.size(0);
    for (const auto* f : fs)
      if (f->A.size(1) != in || f->B.size(0) != outf || f->embedding != fs[0]->embedding)
        throw ConfigError("combine: module " + path +
                          " has different shapes in different deltas (another base model?)");
    const uint64_t module_seed = fnv1a(path, o.seed * 0x9E3779B97F4A7C15ull + 0x1234567ull);
    LoraFactors res;
    res.scaling = 1.0;
    res.embedding = fs[0]->embedding;
    if (o.type == "cat") {
      std::vector<float> A(size_t(new_rank * in), 0.0f), B(size_t(outf * new_rank), 0.0f);
      int64_t row = 0;
      for (size_t i = 0; i < fs.size(); ++i) {
        const int64_t r = fs[i]->A.size(0);
        const std::vector<float> a = values_of(fs[i]->A), b = values_of(fs[i]->B);
        const double s = w[i] * fs[i]->scaling;
        // A module may have a larger rank (rank_pattern) than its config r: fill what fits, as PEFT's
        // slice assignment would fail to; we refuse instead of cutting.
        if (row + r > new_rank)
          throw ConfigError("combine: module " + path + " has more rank than the configs' r sum");
        for (int64_t x = 0; x < r; ++x)
          for (int64_t c = 0; c < in; ++c)
            A[size_t((row + x) * in + c)] = float(double(a[size_t(x * in + c)]) * s);
        for (int64_t o2 = 0; o2 < outf; ++o2)
          for (int64_t x = 0; x < r; ++x) B[size_t(o2 * new_rank + row + x)] = b[size_t(o2 * r + x)];
        row += r;
      }
      res.A = Tensor::from_floats(A, {new_rank, in});
      res.B = Tensor::from_floats(B, {outf, new_rank});
    } else if (!is_svd_type(o.type)) {
      std::vector<Tensor> As, Bs;
      std::vector<double> wa, wb;
      for (size_t i = 0; i < fs.size(); ++i) {
        const double ws = w[i] * fs[i]->scaling;
        const double root = std::sqrt(std::fabs(ws));
        wa.push_back(ws >= 0 ? root : -root);  // the sign on one factor only
        wb.push_back(root);
        As.push_back(fs[i]->A);
        Bs.push_back(fs[i]->B);
        if (fs[i]->A.size(0) != fs[0]->A.size(0))
          throw ConfigError("combine: module " + path +
                            " has different ranks in different deltas; use cat or svd");
      }
      res.A =
          merge_task_tensors(method, As, wa, o.density, o.majority_sign_method, module_seed, o.dare_rescale);
      res.B = merge_task_tensors(method, Bs, wb, o.density, o.majority_sign_method,
                                 module_seed ^ 0xB0B0B0B0ull, o.dare_rescale);
    } else {
      std::vector<Tensor> deltas;
      std::vector<double> ws;
      {
        NoGradGuard no_grad;
        for (size_t i = 0; i < fs.size(); ++i) {
          // PEFT: get_delta_weight (already scaled) times weight * scaling.
          deltas.push_back(scaled(ops::matmul(fs[i]->B, fs[i]->A), fs[i]->scaling));
          ws.push_back(w[i] * fs[i]->scaling);
        }
      }
      Tensor dw = merge_task_tensors(method, deltas, ws, o.density, o.majority_sign_method, module_seed,
                                     o.dare_rescale);
      auto [us, vt] = truncated_svd(dw, new_rank);
      if (o.svd_clamp) {
        std::vector<float> dist = values_of(us);
        const std::vector<float> v2 = values_of(vt);
        dist.insert(dist.end(), v2.begin(), v2.end());
        const double hi = quantile(dist, *o.svd_clamp);
        us = clamp_tensor(us, -hi, hi);
        vt = clamp_tensor(vt, -hi, hi);
      }
      // A matrix smaller than the rank: the extra rank rows stay zero.
      const int64_t got = us.size(1);
      if (got < new_rank) {
        std::vector<float> A(size_t(new_rank * in), 0.0f), B(size_t(outf * new_rank), 0.0f);
        const std::vector<float> a = values_of(vt), b = values_of(us);
        std::copy(a.begin(), a.end(), A.begin());
        for (int64_t o2 = 0; o2 < outf; ++o2)
          for (int64_t x = 0; x < got; ++x) B[size_t(o2 * new_rank + x)] = b[size_t(o2 * got + x)];
        vt = Tensor::from_floats(A, {new_rank, in});
        us = Tensor::from_floats(B, {outf, new_rank});
      }
      res.A = vt;
      res.B = us;
    }
    out.modules[path] = std::move(res);
  }

  // The config: the first delta's, with r = alpha = the new rank and no patterns (as PEFT's replace()).
  nlohmann::json c = loras[0].config;
  c["method"] = "lora";
  c["r"] = new_rank;
  c["alpha"] = double(new_rank);
  c.erase("lora_alpha");
  c.erase("rank_pattern");
  c.erase("alpha_pattern");
  c.erase("layers");
  c.erase("exclude");
  c["targets"] = nlohmann::json(std::vector<std::string>(paths.begin(), paths.end()));
  c["combination"] = {{"type", o.type},
                      {"weights", weights},
                      {"density", o.density},
                      {"majority_sign_method", o.majority_sign_method},
                      {"seed", o.seed}};
  if (o.svd_clamp) c["combination"]["svd_clamp"] = *o.svd_clamp;
  out.config = c;
  return out;
}

}  // namespace deltatune::delta
