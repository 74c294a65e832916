# The libraries libdeltatune itself links (not its public headers). Included by the build and, for a
# static libdeltatune, by the installed package config, where the consumer's link line needs them too.
# Guarded so that including it twice is harmless.
include_guard(GLOBAL)
find_package(OpenMP REQUIRED)
find_package(yaml-cpp REQUIRED)  # YAML settings files (--config run.yaml)
# Optional: data-parallel training (src/distributed), through MPI's C API (no C++ bindings).
set(MPI_CXX_SKIP_MPICXX ON)
find_package(MPI COMPONENTS CXX QUIET)

# OpenBLAS: Debian ships one build per threading model. We use the OpenMP build so that BLAS and our
# own kernels share one OpenMP thread pool: with the pthread build, idle OpenMP workers spin while
# OpenBLAS's own threads wait for a core, and a 2-core machine runs 30x slower. The rpath pins that
# build at run time whatever the system's libopenblas.so.0 alternative points to, unless the process
# already holds a libopenblas.so.0 (numpy's, when the Python module is imported after numpy): the
# loader then gives us that one, so the kernels must work with either (src/ops/cpu/attention.cc keeps BLAS single-threaded inside
# its parallel region for that reason).
find_path(OPENBLAS_OPENMP_INCLUDE_DIR cblas.h
          PATHS /usr/include/x86_64-linux-gnu/openblas-openmp NO_DEFAULT_PATH REQUIRED)
find_library(OPENBLAS_OPENMP_LIBRARY NAMES openblas
             PATHS /usr/lib/x86_64-linux-gnu/openblas-openmp NO_DEFAULT_PATH REQUIRED)
add_library(deltatune::blas INTERFACE IMPORTED)
target_include_directories(deltatune::blas INTERFACE ${OPENBLAS_OPENMP_INCLUDE_DIR})
target_link_libraries(deltatune::blas INTERFACE ${OPENBLAS_OPENMP_LIBRARY})

find_path(SENTENCEPIECE_INCLUDE_DIR sentencepiece_processor.h REQUIRED)
find_library(SENTENCEPIECE_LIBRARY sentencepiece REQUIRED)
add_library(deltatune::sentencepiece INTERFACE IMPORTED)
target_include_directories(deltatune::sentencepiece INTERFACE ${SENTENCEPIECE_INCLUDE_DIR})
target_link_libraries(deltatune::sentencepiece INTERFACE ${SENTENCEPIECE_LIBRARY})

find_path(UTF8PROC_INCLUDE_DIR utf8proc.h REQUIRED)
find_library(UTF8PROC_LIBRARY utf8proc REQUIRED)
add_library(deltatune::utf8proc INTERFACE IMPORTED)
target_include_directories(deltatune::utf8proc INTERFACE ${UTF8PROC_INCLUDE_DIR})
target_link_libraries(deltatune::utf8proc INTERFACE ${UTF8PROC_LIBRARY})

# cpp-httplib (the server, deltatune/serve_http.h): Debian's shared build, whose header must be read with
# the flags it was built with (OpenSSL, zlib, Brotli), which its pkg-config file gives.
find_package(PkgConfig REQUIRED)
pkg_check_modules(CPP_HTTPLIB REQUIRED IMPORTED_TARGET cpp-httplib)
find_package(Threads REQUIRED)
