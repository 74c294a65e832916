// The shared pieces of the binding (common.h): the model state, JSON and numpy conversions.
#include "common.h"

#include "deltatune/error.h"

namespace deltatune::python {
namespace fs = std::filesystem;

const Tokenizer& ModelState::tokenizer() { return *shared_tokenizer(); }

std::shared_ptr<Tokenizer> ModelState::shared_tokenizer() {
  if (!tokenizer_) tokenizer_ = Tokenizer::load(model_dir);
  return tokenizer_;
}

std::vector<delta::Delta*> ModelState::attached() {
  std::vector<delta::Delta*> out;
  for (size_t i = 0; i < deltas.size(); ++i)
    if (!merged[i]) out.push_back(deltas[i].get());
  return out;
}

data::LabelMap ModelState::class_names() {
  if (labels.size() > 0 || !model || model->head != HeadKind::SequenceClassification) return labels;
  std::vector<std::string> names;
  for (int64_t i = 0; i < model->config.num_labels; ++i) names.push_back(std::to_string(i));
  return data::LabelMap(names, /*integer_labels=*/true);
}

std::pair<int64_t, int64_t> ModelState::freeze() {
  const std::vector<delta::Delta*> on = attached();
  if (!on.empty()) return delta::freeze_for_delta(*model, on, trained_parameters);
  // No delta: a plain model, every weight trainable (as PEFT counts a model it has not wrapped).
  int64_t total = 0;
  for (auto& [name, t] : model->named_parameters()) total += t->numel();
  return {total, total};
}

delta::Delta& DeltaRef::get() const {
  if (pending())
    throw ConfigError("this delta (a combination) is not attached to a model yet: dt.attach(model, delta)");
  if (index >= owner->deltas.size())
    throw ConfigError("this delta is no longer on its model (a later train replaced the model's deltas)");
  if (owner->merged[index]) throw ConfigError("this delta was merged into its model's weights");
  return *owner->deltas[index];
}

nlohmann::json to_json(py::handle v) {
  if (v.is_none()) return nullptr;
  if (py::isinstance<py::bool_>(v)) return v.cast<bool>();
  if (py::isinstance<py::int_>(v)) return v.cast<int64_t>();
  if (py::isinstance<py::float_>(v)) return v.cast<double>();
  if (py::isinstance<py::str>(v)) return v.cast<std::string>();
  if (py::isinstance<py::dict>(v)) {
    nlohmann::json out = nlohmann::json::object();
    for (auto [key, value] : v.cast<py::dict>()) out[py::str(key).cast<std::string>()] = to_json(value);
    return out;
  }
  if (py::isinstance<py::list>(v) || py::isinstance<py::tuple>(v)) {
    nlohmann::json out = nlohmann::json::array();
    for (auto item : v) out.push_back(to_json(item));
    return out;
  }
  if (py::hasattr(v, "item")) return to_json(v.attr("item")());  // numpy scalars
  throw py::type_error("cannot convert a " + py::str(v.get_type()).cast<std::string>() + " to JSON");
}

py::object to_python(const nlohmann::json& v) {
  switch (v.type()) {
    case nlohmann::json::value_t::null:
      return py::none();
    case nlohmann::json::value_t::boolean:
      return py::bool_(v.get<bool>());
    case nlohmann::json::value_t::number_integer:
      return py::int_(v.get<int64_t>());
    case nlohmann::json::value_t::number_unsigned:
      return py::int_(v.get<uint64_t>());
    case nlohmann::json::value_t::number_float:
      return py::float_(v.get<double>());
    case nlohmann::json::value_t::string:
      return py::str(v.get<std::string>());
    case nlohmann::json::value_t::array: {
      py::list out;
      for (const auto& item : v) out.append(to_python(item));
      return out;
    }
    case nlohmann::json::value_t::object: {
      py::dict out;
      for (const auto& [key, value] : v.items()) out[py::str(key)] = to_python(value);
      return out;
    }
    default:
      return py::none();
  }
}

namespace {
py::dtype numpy_dtype(DType t) {
  switch (t) {
    case DType::F32:
      return py::dtype::of<float>();
    case DType::I32:
      return py::dtype::of<int32_t>();
    case DType::I64:
      return py::dtype::of<int64_t>();
    default:
      return py::dtype("float16");
  }
}
}  // namespace

py::array to_numpy(const Tensor& tensor) {
  if (tensor.device() != Device::CPU) throw ConfigError("only CPU tensors convert to numpy");
  // bfloat16 has no numpy dtype: its values come as float32.
  Tensor t = tensor.dtype() == DType::BF16 ? tensor.float32() : tensor;
  t = t.detach();
  if (!t.is_contiguous()) t = t.contiguous().detach();
  std::vector<py::ssize_t> shape(t.shape().begin(), t.shape().end()), strides;
  const py::ssize_t item = py::ssize_t(dtype_size(t.dtype()));
  for (int64_t s : t.strides()) strides.push_back(py::ssize_t(s) * item);
  auto* keep = new Tensor(t);  // the array's base owns a handle on the storage: no copy
  py::capsule base(keep, [](void* p) { delete static_cast<Tensor*>(p); });
  return py::array(numpy_dtype(t.dtype()), shape, strides,
                   static_cast<const char*>(t.storage()->data) + t.offset() * item, base);
}

Tensor ids_tensor(py::handle array, const char* what) {
  auto ids = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(array);
  if (!ids) throw py::type_error(std::string(what) + " must be an integer array [batch, tokens]");
  if (ids.ndim() == 1) ids = ids.reshape({py::ssize_t(1), ids.shape(0)});
  if (ids.ndim() != 2 || ids.shape(1) == 0)
    throw py::value_error(std::string(what) + " must be 2-D [batch, tokens] with at least one token");
  std::vector<int64_t> values(ids.data(), ids.data() + ids.size());
  return Tensor::from_ints(values, {ids.shape(0), ids.shape(1)});
}

void require_exists(const fs::path& path, const std::string& what) {
  if (!fs::exists(path)) {
    const std::string message = what + " '" + path.string() + "' does not exist";
    PyErr_SetObject(PyExc_FileNotFoundError,
                    py::make_tuple(2, message, path.string()).ptr());  // errno 2: ENOENT
    throw py::error_already_set();
  }
}

}  // namespace deltatune::python
