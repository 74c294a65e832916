// The library's errors as Python exceptions, each also a builtin one a caller already catches:
// ConfigError and the tensor errors are ValueErrors, IoError an OSError, TrainingDiverged a
// RuntimeError; all derive from deltatune.Error. The message is the library's.
#include "common.h"
#include "deltatune/error.h"
#include "deltatune/trainer.h"

namespace deltatune::python {
namespace {

PyObject* new_exception(py::module_& m, const char* name, PyObject* base, PyObject* builtin,
                        const char* doc) {
  const std::string qualified = std::string("deltatune.") + name;
  py::tuple bases =
      builtin ? py::make_tuple(py::handle(base), py::handle(builtin)) : py::make_tuple(py::handle(base));
  PyObject* type = PyErr_NewExceptionWithDoc(qualified.c_str(), doc, bases.ptr(), nullptr);
  if (!type) throw py::error_already_set();
  m.add_object(name, py::handle(type));
  return type;
}

}  // namespace

void bind_errors(py::module_& m) {
  static PyObject* error =
      PyErr_NewExceptionWithDoc("deltatune.Error", "Every error deltatune raises.", PyExc_Exception, nullptr);
  m.add_object("Error", py::handle(error));
  static PyObject* config = new_exception(m, "ConfigError", error, PyExc_ValueError,
                                          "An invalid or unsupported configuration (a ValueError).");
  static PyObject* io = new_exception(m, "IoError", error, PyExc_OSError,
                                      "A file that cannot be read or is malformed (an OSError).");
  static PyObject* tensor = new_exception(m, "TensorError", error, PyExc_ValueError,
                                          "Tensor shapes, dtypes or devices that do not fit (a ValueError).");
  static PyObject* diverged =
      new_exception(m, "TrainingDiverged", error, PyExc_RuntimeError,
                    "The loss or gradient norm stopped being finite (a RuntimeError).");
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const train::TrainingDiverged& e) {
      PyErr_SetString(diverged, e.what());
    } catch (const ConfigError& e) {
      PyErr_SetString(config, e.what());
    } catch (const IoError& e) {
      PyErr_SetString(io, e.what());
    } catch (const ShapeError& e) {
      PyErr_SetString(tensor, e.what());
    } catch (const DtypeError& e) {
      PyErr_SetString(tensor, e.what());
    } catch (const DeviceError& e) {
      PyErr_SetString(tensor, e.what());
    } catch (const Error& e) {
      PyErr_SetString(error, e.what());
    } catch (const nlohmann::json::exception& e) {
      PyErr_SetString(config, e.what());
    }
  });
}

}  // namespace deltatune::python
