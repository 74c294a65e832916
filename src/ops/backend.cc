// The one dispatch: which Backend runs an op, chosen once per op call by its tensors' device.
#include "ops/backend.h"

#include <algorithm>
#include <string>

#include "deltatune/error.h"

namespace deltatune::ops {
namespace {
// Per thread, so a test can run one op on the reference kernels while other threads train.
thread_local BackendKind t_cpu_backend = BackendKind::Cpu;

const Backend& for_device(const char* op, Device device) {
  if (device == Device::CPU)
    return t_cpu_backend == BackendKind::Reference ? reference_kernels() : cpu_kernels();
  throw DeviceError(std::string(op) + ": no " + device_name(device) + " kernels in this build yet");
}

Device common_device(const char* op, Device first, const Tensor& t) {
  if (t.device() != first)
    throw DeviceError(std::string(op) + ": tensors on different devices (" + device_name(first) + " and " +
                      device_name(t.device()) + ")");
  return first;
}
}  // namespace

int64_t AttentionProblem::key_end(int64_t t1) const {
  return causal ? std::clamp<int64_t>(t1 + s - t, 0, s) : s;
}
int64_t AttentionProblem::row_limit(int64_t ti) const {
  return causal ? std::clamp<int64_t>(ti + 1 + s - t, 0, s) : s;
}

const char* backend_name(BackendKind kind) {
  switch (kind) {
    case BackendKind::Cpu:
      return "cpu";
    case BackendKind::Reference:
      return "reference";
    case BackendKind::Cuda:
      return "cuda";
  }
  return "?";
}

BackendKind cpu_backend() { return t_cpu_backend; }

ScopedBackend::ScopedBackend(BackendKind kind) : previous_(t_cpu_backend) {
  if (kind == BackendKind::Cuda)
    throw DeviceError("ScopedBackend: CUDA kernels run CUDA tensors; move the tensors to the GPU instead");
  t_cpu_backend = kind;
}
ScopedBackend::~ScopedBackend() { t_cpu_backend = previous_; }

const Backend& backend_for(const char* op, std::initializer_list<const Tensor*> tensors) {
  const Tensor* first = nullptr;
  for (const Tensor* t : tensors) {
    if (!t->defined()) continue;
    if (!first)
      first = t;
    else
      common_device(op, first->device(), *t);
  }
  return for_device(op, first ? first->device() : Device::CPU);
}

const Backend& backend_for(const char* op, const std::vector<Tensor>& tensors) {
  const Tensor* first = nullptr;
  for (const Tensor& t : tensors) {
    if (!t.defined()) continue;
    if (!first)
      first = &t;
    else
      common_device(op, first->device(), t);
  }
  return for_device(op, first ? first->device() : Device::CPU);
}

}  // namespace deltatune::ops
