// The CUDA backend, first piece: device discovery, an elementwise kernel and a cuBLAS GEMM.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <stdexcept>

#include "cublas_library.h"
#include "deltatune/cuda.h"
#include "deltatune/error.h"

namespace deltatune::cuda {
namespace {
void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}
void check(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string(what) + ": cuBLAS error " + std::to_string(int(status)));
}

__global__ void add_kernel(const float* a, const float* b, float* out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = a[i] + b[i];
}

// Device memory that frees itself.
struct DeviceBuffer {
  float* ptr = nullptr;
  explicit DeviceBuffer(size_t n) { check(cudaMalloc(&ptr, n * sizeof(float) + 1), "cudaMalloc"); }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};
}  // namespace

bool compiled() { return true; }

bool available() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

std::string device_name() {
  if (!available()) return "";
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  return prop.name;
}

void* allocate(size_t bytes) {
  void* ptr = nullptr;
  const cudaError_t status = cudaMalloc(&ptr, bytes ? bytes : 1);
  if (status != cudaSuccess)
    throw DeviceError("CUDA storage: cudaMalloc of " + std::to_string(bytes) +
                      " bytes failed: " + cudaGetErrorString(status));
  return ptr;
}

void deallocate(void* ptr) {
  if (ptr) cudaFree(ptr);
}

std::vector<float> vector_add(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) throw std::invalid_argument("vector_add: sizes differ");
  const size_t n = a.size();
  DeviceBuffer da(n), db(n), dout(n);
  check(cudaMemcpy(da.ptr, a.data(), n * sizeof(float), cudaMemcpyHostToDevice), "copy a");
  check(cudaMemcpy(db.ptr, b.data(), n * sizeof(float), cudaMemcpyHostToDevice), "copy b");
  int threads = 256, blocks = int((n + threads - 1) / threads);
  if (n) add_kernel<<<blocks, threads>>>(da.ptr, db.ptr, dout.ptr, int(n));
  check(cudaGetLastError(), "add_kernel");
  std::vector<float> out(n);
  check(cudaMemcpy(out.data(), dout.ptr, n * sizeof(float), cudaMemcpyDeviceToHost), "copy out");
  return out;
}

std::vector<float> gemm(const std::vector<float>& a, const std::vector<float>& b, int m, int n, int k) {
  DeviceBuffer da(a.size()), db(b.size()), dc(size_t(m) * n);
  check(cudaMemcpy(da.ptr, a.data(), a.size() * sizeof(float), cudaMemcpyHostToDevice), "copy A");
  check(cudaMemcpy(db.ptr, b.data(), b.size() * sizeof(float), cudaMemcpyHostToDevice), "copy B");
  const CublasLibrary& blas = cublas();
  cublasHandle_t handle;
  check(blas.create(&handle), "cublasCreate");
  const float one = 1.0f, zero = 0.0f;
  // Row-major C = A B is column-major C^T = B^T A^T.
  cublasStatus_t status =
      blas.sgemm(handle, CUBLAS_OP_N, CUBLAS_OP_N, n, m, k, &one, db.ptr, n, da.ptr, k, &zero, dc.ptr, n);
  blas.destroy(handle);
  check(status, "cublasSgemm");
  std::vector<float> out(size_t(m) * n);
  check(cudaMemcpy(out.data(), dc.ptr, out.size() * sizeof(float), cudaMemcpyDeviceToHost), "copy C");
  return out;
}

}  // namespace deltatune::cuda
