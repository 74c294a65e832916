#pragma once
// Each subcommand lives in its own file and registers itself here at start-up:
//   static deltatune::cli::Register reg("tokenize", "Tokenize text with a model's tokenizer", setup);
// where setup(CLI::App&) adds the options and a callback. main.cc builds the app from the registry.
#include <CLI/CLI.hpp>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "deltatune/quantize.h"
#include "deltatune/threads.h"

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

// What every help page ends with (a contract scripts rely on).
inline constexpr const char* kExitCodes =
    "Exit codes: 0 done; 2 bad input or usage (one line naming the file, key, line or option); 1 an "
    "internal error (a bug: please report it); 130 / 143 training stopped by Ctrl-C / SIGTERM (checkpoint "
    "kept, --resume continues).";

// Errors in a command: printed as one line "deltatune: <message>" and the exit code (2 = bad input).
struct ExitError {
  std::string message;
  int code = 2;
};

// --threads N for every command that computes: sets our kernels' and OpenBLAS's thread count as the
// command line is parsed, before the command runs. `store` (optional) receives N too.
inline CLI::Option* add_threads_option(
    CLI::App& app, int* store = nullptr,
    const std::string& help = "CPU threads (default: DELTATUNE_THREADS or all cores)") {
  return app
      .add_option_function<int>(
          "--threads",
          [store](const int& n) {
            set_num_threads(n);
            if (store) *store = n;
          },
          help)
      ->check(CLI::Range(1, 1024));
}

// --quantize FORMAT for the commands that run a base model (train, eval, predict, generate, serve): a
// quantised frozen base (deltatune::use_quantized). An unknown format is a usage error at parse time.
inline CLI::Option* add_quantize_option(CLI::App& app, std::optional<QuantFormat>& store) {
  return app.add_option_function<std::string>(
      "--quantize",
      [&store](const std::string& name) {
        store = parse_quant_format(name);
        if (!store)
          throw CLI::ValidationError("--quantize",
                                     "'" + name + "' is no format (" + quant_format_choices() + ")");
      },
      std::string("Store the frozen base's linear weights quantised (") + quant_format_choices() +
          "; nf4 is QLoRA's NormalFloat4): deltas, heads, norms and the optimizer stay float32");
}

}  // namespace deltatune::cli
