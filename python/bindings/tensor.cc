// deltatune.Tensor: a library tensor seen from Python. It exposes the buffer protocol, so
// numpy.asarray(t) (and t.numpy()) views its memory without a copy; bfloat16 converts to float32.
#include "common.h"
#include "deltatune/error.h"

namespace deltatune::python {
namespace {

const char* buffer_format(DType t) {
  switch (t) {
    case DType::F32:
      return "f";
    case DType::F16:
      return "e";
    case DType::I32:
      return "i";
    case DType::I64:
      return "q";
    default:
      throw py::buffer_error("a bfloat16 tensor has no buffer format: use .numpy() (a float32 copy)");
  }
}

py::buffer_info tensor_buffer(Tensor& t) {
  if (t.device() != Device::CPU) throw py::buffer_error("only CPU tensors expose their memory");
  const py::ssize_t item = py::ssize_t(dtype_size(t.dtype()));
  std::vector<py::ssize_t> shape(t.shape().begin(), t.shape().end()), strides;
  for (int64_t s : t.strides()) strides.push_back(py::ssize_t(s) * item);
  return py::buffer_info(static_cast<char*>(t.storage()->data) + t.offset() * item, item,
                         buffer_format(t.dtype()), t.dim(), shape, strides, /*readonly=*/false);
}

}  // namespace

void bind_tensor(py::module_& m) {
  py::class_<Tensor>(m, "Tensor", py::buffer_protocol(),
                     "A tensor of the library (a model's or a delta's weights). numpy.asarray(t) and "
                     "t.numpy() share its memory; .shape and .dtype describe it.")
      .def_buffer(&tensor_buffer)
      .def(
          "numpy", [](const Tensor& t) { return to_numpy(t); },
          "The values as a numpy array, sharing memory where the layout allows (bfloat16: a float32 copy).")
      .def_property_readonly(
          "shape", [](const Tensor& t) { return py::tuple(py::cast(t.shape())); }, "The sizes, as a tuple.")
      .def_property_readonly(
          "dtype", [](const Tensor& t) { return std::string(dtype_name(t.dtype())); },
          "The element type's name: float32, float16, bfloat16, int32, int64.")
      .def_property_readonly("requires_grad", &Tensor::requires_grad, "Whether training updates it.")
      .def("__len__", [](const Tensor& t) { return t.dim() == 0 ? 0 : t.size(0); })
      .def(
          "__array__",
          [](const Tensor& t, py::object dtype) {
            py::array a = to_numpy(t);
            return dtype.is_none() ? a : py::array(a.attr("astype")(dtype));
          },
          py::arg("dtype") = py::none())
      .def("__repr__", [](const Tensor& t) { return "deltatune.Tensor(" + t.describe() + ")"; });
}

}  // namespace deltatune::python
