// A fresh, empty scratch folder for a test. ctest runs each test as its own process, several at
// once, so the folder name carries the process id: parallel tests never share or delete each
// other's files.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>

namespace test_support {

inline std::filesystem::path temp_dir(const std::string& name) {
  namespace fs = std::filesystem;
  fs::path d = fs::temp_directory_path() / ("deltatune_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

}  // namespace test_support
