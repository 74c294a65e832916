// The extension module deltatune._deltatune; the package's __init__.py re-exports it with the pure-Python
// parts (data in memory, DeltaConfig, TrainResult).
#include "common.h"
#include "deltatune/error.h"
#include "deltatune/runtime.h"
#include "deltatune/threads.h"

namespace deltatune::python {
namespace {

void set_runtime(std::optional<int> threads, std::optional<std::string> matmul_precision) {
  RuntimeSettings settings;
  settings.threads = threads;
  if (matmul_precision) {
    if (*matmul_precision == "exact")
      settings.matmul_precision = ops::MatmulPrecision::Exact;
    else if (*matmul_precision == "bf16")
      settings.matmul_precision = ops::MatmulPrecision::Bf16;
    else
      throw ConfigError("matmul_precision must be 'exact' or 'bf16', got '" + *matmul_precision + "'");
  }
  apply(settings);
}

py::dict get_runtime() {
  const RuntimeSettings now = runtime_settings();
  py::dict out;
  out["threads"] = now.threads;
  out["matmul_precision"] = now.matmul_precision == ops::MatmulPrecision::Bf16 ? "bf16" : "exact";
  return out;
}

}  // namespace
}  // namespace deltatune::python

PYBIND11_MODULE(_deltatune, m) {
  using namespace deltatune::python;
  m.doc() = "deltatune's library: models, deltas, training, generation (see the deltatune package).";
  m.attr("__version__") = DELTATUNE_VERSION;
  bind_errors(m);
  bind_tensor(m);
  bind_tokenizer(m);
  bind_model(m);
  bind_delta(m);
  bind_training(m);
  bind_inference(m);
  m.def("set_runtime", &set_runtime, py::arg("threads") = py::none(),
        py::arg("matmul_precision") = py::none(),
        "Process-wide settings (deltatune/runtime.h): compute threads, and 'exact' or 'bf16' matrix products "
        "(bf16 needs AVX-512 BF16). Unset arguments are left as they are.");
  m.def("runtime", &get_runtime, "The process-wide settings in force: {'threads', 'matmul_precision'}.");
}
