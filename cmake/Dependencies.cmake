# The Debian packages deltatune builds on (scripts/setup installs them).
find_package(nlohmann_json 3.10 REQUIRED)  # public: the headers include nlohmann/json.hpp
find_package(CLI11 CONFIG QUIET)
if(NOT TARGET CLI11::CLI11)
  find_path(CLI11_INCLUDE_DIR CLI/CLI.hpp REQUIRED)
  add_library(CLI11::CLI11 INTERFACE IMPORTED)
  target_include_directories(CLI11::CLI11 INTERFACE ${CLI11_INCLUDE_DIR})
endif()
include(deltatunePrivateDeps)  # OpenMP, OpenBLAS (OpenMP build), SentencePiece, utf8proc, yaml-cpp

get_filename_component(OPENBLAS_LIBRARY_DIR ${OPENBLAS_OPENMP_LIBRARY} DIRECTORY)
list(APPEND CMAKE_BUILD_RPATH ${OPENBLAS_LIBRARY_DIR})
list(APPEND CMAKE_INSTALL_RPATH ${OPENBLAS_LIBRARY_DIR})
