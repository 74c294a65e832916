#pragma once
// One error hierarchy for everything that crosses the API. Messages name the op, file, key or line.
#include <stdexcept>
#include <string>

namespace deltatune {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
// Tensor shapes, dtypes or devices that do not fit an op: the message names the op and the shapes.
class ShapeError : public Error {
  using Error::Error;
};
class DtypeError : public Error {
  using Error::Error;
};
class DeviceError : public Error {
  using Error::Error;
};
// Files that cannot be read or are malformed (safetensors, JSON, datasets, tokenizers).
class IoError : public Error {
  using Error::Error;
};
// Configurations that are invalid or not supported (model configs, delta configs, flags).
class ConfigError : public Error {
  using Error::Error;
};

}  // namespace deltatune
