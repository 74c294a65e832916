// PCA over trained deltas (deltatune/subspace.h): the deltas as rows of X [K, n], centred, and the top
// right singular vectors of the centred X (LAPACK's sgesdd through truncated_svd) as the basis.
#include "deltatune/subspace.h"

#include <cmath>
#include <set>

#include "deltatune/atomic_file.h"
#include "deltatune/config_file.h"
#include "deltatune/error.h"
#include "deltatune/lora_arithmetic.h"
#include "deltatune/safetensors.h"

namespace deltatune::delta {
namespace fs = std::filesystem;
namespace {

// One saved delta's own tensors (its task head left out), by name, and its config.
struct SavedTensors {
  nlohmann::json config;
  std::map<std::string, Tensor> tensors;
};

SavedTensors read_saved(const fs::path& dir) {
  const fs::path config_file = dir / "delta_config.json";
  if (!fs::exists(config_file))
    throw IoError(dir.string() + ": not a delta folder of ours (no delta_config.json)");
  const nlohmann::json c = read_config_file(config_file);
  if (!c.contains("delta") || !c["delta"].is_object())
    throw IoError(config_file.string() + ": missing the 'delta' object");
  std::set<std::string> head;
  if (c.contains("head_parameters") && c["head_parameters"].is_array())
    for (const auto& n : c["head_parameters"])
      if (n.is_string()) head.insert(n.get<std::string>());
  SavedTensors out;
  out.config = c["delta"];
  out.config.erase("seed");
  for (auto& [name, t] : read_safetensors(dir / "delta.safetensors").tensors)
    if (!head.count(name)) out.tensors[name] = t;
  if (out.tensors.empty()) throw IoError(dir.string() + ": the delta holds no tensors of its own");
  return out;
}

// The delta's tensors in layout order, flattened into one row of floats.
std::vector<float> flatten(const SavedTensors& saved,
                           const std::vector<std::pair<std::string, Shape>>& layout, const fs::path& dir) {
  std::vector<float> row;
  if (saved.tensors.size() != layout.size())
    throw ConfigError(dir.string() + ": holds " + std::to_string(saved.tensors.size()) +
                      " delta tensors where the first delta holds " + std::to_string(layout.size()) +
                      " (a subspace needs deltas of one method and size)");
  for (const auto& [name, shape] : layout) {
    auto it = saved.tensors.find(name);
    if (it == saved.tensors.end())
      throw ConfigError(dir.string() + ": has no tensor '" + name + "' (the first delta has it)");
    if (it->second.shape() != shape)
      throw ConfigError(dir.string() + ": tensor '" + name + "' is " + shape_str(it->second.shape()) +
                        " where the first delta's is " + shape_str(shape));
    std::vector<float> v = it->second.to_floats();
    row.insert(row.end(), v.begin(), v.end());
  }
  return row;
}
}  // namespace

Subspace fit_subspace(const std::vector<fs::path>& delta_dirs, int64_t dim) {
  const int64_t count = int64_t(delta_dirs.size());
  if (count < 2) throw ConfigError("subspace fit: needs at least two deltas, got " + std::to_string(count));
  if (dim < 1 || dim > count - 1)
    throw ConfigError("subspace fit: dim must be between 1 and the number of deltas less one (" +
                      std::to_string(count - 1) + "), got " + std::to_string(dim));
  Subspace s;
  std::vector<std::vector<float>> rows;
  for (const fs::path& dir : delta_dirs) {
    SavedTensors saved = read_saved(dir);
    if (rows.empty()) {
      s.delta_config = saved.config;
      for (auto& [name, t] : saved.tensors) s.layout.emplace_back(name, t.shape());
    } else if (saved.config.value("method", "") != s.delta_config.value("method", "")) {
      throw ConfigError(dir.string() + ": method '" + saved.config.value("method", "") +
                        "' where the first delta's is '" + s.delta_config.value("method", "") + "'");
    }
    rows.push_back(flatten(saved, s.layout, dir));
    s.sources.push_back(fs::absolute(dir).lexically_normal().string());
  }
  const int64_t n = int64_t(rows[0].size());
  std::vector<float> mean(size_t(n), 0.0f), centred(size_t(count * n));
  for (int64_t j = 0; j < n; ++j) {
    double sum = 0;
    for (const auto& r : rows) sum += r[size_t(j)];
    mean[size_t(j)] = float(sum / double(count));
    for (int64_t i = 0; i < count; ++i)
      centred[size_t(i * n + j)] = rows[size_t(i)][size_t(j)] - mean[size_t(j)];
  }
  auto [scores, directions] = truncated_svd(Tensor::from_floats(centred, {count, n}), dim);
  s.mean = Tensor::from_floats(mean, {n});
  s.basis = directions;
  std::vector<float> sc = scores.to_floats();  // U S [count, dim]: column norms are the singular values
  for (int64_t r = 0; r < dim; ++r) {
    double sq = 0;
    for (int64_t i = 0; i < count; ++i) sq += double(sc[size_t(i * dim + r)]) * sc[size_t(i * dim + r)];
    s.singular_values.push_back(std::sqrt(sq));
  }
  return s;
}

void save_subspace(const fs::path& dir, const Subspace& s) {
  fs::create_directories(dir);
  nlohmann::json c;
  c["format"] = "deltatune-subspace";
  c["kind"] = "pca";
  c["dim"] = s.dim();
  c["delta"] = s.delta_config;
  c["layout"] = nlohmann::json::array();
  for (const auto& [name, shape] : s.layout) c["layout"].push_back({{"name", name}, {"shape", shape}});
  c["singular_values"] = s.singular_values;
  c["sources"] = s.sources;
  write_safetensors(dir / "subspace.safetensors", {{"mean", s.mean}, {"basis", s.basis}});
  write_file_atomic(dir / "subspace.json", c.dump(2) + "\n");
}

Subspace load_subspace(const fs::path& dir) {
  const fs::path config_file = dir / "subspace.json";
  if (!fs::exists(config_file))
    throw IoError(dir.string() + ": not a subspace folder (no subspace.json; see `deltatune subspace fit`)");
  const nlohmann::json c = read_config_file(config_file);
  Subspace s;
  try {
    s.delta_config = c.at("delta");
    for (const auto& e : c.at("layout"))
      s.layout.emplace_back(e.at("name").get<std::string>(), e.at("shape").get<Shape>());
    s.singular_values = c.value("singular_values", std::vector<double>{});
    s.sources = c.value("sources", std::vector<std::string>{});
  } catch (const nlohmann::json::exception& e) {
    throw IoError(config_file.string() + ": " + e.what());
  }
  TensorFile f = read_safetensors(dir / "subspace.safetensors");
  if (!f.tensors.count("mean") || !f.tensors.count("basis"))
    throw IoError((dir / "subspace.safetensors").string() + ": needs the tensors 'mean' and 'basis'");
  s.mean = f.tensors["mean"].float32().contiguous();
  s.basis = f.tensors["basis"].float32().contiguous();
  int64_t n = 0;
  for (const auto& [_, shape] : s.layout) n += shape_numel(shape);
  if (s.mean.dim() != 1 || s.mean.size(0) != n || s.basis.dim() != 2 || s.basis.size(1) != n)
    throw IoError((dir / "subspace.safetensors").string() + ": mean " + shape_str(s.mean.shape()) +
                  " and basis " + shape_str(s.basis.shape()) + " do not fit the layout's " +
                  std::to_string(n) + " numbers");
  return s;
}

}  // namespace deltatune::delta
