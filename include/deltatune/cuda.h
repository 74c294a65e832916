#pragma once
// The CUDA backend's entry points. Built only with -DDELTATUNE_CUDA=ON; otherwise cuda_available()
// is false and the rest throws. The backend grows op by op behind ops.h's dispatch.
#include <cstddef>
#include <string>
#include <vector>

namespace deltatune::cuda {

bool compiled();            // built with the CUDA backend
bool available();           // compiled and a GPU is present
std::string device_name();  // "" without a GPU
// Device memory for Storage::allocate(bytes, Device::CUDA): cudaMalloc / cudaFree. allocate throws
// Error when there is no GPU or the memory runs out, and DeviceError in a build without CUDA.
void* allocate(size_t bytes);
void deallocate(void* ptr);
// out = a + b on the GPU (host vectors in and out): the wiring check of the backend.
std::vector<float> vector_add(const std::vector<float>& a, const std::vector<float>& b);
// C[m, n] = A[m, k] B[k, n] through cuBLAS (row-major host matrices).
std::vector<float> gemm(const std::vector<float>& a, const std::vector<float>& b, int m, int n, int k);

}  // namespace deltatune::cuda
