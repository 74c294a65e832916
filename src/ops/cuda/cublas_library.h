#pragma once
// cuBLAS opened when the first product asks for it (dlopen), not linked. libcublas brings libcublasLt,
// whose loading alone makes about 210 MB resident (measured: `LD_PRELOAD=libcublasLt.so.13 /bin/true`
// peaks at 211 MB against 1.7 MB): every deltatune process paid that before, CPU-only runs included,
// and it was most of a small model's peak memory. Now only a process that multiplies on the GPU does.
#include <cublas_v2.h>
#include <dlfcn.h>

#include <stdexcept>
#include <string>

namespace deltatune::cuda {

// The cuBLAS functions the backend calls (the _v2 API, which cublas_v2.h's names stand for).
struct CublasLibrary {
  decltype(&cublasCreate_v2) create = nullptr;
  decltype(&cublasDestroy_v2) destroy = nullptr;
  decltype(&cublasSgemm_v2) sgemm = nullptr;
};

namespace detail {
template <typename Fn>
void resolve(void* handle, Fn& fn, const char* symbol, const std::string& library) {
  fn = reinterpret_cast<Fn>(dlsym(handle, symbol));
  if (!fn) throw std::runtime_error("cuBLAS (" + library + ") has no " + symbol);
}
}  // namespace detail

// The process's cuBLAS, opened once: the soname of the major version built against, through the
// loader's search path, then from the toolkit's library folder found at configure time. A
// std::runtime_error naming the library when neither opens (the next call tries again).
inline const CublasLibrary& cublas() {
  static const CublasLibrary library = [] {
    const std::string soname = "libcublas.so." + std::to_string(CUBLAS_VER_MAJOR);
    void* handle = dlopen(soname.c_str(), RTLD_NOW | RTLD_LOCAL);
#ifdef DELTATUNE_CUDA_LIBRARY_DIR
    if (!handle)
      handle =
          dlopen((std::string(DELTATUNE_CUDA_LIBRARY_DIR) + "/" + soname).c_str(), RTLD_NOW | RTLD_LOCAL);
#endif
    if (!handle) throw std::runtime_error("cannot load cuBLAS (" + soname + "): " + dlerror());
    CublasLibrary l;
    detail::resolve(handle, l.create, "cublasCreate_v2", soname);
    detail::resolve(handle, l.destroy, "cublasDestroy_v2", soname);
    detail::resolve(handle, l.sgemm, "cublasSgemm_v2", soname);
    return l;  // the handle stays open for the life of the process
  }();
  return library;
}

}  // namespace deltatune::cuda
