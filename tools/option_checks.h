#pragma once
// Number checks for options, with readable messages. CLI11's own (PositiveNumber, NonNegativeNumber,
// Range on doubles) let nan through and print their bounds with std::to_string, DBL_MAX as a
// 309-digit number.
#include <CLI/CLI.hpp>
#include <cmath>
#include <functional>
#include <string>

namespace deltatune::cli {

inline CLI::Validator finite_number(const std::string& expected, const std::string& help_name,
                                    std::function<bool(double)> accept) {
  return CLI::Validator(
      [expected, accept](std::string& input) -> std::string {
        double value = 0;
        if (!CLI::detail::lexical_cast(input, value) || !std::isfinite(value) || !accept(value))
          return "expected " + expected + ", got '" + input + "'";
        return {};
      },
      help_name);
}

inline const CLI::Validator kPositive =
    finite_number("a positive number", "> 0", [](double v) { return v > 0; });
inline const CLI::Validator kNonNegative =
    finite_number("a number >= 0", ">= 0", [](double v) { return v >= 0; });
inline const CLI::Validator kFraction =
    finite_number("a number from 0 to 1", "in [0, 1]", [](double v) { return v >= 0 && v <= 1; });
inline const CLI::Validator kFinite = finite_number("a finite number", "", [](double) { return true; });

}  // namespace deltatune::cli
