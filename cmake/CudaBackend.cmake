# The CUDA backend: compiled only with -DDELTATUNE_CUDA=ON. Its tests skip cleanly without a GPU.
include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  if(NOT EXISTS /usr/local/cuda/bin/nvcc)
    message(FATAL_ERROR "DELTATUNE_CUDA=ON but no CUDA compiler was found")
  endif()
  set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
endif()
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)
if(NOT CMAKE_CUDA_ARCHITECTURES OR CMAKE_CUDA_ARCHITECTURES STREQUAL "52")
  set(CMAKE_CUDA_ARCHITECTURES 80 90)
endif()
file(GLOB DELTATUNE_CUDA_SOURCES CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/src/ops/cuda/*.cu)
# An object library: its kernels become part of libdeltatune itself (shared or static), so that
# deltatune/cuda.h's functions are the library's own and nothing more is installed.
add_library(deltatune_cuda OBJECT ${DELTATUNE_CUDA_SOURCES})
set_target_properties(deltatune_cuda PROPERTIES CUDA_STANDARD 17 CUDA_STANDARD_REQUIRED ON
                                                POSITION_INDEPENDENT_CODE ON)
target_compile_features(deltatune_cuda PRIVATE cuda_std_17)
target_include_directories(deltatune_cuda PRIVATE ${PROJECT_SOURCE_DIR}/include)
target_compile_definitions(deltatune PRIVATE DELTATUNE_HAS_CUDA=1)
target_sources(deltatune PRIVATE $<TARGET_OBJECTS:deltatune_cuda>)
target_include_directories(deltatune_cuda PRIVATE ${CUDAToolkit_INCLUDE_DIRS})
# cuBLAS is opened on first use (src/ops/cuda/cublas_library.h: loading it costs ~210 MB resident), so
# only the runtime is linked; the toolkit's library folder is where the loader looks second.
target_compile_definitions(deltatune_cuda PRIVATE DELTATUNE_CUDA_LIBRARY_DIR="${CUDAToolkit_LIBRARY_DIR}")
target_link_libraries(deltatune PRIVATE CUDA::cudart ${CMAKE_DL_LIBS})
