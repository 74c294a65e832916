#pragma once
// Which kernels run an op. Every op dispatches once per call on its tensors' device: CPU tensors run
// on the optimised CPU kernels (src/ops/cpu: OpenBLAS, OpenMP, AVX-512), CUDA tensors on the CUDA
// kernels (src/ops/cuda). A scope on one thread may run CPU tensors on the reference kernels instead
// (src/ops/reference: plain loops, double sums: the oracle the other backends are tested against):
//   { ops::ScopedBackend use(ops::BackendKind::Reference); Tensor y = ops::softmax(x); }
// An op given tensors on different devices throws DeviceError naming the op and both devices.
namespace deltatune::ops {

enum class BackendKind { Cpu, Reference, Cuda };
const char* backend_name(BackendKind kind);  // "cpu", "reference", "cuda"

// The kernels CPU tensors run on in this thread (Cpu unless a ScopedBackend says otherwise).
BackendKind cpu_backend();

// Runs CPU tensors on `kind` (Cpu or Reference) in this thread until the scope ends.
class ScopedBackend {
 public:
  explicit ScopedBackend(BackendKind kind);
  ~ScopedBackend();
  ScopedBackend(const ScopedBackend&) = delete;
  ScopedBackend& operator=(const ScopedBackend&) = delete;

 private:
  BackendKind previous_;
};

}  // namespace deltatune::ops
