#pragma once
// Names as gtest takes them for tests and parameters: letters, digits and underscores only (a format
// named "nf4-dq" becomes "nf4_dq").
#include <cctype>
#include <string>

namespace test_support {

inline std::string identifier(std::string name) {
  for (char& c : name)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  return name;
}

}  // namespace test_support
