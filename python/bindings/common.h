#pragma once
// What the binding files share: the model a Python `Model` holds (ModelState), a delta handle
// (DeltaRef), JSON <-> Python conversion, tensors as numpy arrays, and the bind_* entry points each
// file defines. The module (module.cc) calls every bind_* once.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "deltatune/data.h"
#include "deltatune/delta.h"
#include "deltatune/model.h"
#include "deltatune/tensor.h"
#include "deltatune/tokenizer.h"

namespace deltatune::python {
namespace py = pybind11;

// A loaded model and what is attached to it. Python's Model and every Delta handle of it share one.
struct ModelState {
  std::filesystem::path model_dir;
  std::string task;                   // classification, causal-lm, masked-lm (from the head)
  std::optional<int64_t> num_labels;  // as load_model was asked (train checks the data against it)
  std::unique_ptr<TransformerModel> model;
  // Deltas in attach order; a merged one stays here, detached (handles index into this list).
  std::vector<std::unique_ptr<delta::Delta>> deltas;
  std::vector<bool> merged;
  // What each delta was attached from: its method name and the config as given (null: the method
  // table's). train rebuilds the delta from these, as `deltatune train --method --delta-config` does.
  std::vector<std::string> methods;
  std::vector<nlohmann::json> sources;
  std::vector<std::string> trained_parameters;  // model tensors trained with the deltas (the head)
  data::LabelMap labels;                        // a classifier's classes (empty: "0".."n-1")
  int64_t max_length = 128;                     // what texts are cut to (a trained run's)
  // The folder's weights plus fresh deltas only. train starts from the folder and fresh deltas, so it
  // refuses a model that holds trained weights (a loaded, merged or trained delta) it would not keep.
  bool pristine = true;

  ~ModelState() { deltas.clear(); }               // hooks go before the model they are attached to
  const Tokenizer& tokenizer();                   // the model folder's, loaded on first use
  std::shared_ptr<Tokenizer> shared_tokenizer();  // the same, for a Python handle
  std::vector<delta::Delta*> attached();          // deltas not merged
  data::LabelMap class_names();                   // labels, or "0".."n-1" for an untrained classifier
  std::pair<int64_t, int64_t> freeze();           // (trainable, total), PEFT's way of counting

 private:
  std::shared_ptr<Tokenizer> tokenizer_;
};

// Python's Delta: one delta of a model (by index), or a combination not yet attached (`pending`).
struct DeltaRef {
  std::shared_ptr<ModelState> owner;
  size_t index = 0;
  nlohmann::json pending_config;                 // combine()'s result: its LoRA config ...
  std::map<std::string, Tensor> pending_values;  // ... and parameters, for attach()
  bool pending() const { return owner == nullptr; }
  delta::Delta& get() const;  // ValueError for a pending or merged delta
};

nlohmann::json to_json(py::handle value);
py::object to_python(const nlohmann::json& value);
// A tensor as a numpy array over the same memory when it is contiguous float32/int (the array keeps
// the tensor alive), else over a float32 copy.
py::array to_numpy(const Tensor& tensor);
// An int64 tensor [B, T] from any integer array-like.
Tensor ids_tensor(py::handle array, const char* what);
// FileNotFoundError naming `what` when `path` does not exist.
void require_exists(const std::filesystem::path& path, const std::string& what);

void bind_errors(py::module_& m);
void bind_tensor(py::module_& m);
void bind_tokenizer(py::module_& m);
void bind_model(py::module_& m);
void bind_delta(py::module_& m);
void bind_training(py::module_& m);
void bind_inference(py::module_& m);

}  // namespace deltatune::python
