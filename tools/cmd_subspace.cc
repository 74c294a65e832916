// deltatune subspace fit --deltas A B C ... --dim D --out DIR : fits a shared intrinsic subspace (PCA
// over the flattened trained deltas of one method, deltatune/subspace.h) and saves it, for
// `{"method": "intrinsic", "subspace": DIR}` to tune d coordinates on a new task.
#include <cstdio>
#include <filesystem>
#include <memory>

#include "command.h"
#include "deltatune/run_folder.h"
#include "deltatune/subspace.h"

namespace {
using namespace deltatune;
namespace fs = std::filesystem;

struct FitOptions {
  std::vector<std::string> deltas;
  int64_t dim = 0;
  std::string out;
  bool overwrite = false;
};

void fit(const FitOptions& o) {
  if (holds_files(o.out) && !o.overwrite)
    throw cli::ExitError{"--out '" + o.out + "' exists and is not empty (pass --overwrite to replace it)"};
  check_writable_folder(o.out, "--out");
  std::vector<fs::path> dirs(o.deltas.begin(), o.deltas.end());
  delta::Subspace s = delta::fit_subspace(dirs, o.dim);
  delta::save_subspace(o.out, s);
  std::printf("subspace of %lld directions over %lld numbers (%s) from %zu deltas -> %s\n",
              (long long)s.dim(), (long long)s.mean.numel(), s.delta_config.value("method", "?").c_str(),
              dirs.size(), o.out.c_str());
  std::printf("singular values:");
  for (double v : s.singular_values) std::printf(" %.4g", v);
  std::printf("\nuse it with: {\"method\": \"intrinsic\", \"subspace\": \"%s\"}\n", o.out.c_str());
}

void setup(CLI::App& app) {
  app.require_subcommand(1);
  auto o = std::make_shared<FitOptions>();
  CLI::App* f = app.add_subcommand("fit", "PCA over trained deltas of one method: a d-dimensional basis");
  f->add_option("--deltas", o->deltas, "Delta folders written by `deltatune train` (one method and size)")
      ->required()
      ->expected(2, 1 << 20);
  f->add_option("--dim", o->dim, "Directions to keep (at most the number of deltas less one)")
      ->required()
      ->check(CLI::Range(int64_t(1), int64_t(1) << 30));
  f->add_option("--out,--output", o->out, "Folder to write subspace.json and subspace.safetensors to")
      ->required();
  f->add_flag("--overwrite", o->overwrite, "Replace the files in a non-empty --out");
  f->callback([o] { fit(*o); });
}
deltatune::cli::Register reg("subspace", "Fit a shared intrinsic subspace from several trained deltas",
                             setup);
}  // namespace
