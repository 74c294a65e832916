// Without the CUDA backend: report it absent. (src/ops/cuda/*.cu replace this when built.)
#ifndef DELTATUNE_HAS_CUDA
#include "deltatune/cuda.h"
#include "deltatune/error.h"

namespace deltatune::cuda {
bool compiled() { return false; }
bool available() { return false; }
std::string device_name() { return ""; }
void* allocate(size_t) {
  throw DeviceError("CUDA storage: deltatune was built without CUDA (configure with -DDELTATUNE_CUDA=ON)");
}
void deallocate(void*) {}
std::vector<float> vector_add(const std::vector<float>&, const std::vector<float>&) {
  throw Error("deltatune was built without CUDA (configure with -DDELTATUNE_CUDA=ON)");
}
std::vector<float> gemm(const std::vector<float>&, const std::vector<float>&, int, int, int) {
  throw Error("deltatune was built without CUDA (configure with -DDELTATUNE_CUDA=ON)");
}
}  // namespace deltatune::cuda
#endif
