#pragma once
// Each subcommand lives in its own file and registers itself here at start-up:
//   static deltatune::cli::Register reg("tokenize", "Tokenize text with a model's tokenizer", setup);
// where setup(CLI::App&) adds the options and a callback. main.cc builds the app from the registry.
#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

namespace deltatune::cli {

using SetupFn = std::function<void(CLI::App&)>;

struct Command {
  std::string name;
  std::string description;
  SetupFn setup;
};

std::vector<Command>& registry();

struct Register {
  Register(std::string name, std::string description, SetupFn setup) {
    registry().push_back({std::move(name), std::move(description), std::move(setup)});
  }
};

// Errors in a command: printed as one line "deltatune: <message>" and the exit code (2 = bad input).
struct ExitError {
  std::string message;
  int code = 2;
};

}  // namespace deltatune::cli
